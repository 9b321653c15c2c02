"""Post-training int8 quantization of ONNX models to QDQ form, for ONNX Runtime and TensorRT.

ONNX Runtime (``Runtime.ONNXRUNTIME``): every op ONNX Runtime quantizes gets Q/DQ on its inputs and
outputs; uint8 activations (int8 with ``symmetric_activations``) and int8 weights, stored as int8
initializers behind DequantizeLinear.

TensorRT (``Runtime.TENSORRT``): explicit quantization as TensorRT's guidance and NVIDIA's ModelOpt
place it: symmetric int8 Q/DQ on the inputs of Conv, ConvTranspose, Gemm and MatMul only, no
output quantization, float biases, float weights behind a Q/DQ pair (per output channel), so
TensorRT 10 builds it with ``--stronglyTyped`` and 8.x with ``--int8``; no calibration cache.

Calibration ranges are computed here and handed to ``quantize_static`` through its calibration
cache: its own histogram calibrators use 128 bins with 128 quantized bins, which leaves entropy
a single candidate threshold (the same ranges as minmax).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat
from edgepack.calibration.adapters import ort_reader
from edgepack.convert._common import run_tool
from edgepack.deps import require, version_of
from edgepack.errors import ConversionError, UsageError
from edgepack.profiles import Runtime

if TYPE_CHECKING:
    from edgepack.calibration import Dataset
    from edgepack.profiles import Profile
    from edgepack.quantize import LayerError, QuantOptions

TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear's axis attribute
ENTROPY_BINS = 1024  # x the calibration time of 512 bins; 2048 (TensorRT's) costs ~1.3 s per tensor
QUANTIZED_BINS = 128
PERCENTILE = 99.999
PERCENTILE_BINS = 2048
LAYER_SAMPLES = 32
_HINT = "Keep the failing node in float (exclude it), or package the model in fp32."
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def quantize(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    calibration: Dataset,
    workdir: Path,
    options: QuantOptions,
    profile: Profile,
) -> Artifact:
    """Quantize the float ONNX model to int8 QDQ with ``onnxruntime.quantization.quantize_static``.

    Args:
        pre: Unused (the ONNX model is its own source).
        float_artifact: The float ONNX model for the target.
        calibration: Calibration samples; the first ``options.samples`` are used.
        workdir: Folder for ``model.onnx``, the prepared float model and ``calibration.json``.
        options: Method, per-channel, activation symmetry and the nodes to keep in float.
        profile: The target (TensorRT profiles get TensorRT's Q/DQ placement and opset limit).

    Returns:
        The QDQ ONNX artifact; float inputs and outputs.

    Raises:
        UsageError: a mode other than int8, or exclude names that are not nodes of the model.
        ConversionError: ONNX Runtime fails, or the result needs an opset the target lacks.
    """
    del pre
    if options.mode != "int8":
        raise UsageError(
            f"the ONNX QDQ quantizer makes int8 models, not {options.mode!r}.",
            hint="Use precision int8 (fp16 for TensorRT is a trtexec build flag, not a model change).",
        )
    onnx = require("onnx")
    qz = require("onnxruntime.quantization")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tensorrt = profile.runtime is Runtime.TENSORRT
    prepared, per_channel = _prepare(Path(float_artifact.path), workdir / "prepared.onnx", options, profile)
    model = onnx.load(prepared)
    _check_exclude(model, options.exclude)
    settings = _settings(model, options, tensorrt, per_channel, profile)
    cache = _calibrate(prepared, calibration.take(options.samples), settings, workdir)
    out = workdir / "model.onnx"
    run_tool(
        lambda: qz.quantize_static(
            str(prepared),
            str(out),
            None,
            quant_format=qz.QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types or ()),
            per_channel=settings.per_channel,
            activation_type=getattr(qz.QuantType, settings.activation_type),
            weight_type=qz.QuantType.QInt8,
            nodes_to_exclude=list(options.exclude),
            calibrate_method=getattr(qz.CalibrationMethod, _METHODS[options.method]),
            extra_options=dict(settings.extra_options),
            calibration_cache_path=str(cache),
        ),
        failure=f"ONNX Runtime could not quantize {float_artifact.path.name}",
        hint=_HINT,
    )
    qdq = _finish(out, profile)
    meta = _meta(qdq, float_artifact, options, settings, profile, prepared, cache)
    return Artifact.from_file(out, ModelFormat.ONNX, float_artifact.inputs, float_artifact.outputs, meta=meta)


def tensorrt_flags(profile: Profile) -> list[str]:
    """trtexec flags for an explicitly quantized (Q/DQ) model on the profile's TensorRT."""
    if profile.tensorrt is None:
        return []
    major = int(profile.tensorrt.tensorrt_version.split(".")[0])
    return ["--stronglyTyped"] if major >= 10 else ["--int8", "--fp16"]


# --------------------------------------------------------------------------- preparation


def _prepare(source: Path, dest: Path, options: QuantOptions, profile: Profile) -> tuple[Path, bool]:
    """Shape inference and ONNX Runtime's basic optimizations; opset raised to 13 for per-channel weights.

    Returns:
        The prepared model and whether weights can be quantized per channel.
    """
    onnx = require("onnx")
    shape_inference = require("onnxruntime.quantization.shape_inference")
    model = onnx.load(source)
    per_channel = options.per_channel
    target = profile.target_opset
    dest.parent.mkdir(parents=True, exist_ok=True)
    if per_channel and _opset(model) < PER_CHANNEL_MIN_OPSET:
        if target is not None and target < PER_CHANNEL_MIN_OPSET:
            per_channel = False  # per-tensor weights still fit opsets 10-12
        else:
            source = dest.with_name("opset13.onnx")
            onnx.save(onnx.version_converter.convert_version(model, PER_CHANNEL_MIN_OPSET), source)
    # All inputs are static here: ONNX shape inference is enough (symbolic inference needs sympy).
    run_tool(
        lambda: shape_inference.quant_pre_process(str(source), str(dest), skip_symbolic_shape=True),
        failure=f"ONNX Runtime could not prepare {source.name} for quantization",
        hint=_HINT,
    )
    prepared = onnx.load(dest)
    _name_nodes(prepared)
    _drop_unused_opsets(prepared)
    onnx.save(prepared, dest)
    return dest, per_channel


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _name_nodes(model: Any) -> None:
    """Give unnamed nodes a stable name, so each can be excluded and reported."""
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _drop_unused_opsets(model: Any) -> None:
    """ONNX Runtime's optimizer declares every domain it knows; keep the ones nodes use."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _check_exclude(model: Any, exclude: tuple[str, ...]) -> None:
    names = {n.name for n in model.graph.node}
    unknown = [name for name in exclude if name not in names]
    if unknown:
        known = sorted(n.name for n in model.graph.node if n.op_type in TRT_OP_TYPES) or sorted(names)
        raise UsageError(
            f"exclude names {', '.join(unknown)} are not nodes of the model.",
            hint=f"Use node names as quantization reports them, e.g. {', '.join(known[:5])}.",
        )


@dataclass(frozen=True)
class _Settings:
    """What quantize_static and the calibrator are called with."""

    method: str
    activation_type: str  # QuantType member name
    per_channel: bool
    op_types: tuple[str, ...] | None  # None: every op type ONNX Runtime quantizes
    extra_options: dict[str, Any] = field(default_factory=dict)
    calibrator: dict[str, Any] = field(default_factory=dict)


def _settings(model: Any, options: QuantOptions, tensorrt: bool, per_channel: bool, profile: Profile) -> _Settings:
    symmetric = tensorrt or options.symmetric_activations  # TensorRT takes symmetric int8 only
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if tensorrt:
        extra |= {
            "QuantizeBias": False,  # TensorRT keeps biases in float
            "AddQDQPairToWeight": True,  # float weights + Q/DQ: TensorRT 8.x and 10 both fold them
            "OpTypesToExcludeOutputQuantization": sorted({n.op_type for n in model.graph.node}),
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
            "DedicatedQDQPair": False,
        }
    calibrator: dict[str, Any] = {}
    if options.method == "entropy":
        calibrator = {"num_bins": ENTROPY_BINS, "num_quantized_bins": QUANTIZED_BINS, "symmetric": False}
    elif options.method == "percentile":
        calibrator = {"num_bins": PERCENTILE_BINS, "percentile": PERCENTILE, "symmetric": True}
    if calibrator:
        step = profile.options("quantize")  # [step_options.quantize] may tune the histogram
        calibrator |= {k: step[k] for k in ("num_bins", "num_quantized_bins", "percentile") if k in step}
    return _Settings(
        method=options.method,
        activation_type="QInt8" if symmetric else "QUInt8",
        per_channel=per_channel,
        op_types=TRT_OP_TYPES if tensorrt else None,
        extra_options=extra,
        calibrator=calibrator,
    )


def _calibrate(prepared: Path, data: Dataset, settings: _Settings, workdir: Path) -> Path:
    """Collect activation ranges with the method's calibrator and write ONNX Runtime's calibration cache."""
    onnx = require("onnx")
    calibrate = require("onnxruntime.quantization.calibrate")
    method = calibrate.CalibrationMethod[_METHODS[settings.method]]
    inputs = [i.name for i in onnx.load(prepared).graph.input]

    def collect() -> Any:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            calibrator = calibrate.create_calibrator(
                prepared,
                list(settings.op_types or ()),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options=dict(settings.calibrator),
            )
            calibrator.collect_data(ort_reader(data, inputs[: len(data.input_names)]))
            ranges = calibrator.compute_data()
            if method == calibrate.CalibrationMethod.Entropy:
                ranges = _clip_to_observed(ranges, calibrator.collector.histogram_dict, calibrate)
            return ranges

    ranges = run_tool(collect, failure=f"calibration failed on {prepared.name}", hint=_HINT)
    cache = workdir / "calibration.json"
    calibrate.save_tensors_data(ranges, cache)
    return cache


def _clip_to_observed(ranges: Any, histograms: dict[str, Any], calibrate: Any) -> Any:
    """Entropy thresholds are symmetric (-t, t): clip them to the observed range (0 for ReLU outputs)."""
    data = {}
    for name, td in ranges.data.items():
        low, high = td.range_value
        if name in histograms:
            low, high = np.maximum(low, histograms[name][2]), np.minimum(high, histograms[name][3])
        extra = {k: getattr(td, k) for k in ("hist", "bins") if hasattr(td, k)}
        data[name] = calibrate.TensorData(
            lowest=np.asarray(low, np.float32), highest=np.asarray(high, np.float32), **extra
        )
    return calibrate.TensorsData(ranges.calibration_method, data)


# --------------------------------------------------------------------------- result


def _finish(out: Path, profile: Profile) -> Any:
    onnx = require("onnx")
    model = onnx.load(out)
    _drop_unused_opsets(model)
    onnx.save(model, out)
    try:
        onnx.checker.check_model(str(out))
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"the quantized model is not valid ONNX: {exc}") from exc
    target = profile.target_opset
    if target is not None and _opset(model) > target:
        raise ConversionError(
            f"the quantized model needs opset {_opset(model)}, over the target's {target}.",
            hint="Convert the float model to a lower opset first, or keep the target in fp32.",
        )
    return model


def _meta(
    model: Any,
    float_artifact: Artifact,
    options: QuantOptions,
    settings: _Settings,
    profile: Profile,
    prepared: Path,
    cache: Path,
) -> dict[str, Any]:
    ops = [n.op_type for n in model.graph.node]
    float_io = {"dtype": "float32", "scale": None, "zero_point": None, "note": "float I/O: Q/DQ run inside"}
    meta: dict[str, Any] = {
        **dict(float_artifact.meta),
        "tool": "onnxruntime.quantization",
        "tool_version": version_of("onnxruntime"),
        "precision": "int8",
        "quant_format": "QDQ",
        "method": options.method,
        "per_channel": settings.per_channel,
        "activation_dtype": "int8" if settings.activation_type == "QInt8" else "uint8",
        "weight_dtype": "int8",
        "symmetric_activations": settings.extra_options["ActivationSymmetric"],
        "op_types": list(settings.op_types) if settings.op_types else "all",
        "calibrator": dict(settings.calibrator),
        "io": "float",
        "quant_params": {s.name: dict(float_io) for s in (*float_artifact.inputs, *float_artifact.outputs)},
        "excluded": list(options.exclude),
        "qdq_nodes": sum(op in ("QuantizeLinear", "DequantizeLinear") for op in ops),
        "opset": _opset(model),
        "calibration_samples": options.samples,
        "calibration_cache": cache.name,
        "prepared_model": str(prepared),
    }
    if options.io != "float":
        meta["io_note"] = f"[quantize] io = {options.io!r} is not used: QDQ models keep float inputs and outputs"
    if profile.runtime is Runtime.TENSORRT:
        meta["tensorrt_flags"] = tensorrt_flags(profile)
    return meta


# --------------------------------------------------------------------------- per-layer error


def layer_errors(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    quantized: Artifact,
    samples: Dataset,
    options: QuantOptions,
    profile: Profile,
) -> list[LayerError]:
    """Per-node quantization error of a QDQ model, worst first.

    The float model's activations are collected with ``qdq_loss_debug``. Each quantized node is then
    run alone on those float inputs with its own Q/DQ applied (quantized inputs, weights and output)
    and compared with its float output. A node that quantizes its output is also charged with the
    error that output causes in the nodes that read it: an outlier channel crushes the other channels
    of a per-tensor scale, which shows in the next layer, not in its own output's SQNR.
    (``qdq_loss_debug``'s own errors are cumulative, or compare a tensor before a fused ReLU with its
    quantized value after it.)

    Args:
        pre: Unused.
        float_artifact: The float ONNX model that was quantized.
        quantized: The artifact :func:`quantize` returned.
        samples: Samples to measure on (the first 32).
        options: The options the model was quantized with.
        profile: The target.

    Returns:
        One LayerError per quantized node, named as ``nodes_to_exclude`` takes it: ``sqnr_db`` is the
        worse of its own and its output's downstream SQNR, ``mse`` its own output's error.
    """
    del pre
    from edgepack.quantize import LayerError

    onnx = require("onnx")
    reference = Path(quantized.meta.get("prepared_model", ""))
    with tempfile.TemporaryDirectory() as tmp:
        if not reference.is_file():  # an artifact from another process: prepare the float model again
            reference, _ = _prepare(Path(float_artifact.path), Path(tmp) / "prepared.onnx", options, profile)
        float_model = onnx.load(reference)
        nodes = _quantized_nodes(onnx.load(quantized.path), float_model)
        runner = _NodeRunner(float_model)
        stats: dict[tuple[str, str], list[float]] = {}
        for acts in _float_activations(reference, samples.take(LAYER_SAMPLES), Path(tmp)):
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
    for graph, table in ((qdq.graph, readers), (float_model.graph, float_readers := {})):
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


def _float_activations(model_path: Path, data: Dataset, tmp: Path) -> Any:
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
        return None if any(v is None for v in values.values()) else values

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
    floats = [acts.get(name) for name in qnode.node.output]
    if any(f is None for f in floats):
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
            expected = [acts.get(n) for n in reader.output]
            if any(e is None for e in expected):
                expected = runner.run(reader, reader_feeds)
            got = runner.run(reader, {**reader_feeds, tensor: params.fake(acts[tensor])})
            _add(stats, (qnode.name, reader.name), expected, got)


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
    return float(10 * np.log10(max(entry[0], np.finfo(np.float32).tiny) / entry[1]))
