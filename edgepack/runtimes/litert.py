"""LiteRT backend: .tflite files in the ai_edge_litert Interpreter.

Quantized (int8/uint8) inputs and outputs are handled here: float feeds are
quantized with the input tensor's scale and zero point, integer feeds of the
tensor's own dtype pass through unchanged, and outputs are dequantized unless
the session was opened with ``raw_outputs=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgepack import deps
from edgepack.artifact import TensorSpec
from edgepack.errors import ModelError
from edgepack.runtimes import check_feeds, make_spec, merge_specs, require_static

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact


class LiteRTSession:
    """A LiteRT interpreter with its tensors allocated at static shapes."""

    runtime = "litert"
    precision = "f32"

    def __init__(self, interpreter: Any, version: str, declared: Artifact, raw_outputs: bool) -> None:
        self._interp = interpreter
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.version = version
        self.raw_outputs = raw_outputs
        # Quantized inputs are presented as float: the session quantizes float feeds itself.
        self.inputs = merge_specs([_spec(d, dequantized=True) for d in self._in], declared.inputs)
        self.outputs = merge_specs([_spec(d, dequantized=not raw_outputs) for d in self._out], declared.outputs)

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = check_feeds(self.inputs, feeds)
        try:
            for detail, array in zip(self._in, arrays, strict=True):
                self._interp.set_tensor(detail["index"], _to_tensor(detail, array))
            self._interp.invoke()
            results = [self._interp.get_tensor(d["index"]) for d in self._out]
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"LiteRT failed to run the model: {exc}") from exc
        if self.raw_outputs:
            return results  # get_tensor already returns copies
        return [_from_tensor(d, r) for d, r in zip(self._out, results, strict=True)]


def open_session(
    artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False
) -> LiteRTSession:
    """Open a .tflite file; resize a dynamic input signature to the artifact's static shapes.

    ``precision`` is ignored: LiteRT's CPU kernels compute float ops in f32.
    """
    del precision
    interpreter_mod = deps.require("ai_edge_litert.interpreter")
    try:
        interp = interpreter_mod.Interpreter(model_path=str(artifact.path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{artifact.path}: LiteRT cannot load it ({exc}).",
            hint="Check that the file is a complete .tflite flatbuffer.",
        ) from exc
    try:
        _resize_dynamic_inputs(interp, artifact)
        interp.allocate_tensors()
        return LiteRTSession(interp, deps.version_of("ai-edge-litert") or "unknown", artifact, raw_outputs)
    except (ValueError, RuntimeError) as exc:  # UnicodeDecodeError (a damaged tensor name) is a ValueError
        raise ModelError(f"{artifact.path}: LiteRT cannot allocate its tensors ({exc}).") from exc


def _resize_dynamic_inputs(interp: Any, artifact: Artifact) -> None:
    details = interp.get_input_details()
    found = [make_spec(d["name"], d["shape_signature"], d["dtype"]) for d in details]
    if all(s.is_static for s in found):
        return
    wanted = list(merge_specs(found, artifact.inputs))
    declared = {spec.name: spec for spec in artifact.inputs}
    for i, spec in enumerate(wanted):  # a scalar input onnx2tf (through Keras) declared as [None]: take the declared
        other = declared.get(spec.name) or (artifact.inputs[i] if len(artifact.inputs) == len(wanted) else None)
        if not spec.is_static and other is not None and other.is_static and len(other.shape) != len(spec.shape):
            wanted[i] = spec.with_shape(other.shape)
    require_static(artifact, wanted)
    for detail, spec in zip(details, wanted, strict=True):
        if tuple(int(d) for d in detail["shape"]) != spec.shape:
            strict = len(detail["shape_signature"]) == len(spec.shape)  # a rank change needs strict=False
            try:
                interp.resize_tensor_input(detail["index"], list(spec.shape), strict=strict)
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"{artifact.path}: cannot resize input '{spec.name}' to {list(spec.shape)}.") from exc


def quant_params(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor quantized integer tensor, else None."""
    import numpy as np

    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not np.issubdtype(detail["dtype"], np.integer) or not scale:
        return None
    return float(scale), int(zero_point)


def _spec(detail: dict[str, Any], *, dequantized: bool) -> TensorSpec:
    dtype = "float32" if dequantized and quant_params(detail) else detail["dtype"]
    return make_spec(detail["name"], detail["shape"], dtype)


def _to_tensor(detail: dict[str, Any], array: np.ndarray) -> np.ndarray:
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    params = quant_params(detail)
    if params is None or array.dtype == dtype:
        return np.require(array, dtype=dtype, requirements="C")
    scale, zero_point = params
    info = np.iinfo(dtype)
    q = np.round(array.astype(np.float64) / scale + zero_point)
    return np.require(np.clip(q, info.min, info.max).astype(dtype), requirements="C")


def _from_tensor(detail: dict[str, Any], array: np.ndarray) -> np.ndarray:
    import numpy as np

    params = quant_params(detail)
    if params is None:
        return array
    scale, zero_point = params
    return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
