"""ONNX Runtime backend: .onnx files on the CPU execution provider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgepack import deps
from edgepack.errors import ModelError
from edgepack.runtimes import cast_feed, check_feeds, make_spec, merge_specs

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact

PROVIDER = "CPUExecutionProvider"

# ONNX Runtime type strings -> numpy dtype names.
ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeSession:
    """An ONNX Runtime InferenceSession on the CPU provider."""

    runtime = "onnxruntime"
    precision = "f32"

    def __init__(self, session: Any, version: str, declared: Artifact) -> None:
        self._session = session
        self._names = [i.name for i in session.get_inputs()]
        self.version = version
        self.inputs = merge_specs([_spec(i) for i in session.get_inputs()], declared.inputs)
        self.outputs = merge_specs([_spec(o) for o in session.get_outputs()], declared.outputs)

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = [cast_feed(s, a) for s, a in zip(self.inputs, check_feeds(self.inputs, feeds), strict=True)]
        try:
            return list(self._session.run(None, dict(zip(self._names, arrays, strict=True))))
        except Exception as exc:  # onnxruntime's pybind errors share no public base class
            raise ModelError(f"ONNX Runtime failed to run the model: {exc}") from exc


def open_session(
    artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False
) -> OnnxRuntimeSession:
    """Open an .onnx file with ``threads`` intra-op threads (one inter-op thread).

    ``precision`` and ``raw_outputs`` are ignored: the CPU provider runs the
    graph as written (float ops in f32; QDQ models keep float I/O).
    """
    del precision, raw_outputs
    ort = deps.require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; warnings go to stderr otherwise
    try:
        session = ort.InferenceSession(str(artifact.path), options, providers=[PROVIDER])
    except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile: pybind types only
        raise ModelError(
            f"{artifact.path}: ONNX Runtime cannot load it ({exc}).",
            hint="Check that the file is a complete, valid ONNX model (onnx.checker.check_model).",
        ) from exc
    return OnnxRuntimeSession(session, ort.__version__, artifact)


def _spec(node: Any) -> Any:
    dtype = ORT_DTYPES.get(node.type)
    if dtype is None:
        raise ModelError(f"tensor '{node.name}' has type {node.type}, which edgepack cannot feed or compare.")
    return make_spec(node.name, node.shape, dtype)
