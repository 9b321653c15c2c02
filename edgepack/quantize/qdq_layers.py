"""Per-node quantization error of a QDQ ONNX model (see :func:`edgepack.quantize.onnx_qdq.layer_errors`).

The float model's activations are collected with ``onnxruntime.quantization.qdq_loss_debug``
(``modify_model_output_intermediate_tensors``). Each quantized node of the QDQ model (one that
reads a dequantized tensor: what ``nodes_to_exclude`` acts on) is then run alone, as a one-node
model, on those float inputs with its own Q/DQ applied in numpy (quantized activations, dequantized
weights, quantized output) and compared with its float output. A node that quantizes its output is
also charged with the error that output causes in the nodes that read it: an outlier channel
crushes the other channels of a per-tensor scale, which shows in the next layer, not in the SQNR of
its own output. (``qdq_loss_debug``'s own activation errors are cumulative, or compare a tensor
before a ReLU that ONNX Runtime folded into the Q/DQ with its quantized value after it.)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.calibration.adapters import ort_reader
from edgepack.deps import require

if TYPE_CHECKING:
    from edgepack.calibration import Dataset
    from edgepack.quantize import LayerError


def measure(reference: Path, qdq: Path, samples: Dataset) -> list[LayerError]:
    """Per-node error of ``qdq`` against the float model it was quantized from, worst first.

    Args:
        reference: The float model exactly as it was quantized (same node and tensor names).
        qdq: The QDQ model.
        samples: The samples to run (all of them).

    Returns:
        One LayerError per quantized node: ``sqnr_db`` is the worse of its own output's SQNR and the
        SQNR its quantized output leaves in the nodes that read it; ``mse`` is its own output's error;
        ``rmse_over_scale`` is against its output's scale where it has one.
    """
    from edgepack.quantize import LayerError

    onnx = require("onnx")
    with tempfile.TemporaryDirectory() as tmp:
        float_model = onnx.load(reference)
        nodes = _quantized_nodes(onnx.load(qdq), float_model)
        runner = _NodeRunner(float_model)
        stats: dict[tuple[str, str], list[float]] = {}
        for acts in _float_activations(reference, samples, Path(tmp)):
            for qnode in nodes:
                _accumulate(qnode, acts, runner, stats)
    errors = []
    for qnode in nodes:
        own = stats.get((qnode.name, ""))
        if own is None:
            continue  # an input could not be fed (a non-float tensor computed at run time)
        worst = min(_sqnr(v) for (name, _), v in stats.items() if name == qnode.name)
        mse = own[1] / max(own[2], 1)
        scales = [p.scale for _, p, _ in qnode.outputs.values() if p.scale.size == 1]
        ratio = float(np.sqrt(mse) / float(scales[0])) if len(scales) == 1 and float(scales[0]) > 0 else None
        errors.append(LayerError(qnode.name, qnode.op_type, sqnr_db=worst, mse=mse, rmse_over_scale=ratio))
    return sorted(errors, key=lambda e: e.sqnr_db)


@dataclass(frozen=True)
class _QParams:
    """A QuantizeLinear's scale, zero point and axis, as numpy fake quantization."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    def fake(self, x: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.zero_point.dtype)
        scale, zp = self._broadcast(x.ndim)
        q = np.clip(np.rint(x / scale) + zp, info.min, info.max)  # rint: round half to even, as ONNX
        return ((q - zp) * scale).astype(np.float32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self._broadcast(q.ndim)
        return ((q.astype(np.float64) - zp) * scale).astype(np.float32)

    def _broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        scale, zp = self.scale.astype(np.float64), self.zero_point.astype(np.float64)
        if scale.size > 1:
            shape = [1] * ndim
            shape[self.axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return scale, zp


@dataclass(frozen=True)
class _QNode:
    """A quantized node: its float twin, its quantized inputs and the outputs it quantizes."""

    name: str
    op_type: str
    node: Any  # the float model's NodeProto
    inputs: dict[int, _QParams | np.ndarray]  # activation Q/DQ, or the dequantized weight
    outputs: dict[int, tuple[str, _QParams, tuple[Any, ...]]]  # (tensor, Q/DQ, float consumers)


def _qparams(node: Any, init: dict[str, np.ndarray]) -> _QParams:
    scale = init[node.input[1]]
    zp = init[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(scale.shape, np.uint8)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return _QParams(scale=scale, zero_point=zp, axis=axis)


def _quantized_nodes(qdq: Any, float_model: Any) -> list[_QNode]:
    """The nodes of ``qdq`` that read a dequantized tensor (the ones ``nodes_to_exclude`` acts on), with their twins."""
    numpy_helper = require("onnx.numpy_helper")
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    float_readers: dict[str, list[Any]] = {}
    for graph, table in ((qdq.graph, readers), (float_model.graph, float_readers)):
        for n in graph.node:
            for name in n.input:
                table.setdefault(name, []).append(n)
    float_nodes = {n.name: n for n in float_model.graph.node}
    result = []
    for node in qdq.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name not in float_nodes:
            continue
        inputs: dict[int, _QParams | np.ndarray] = {}
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in init:  # an int8 weight or int32 bias
                inputs[i] = _qparams(dq, init).dequantize(init[dq.input[0]])
            elif (q := producer.get(dq.input[0])) is not None and q.op_type == "QuantizeLinear":
                params = _qparams(q, init)
                inputs[i] = params.fake(init[q.input[0]]) if q.input[0] in init else params
        if not inputs:
            continue  # it reads no quantized tensor: a Q/DQ after it belongs to the node that reads it
        outputs = {}
        for j, name in enumerate(node.output):
            q = next((r for r in readers.get(name, []) if r.op_type == "QuantizeLinear"), None)
            if q is not None:
                outputs[j] = (name, _qparams(q, init), tuple(float_readers.get(name, [])))
        result.append(_QNode(node.name, node.op_type, float_nodes[node.name], inputs, outputs))
    return result


def _float_activations(model_path: Path, data: Dataset, tmp: Path) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{tensor: float array}`` per sample: every float tensor of the model, graph inputs included."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    debug = require("onnxruntime.quantization.qdq_loss_debug")
    augmented = tmp / "float_activations.onnx"
    debug.modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    inferred = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    shapes = {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    suffix = "_ReshapedSavedOutput"  # qdq_loss_debug flattens each saved tensor
    reader = ort_reader(data, [i.name for i in session.get_inputs()][: len(data.input_names)])
    while (feed := reader.get_next()) is not None:
        acts = dict(feed)
        for name, value in zip(names, session.run(None, feed), strict=True):
            base = name.removesuffix(suffix)
            shape = shapes.get(base)
            if name.endswith(suffix) and shape and all(shape):
                acts[base] = value.reshape(shape)
        yield acts


class _NodeRunner:
    """Runs one node of the float model alone (every input fed, weights included), one session per node."""

    def __init__(self, float_model: Any) -> None:
        numpy_helper = require("onnx.numpy_helper")
        self._model = float_model
        self._init = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
        self._sessions: dict[str, Any] = {}

    def feeds(self, node: Any, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        values = {name: acts[name] if name in acts else self._init.get(name) for name in node.input if name}
        return _known(values)

    def run(self, node: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if node.name not in self._sessions:
            self._sessions[node.name] = self._session(node, feeds)
        return self._sessions[node.name].run(None, feeds)

    def _session(self, node: Any, feeds: dict[str, np.ndarray]) -> Any:
        onnx = require("onnx")
        ort = require("onnxruntime")
        helper = onnx.helper
        inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in feeds.items()
        ]
        outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = helper.make_graph([node], "one_node", inputs, outputs)
        model = helper.make_model(graph, opset_imports=self._model.opset_import)
        model.ir_version = self._model.ir_version
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _accumulate(qnode: _QNode, acts: dict[str, np.ndarray], runner: _NodeRunner, stats: dict) -> None:
    """Add one sample's signal and error energy: the node's own (key "") and each quantized output's readers'."""
    feeds = runner.feeds(qnode.node, acts)
    if feeds is None:
        return
    quantized = dict(feeds)
    for i, q in qnode.inputs.items():
        name = qnode.node.input[i]
        quantized[name] = q.fake(feeds[name]) if isinstance(q, _QParams) else q
    outs = runner.run(qnode.node, quantized)
    floats = _present([acts.get(name) for name in qnode.node.output])
    if floats is None:
        floats = runner.run(qnode.node, feeds)
    for j, (tensor, params, _) in qnode.outputs.items():
        outs[j] = params.fake(outs[j])
        floats[j] = acts.get(tensor, floats[j])  # a fused ReLU's output, when the QDQ model dropped the ReLU
    _add(stats, (qnode.name, ""), floats, outs)
    for tensor, params, readers in qnode.outputs.values():
        for reader in readers:
            reader_feeds = runner.feeds(reader, acts) if tensor in acts else None
            if reader_feeds is None:
                continue
            expected = _present([acts.get(n) for n in reader.output])
            if expected is None:
                expected = runner.run(reader, reader_feeds)
            got = runner.run(reader, {**reader_feeds, tensor: params.fake(acts[tensor])})
            _add(stats, (qnode.name, reader.name), expected, got)


def _known(values: dict[str, np.ndarray | None]) -> dict[str, np.ndarray] | None:
    """``values`` when none is missing (None), else None."""
    known = {k: v for k, v in values.items() if v is not None}
    return known if len(known) == len(values) else None


def _present(values: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """``values`` when none is missing (None), else None."""
    present = [v for v in values if v is not None]
    return present if len(present) == len(values) else None


def _add(stats: dict, key: tuple[str, str], expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    entry = stats.setdefault(key, [0.0, 0.0, 0])
    for e, g in zip(expected, got, strict=True):
        e64 = np.asarray(e, np.float64)
        entry[0] += float(np.sum(e64**2))
        entry[1] += float(np.sum((e64 - g) ** 2))
        entry[2] += e64.size


def _sqnr(entry: list[float]) -> float:
    if entry[1] == 0:
        return math.inf
    tiny = np.finfo(np.float32).tiny
    signal = tiny if tiny > entry[0] else entry[0]  # max(), typed: a silent layer's energy is float32's tiny
    return float(10 * np.log10(signal / entry[1]))
