"""Run one ONNX node test case in one runtime: the worker side of :mod:`edgepack.compat.measure`.

A worker is a child process (``python -m edgepack.compat.runners RUNTIME``)
that reads case folders from stdin, one a line, and answers each with one JSON
line ``{"case": ..., "status": "ran" | "wrong" | "failed", "error": ...}`` on
the stdout it started with. Everything the runtimes print goes to stderr, which
the parent discards. ``wrong`` means the runtime ran the model but its outputs
differ from the test's expected ones.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_NHWC_FROM_NCHW = (0, 2, 3, 1)


# --------------------------------------------------------------------------- comparing outputs


def _agrees(expected: Any, got: Any, rtol: float, atol: float) -> bool:
    """Whether one output equals the test's expected one (sequences element-wise, strings exactly)."""
    if expected is None:
        return got is None or (isinstance(got, list | tuple) and not got)
    if isinstance(expected, list | tuple):
        return (
            isinstance(got, list | tuple)
            and len(got) == len(expected)
            and all(_agrees(e, g, rtol, atol) for e, g in zip(expected, got, strict=True))
        )
    want, have = np.asarray(expected), np.asarray(got)
    if want.shape != have.shape:
        return False
    if want.dtype.kind in "OUSb" or have.dtype.kind in "OUS":
        return bool(np.array_equal(want, have))
    return bool(np.allclose(have.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True))


def _status(expected: Sequence[Any], got: Sequence[Any], rtol: float, atol: float) -> str:
    if len(got) != len(expected):
        return "wrong"
    return "ran" if all(_agrees(e, g, rtol, atol) for e, g in zip(expected, got, strict=True)) else "wrong"


# --------------------------------------------------------------------------- runtimes


def _run_onnxruntime(model: Path, case: dict[str, Any], _: Path) -> str:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = dict(zip(case["input_names"], case["inputs"], strict=True))
    wanted = {i.name for i in session.get_inputs()}
    got = session.run(None, {k: v for k, v in feed.items() if k in wanted})
    return _status(case["outputs"], got, case["rtol"], case["atol"])


def _run_openvino(model: Path, case: dict[str, Any], _: Path) -> str:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed = dict(zip(case["input_names"], case["inputs"], strict=True))
    inputs = {}
    for index, port in enumerate(compiled.inputs):
        name = next((n for n in port.get_names() if n in feed), None)
        if name is None and len(compiled.inputs) != len(feed):
            raise RuntimeError(f"compiled model wants an input the test does not give ({port.get_any_name()})")
        inputs[port] = feed[name] if name is not None else case["inputs"][index]  # renamed: matched by position
    result = compiled.create_infer_request().infer(inputs)
    got = [np.asarray(result[port]) for port in compiled.outputs]
    return _status(case["outputs"], got, case["rtol"], case["atol"])


def _onnx2tf_convert(model: Path, out: Path) -> Path:
    """Convert with onnx2tf the way ``edgepack.convert.onnx_tflite`` does (inputs kept in the ONNX layout)."""
    import shutil

    import onnx
    import onnx2tf.onnx2tf as onnx2tf_main

    onnx2tf_main.download_test_image_data = lambda: np.random.default_rng(0).random((20, 128, 128, 3), np.float32)
    graph = onnx.load(str(model)).graph
    _has_converter(graph)
    keep = [i.name for i in graph.input if 3 <= len(i.type.tensor_type.shape.dim) <= 5]
    try:
        onnx2tf_main.convert(
            input_onnx_file_path=str(model),
            output_folder_path=str(out),
            keep_ncw_or_nchw_or_ncdhw_input_names=keep or None,
            copy_onnx_input_output_names_to_tflite=True,
            replace_to_pseudo_operators=["erf"],  # as the ladder does: else Erf is a Flex op LiteRT cannot run
            not_use_onnxsim=shutil.which("onnxsim") is None,
            non_verbose=True,
        )
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) on a failed conversion
        raise RuntimeError(f"onnx2tf exited with {exc.code}") from exc
    produced = out / f"{model.stem}_float32.tflite"
    if not produced.exists():
        raise RuntimeError("onnx2tf wrote no .tflite")
    return produced


def _has_converter(graph: Any) -> None:
    """Fail a one-node model at once when onnx2tf has no ``onnx2tf.ops.<OpType>`` module for it.

    onnx2tf would run onnxsim and trace the graph (~15 s) before failing the same
    way; a model of more nodes is converted, as onnxsim may fold a node away.
    """
    from edgepack.compat.tablefile import onnx2tf_ops

    if len(graph.node) == 1 and graph.node[0].op_type not in onnx2tf_ops():
        raise RuntimeError(f"No module named 'onnx2tf.ops.{graph.node[0].op_type}' (onnx2tf has no converter)")


def _fit(value: np.ndarray, shape: Sequence[int]) -> np.ndarray | None:
    """``value`` as a tensor of ``shape``: as is, or moved from channels-first to channels-last."""
    if tuple(value.shape) == tuple(shape):
        return value
    if value.ndim >= 3 and tuple(np.moveaxis(value, 1, -1).shape) == tuple(shape):
        return np.moveaxis(value, 1, -1)
    return None


def _freeze_inputs(model: Path, case: dict[str, Any]) -> dict[str, Any]:
    """Turn every graph input but the first into an initializer holding the test's value.

    Node test models take weights (Conv's W, Gather's indices) as inputs; a real
    model holds them as initializers, and onnx2tf converts many ops only then.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model))
    names = case["input_names"]
    frozen = {n: v for n, v in zip(names[1:], case["inputs"][1:], strict=True) if isinstance(v, np.ndarray)}
    if not frozen:
        return case
    kept = [i for i in proto.graph.input if i.name not in frozen]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    proto.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in frozen.items())
    onnx.save(proto, str(model))
    pairs = [(n, v) for n, v in zip(names, case["inputs"], strict=True) if n not in frozen]
    return {**case, "input_names": [n for n, _ in pairs], "inputs": [v for _, v in pairs]}


def _run_onnx2tf(model: Path, case: dict[str, Any], workdir: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    case = _freeze_inputs(model, case)
    interpreter = Interpreter(model_path=str(_onnx2tf_convert(model, workdir / "out")), num_threads=1)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    given = [np.asarray(v) for v in case["inputs"] if v is not None and not isinstance(v, list)]
    fitted = [_fit(v, d["shape"]) for v, d in zip(given, details, strict=True)] if len(given) == len(details) else []
    if len(fitted) != len(details) or any(f is None for f in fitted):
        # not the test's tensors: the run proves the kernels exist, the outputs are not compared
        fitted, case = [np.zeros(d["shape"], d["dtype"]) for d in details], {**case, "outputs": None}
    for detail, value in zip(details, fitted, strict=True):
        interpreter.set_tensor(detail["index"], np.asarray(value).astype(detail["dtype"]))
    interpreter.invoke()
    if case["outputs"] is None:
        return "ran"
    got = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    if len(got) != len(case["outputs"]):
        return "ran"
    fitted = [_fit(np.asarray(e), g.shape) for e, g in zip(case["outputs"], got, strict=True)]
    if any(f is None for f in fitted):
        return "ran"  # onnx2tf changed an output's layout in a way not undone here: not compared
    return _status(fitted, got, max(case["rtol"], 1e-3), max(case["atol"], 1e-4))


RUNNERS: dict[str, Callable[[Path, dict[str, Any], Path], str]] = {
    "onnxruntime": _run_onnxruntime,
    "openvino": _run_openvino,
    "onnx2tf": _run_onnx2tf,
}


def _attempt(runtime: str, model: Path, case: dict[str, Any], workdir: Path) -> tuple[str, str]:
    try:
        return RUNNERS[runtime](model, case, workdir), ""
    except Exception as exc:  # noqa: BLE001 - any failure means "did not run"; its telling line is kept
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        telling = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
        return "failed", ((telling or lines or [type(exc).__name__])[0])[:300]


def run_case(runtime: str, folder: Path) -> dict[str, Any]:
    """Run the case in ``folder`` (``model.onnx`` + ``data.pkl``) in ``runtime``; never raises.

    A case that fails is run again with its inputs after the first turned into
    initializers (as weights, axes and shapes are in real models), once.
    """
    with (folder / "data.pkl").open("rb") as fh:
        case = pickle.load(fh)  # noqa: S301 - written by edgepack.compat.measure in this cache
    with tempfile.TemporaryDirectory(prefix="ep-compat-") as tmp:
        model = Path(tmp) / "model.onnx"
        model.write_bytes((folder / "model.onnx").read_bytes())  # onnx2tf rewrites its input in place
        status, error = _attempt(runtime, model, case, Path(tmp))
        if status == "failed" and runtime != "onnx2tf":  # onnx2tf freezes them on its first try
            frozen = _freeze_inputs(model, case)
            if frozen is not case:
                status, again = _attempt(runtime, model, frozen, Path(tmp))
                error = "" if status != "failed" else f"{error} (with initializers: {again})"[:400]
    return {"case": folder.name, "status": status, "error": error}


def _worker(runtime: str) -> None:
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the runtimes print must not mix with the answers
    sys.stdout = sys.stderr
    for line in sys.stdin:
        answer.write(json.dumps(run_case(runtime, Path(line.strip()))) + "\n")


if __name__ == "__main__":
    _worker(sys.argv[1])
