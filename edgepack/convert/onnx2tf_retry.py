"""The ladder of onnx2tf attempts, what a failed attempt says, and whether a result agrees with ONNX.

Each rung is a set of onnx2tf's documented options (README, "CLI Parameter"), ordered by the
graph kind (``onnx2tf_prep.graph_kind``): Ultralytics converts YOLO graphs with
``not_use_onnxsim`` after its own onnxslim pass, ``disable_group_convolution`` and
``enable_batchmatmul_unfold``; PINTO converts VAD/recurrent graphs with
``keep_shape_absolutely_input_names`` (``-kat``) on every input and ``enable_rnn_unroll``
(``-eru``); transformer graphs need ``replace_to_pseudo_operators`` (``-rtpo``) for Erf/GeLU
and ``disable_strict_mode`` (``-dsm``). The last rung lets onnx2tf run onnxsim on the
unprepared graph itself. A rung counts only if its .tflite agrees with onnxruntime.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.artifact import TensorSpec
from edgepack.convert.onnx2tf_prep import subgraphs
from edgepack.deps import require

FP32_TOLERANCE = 1e-3  # max |tflite - onnx| relative to max(1, max |onnx|), per output
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_NAME = re.compile(r"onnx_op_name:\s*(\S+)")
_NO_CONVERTER = re.compile(r"No module named '?onnx2tf\.ops\.(\w+)")
# ops TFLite has no builtin for: onnx2tf's pseudo versions avoid Select TF (Flex) ops. Only these: the other
# pseudo ops of -rtpo (Power, Neg, PReLU...) are no better than the builtins and some bring Flex ops back.
# The Python API wants them lower-case (its CLI lowers them; "Erf" is silently ignored).
_PSEUDO_OPS = ["erf", "gelu"]
_MORE_PSEUDO_OPS = [*_PSEUDO_OPS, "asin", "acos", "atan"]


@dataclass(frozen=True)
class Attempt:
    """One onnx2tf run: a label, whether it reads the prepared graph, and onnx2tf options."""

    label: str
    prepared: bool = True
    options: dict[str, Any] = field(default_factory=dict)


def ladder(kind: str, inputs: Sequence[TensorSpec]) -> list[Attempt]:
    """The attempts for a graph of ``kind``, the options most likely to work first."""
    every_input = [spec.name for spec in inputs]
    kat = {"keep_shape_absolutely_input_names": every_input}
    ultralytics = {"disable_group_convolution": True, "enable_batchmatmul_unfold": True}
    pseudo = {"replace_to_pseudo_operators": _PSEUDO_OPS}
    more = {"replace_to_pseudo_operators": _MORE_PSEUDO_OPS, "disable_strict_mode": True}
    first = {
        "recurrent": Attempt("prepared, -kat all inputs", options=kat),
        "transformer": Attempt("prepared, -kat all inputs, -rtpo", options={**kat, **pseudo}),
    }.get(kind, Attempt("prepared"))
    erf = {"replace_to_pseudo_operators": ["erf"]}  # else an Erf is a Flex op LiteRT cannot run; no-op without one
    rungs = [
        first,
        Attempt("prepared, -dgc -ebu (Ultralytics)", options={**ultralytics, **erf}),
        Attempt("prepared, -kat all inputs, -eru", options={**kat, "enable_rnn_unroll": True, **erf}),
        Attempt("prepared, -kat all inputs, -rtpo -dsm -dgc", options={**kat, **more, **ultralytics}),
        Attempt("unprepared, onnx2tf runs onnxsim", prepared=False, options=erf),
    ]
    unique: list[Attempt] = []
    for rung in rungs:
        if all(rung.options != seen.options or rung.prepared != seen.prepared for seen in unique):
            unique.append(rung)
    return unique


@dataclass(frozen=True)
class Failure:
    """Why an onnx2tf run failed: the ONNX node it names (if any) and the last error line."""

    node: str | None
    reason: str
    op_type: str | None = None
    unsupported: bool = False  # onnx2tf has no converter for the op: no option changes that


def parse_failure(text: str) -> Failure:
    """Read onnx2tf's output: its ``ERROR: onnx_op_name: NAME`` line and the exception it ends with."""
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("I0000", "W0000", "WARNING: All log"))]
    nodes = [m.group(1) for line in lines if "ERROR" in line and (m := _OP_NAME.search(line))]
    exceptions = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    errors = [line for line in lines if "error" in line.lower() and "onnx_op_name" not in line]
    reason = (exceptions or errors or lines or ["no output"])[-1][:300]
    missing = [m.group(1) for line in lines if (m := _NO_CONVERTER.search(line))]
    if missing:  # an op onnx2tf has no module for fails before it names the node
        reason = f"onnx2tf has no converter for {missing[-1]} ops"
        return Failure(nodes[-1] if nodes else None, reason, missing[-1], unsupported=True)
    return Failure(nodes[-1] if nodes else None, reason)


# op type -> what to change in the model when onnx2tf cannot convert that node
_ADVICE = {
    "If": "export with static shapes and without data-dependent branches (torch.onnx.export without "
    "dynamic_axes), so the If folds away",
    "Loop": "export with a fixed sequence length (no Python loop over tensor values), or unroll it",
    "Scan": "export with a fixed sequence length, or unroll it",
    "LSTM": "export the recurrent layer with a fixed sequence length and batch 1, or keep the state "
    "as an explicit input/output",
    "GRU": "export the recurrent layer with a fixed sequence length and batch 1",
    "Concat": "give every input a static shape (--input-shape); a Concat of tensors whose shapes onnx2tf "
    "cannot infer fails",
    "Reshape": "give every input a static shape (--input-shape) so the target shape is a constant",
    "NonMaxSuppression": "export without NMS in the graph (Ultralytics: nms=False) and run NMS on the host",
    "Erf": "export GELU with approximate='tanh', or as the Gelu op (opset 20)",
}


def advice(op_type: str | None) -> str:
    """What to change in the model when onnx2tf fails on a node of ``op_type``."""
    default = (
        "give every input a static shape (--input-shape), re-export at opset 13-17, or replace that op; "
        "or target a runtime that takes ONNX (onnxruntime, openvino)"
    )
    return _ADVICE.get(op_type or "", default)


def first_node(model: Any, op_type: str | None) -> str | None:
    """The name (else first output) of the first node of ``op_type`` in ``model``'s main graph."""
    node = next((node for node in model.graph.node if node.op_type == op_type), None)
    return None if node is None else node.name or node.output[0]


def node_op_type(model: Any, name: str | None) -> str | None:
    """The op type of the node called ``name`` in ``model`` or its subgraphs (None when absent)."""
    if name is None:
        return None
    for graph in subgraphs(model.graph):
        for node in graph.node:
            if node.name == name or name in node.output:
                return node.op_type
    guess = re.match(r"^/?(?:.*/)?([A-Z][A-Za-z]+)(?:_\d+)?$", name)  # onnx2tf's auto names: "Concat_12"
    return guess.group(1) if guess else None


def _aligned(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray | None:
    """``reference`` in ``candidate``'s layout (onnx2tf may emit channels-last), or None."""
    if reference.shape == candidate.shape:
        return reference
    if reference.ndim >= 3:
        moved = np.moveaxis(reference, 1, -1)
        if moved.shape == candidate.shape:
            return moved
    if reference.size == candidate.size and reference.squeeze().shape == candidate.squeeze().shape:
        return reference.reshape(candidate.shape)
    return None


def _output_error(reference: np.ndarray, output: np.ndarray) -> tuple[float, str | None]:
    """Max |output - reference| relative to max(1, max |reference|), and why it is unusable (None: usable)."""
    ref = _aligned(reference, output)
    if ref is None:
        return float("inf"), f"an output has shape {list(output.shape)}, ONNX gives {list(reference.shape)}"
    if not ref.size:
        return 0.0, None
    scale = max(1.0, float(np.max(np.abs(ref))))
    error = float(np.max(np.abs(ref.astype(np.float64) - output.astype(np.float64)))) / scale
    if not np.isfinite(error):  # NaN or inf where onnxruntime has numbers; max() would skip a NaN
        return float("inf"), "an output has NaN or inf values"
    return error, None


def _invoke(interpreter: Any, feed: dict[str, np.ndarray], inputs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """The .tflite's outputs for one feed; inputs matched by name, else by position."""
    for index, detail in enumerate(interpreter.get_input_details()):
        spec = next((s for s in inputs if s.name == detail["name"]), inputs[min(index, len(inputs) - 1)])
        value = feed[spec.name].astype(detail["dtype"])
        if tuple(value.shape) != tuple(detail["shape"]) and value.ndim >= 3:
            value = np.moveaxis(value, 1, -1)  # an input onnx2tf made channels-last
        interpreter.set_tensor(detail["index"], value.reshape(detail["shape"]))
    interpreter.invoke()
    return [interpreter.get_tensor(detail["index"]) for detail in interpreter.get_output_details()]


def disagreement(
    tflite: Path, onnx_model: Any, inputs: Sequence[TensorSpec], *, seed: int = 0
) -> tuple[float, str | None]:
    """Largest relative error of the .tflite against onnxruntime on seeded random inputs, and why it fails.

    Returns:
        ``(error, None)`` when every output agrees within :data:`FP32_TOLERANCE`, else ``(error, why)``.
    """
    from edgepack.convert.ortcheck import random_feeds, run_onnx

    interpreter_module = require("ai_edge_litert.interpreter")
    feeds = random_feeds(inputs, seed=seed, count=2)
    references = run_onnx(onnx_model, feeds)
    interpreter = interpreter_module.Interpreter(model_path=str(tflite), num_threads=1)
    interpreter.allocate_tensors()
    worst = 0.0
    for feed, reference in zip(feeds, references, strict=True):
        outputs = _invoke(interpreter, feed, inputs)
        if len(outputs) != len(reference):
            return float("inf"), f"{len(outputs)} outputs instead of {len(reference)}"
        for ref, out in zip(reference, outputs, strict=True):
            error, why = _output_error(np.asarray(ref), np.asarray(out))
            if why is not None:
                return error, why
            worst = max(worst, error)
    if worst > FP32_TOLERANCE:
        return worst, f"outputs differ from onnxruntime (max relative error {worst:.3g} > {FP32_TOLERANCE})"
    return worst, None
