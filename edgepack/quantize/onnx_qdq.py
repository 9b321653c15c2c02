"""Post-training int8 quantization of ONNX models to QDQ form, for ONNX Runtime and TensorRT.

ONNX Runtime (``Runtime.ONNXRUNTIME``): every op ONNX Runtime quantizes gets Q/DQ on its inputs and
outputs (its CPU kernels fuse DQ -> op -> Q into integer ops); uint8 activations (int8 with
``symmetric_activations``) and int8 per-channel weights stored as int8 initializers.

TensorRT (``Runtime.TENSORRT``): explicit quantization placed as TensorRT's guidance and NVIDIA's
ModelOpt place it: symmetric int8 Q/DQ on the inputs of Conv, ConvTranspose, Gemm and MatMul only,
no output quantization, float biases, float weights behind a Q/DQ pair (per output channel). The
engine is built from the scales in the graph (``--stronglyTyped`` on TensorRT 10, ``--int8`` on
8.x: ``meta["tensorrt_flags"]``); there is no calibration cache.

Both keep float inputs and outputs. Calibration ranges are computed here and handed to
``quantize_static`` as its calibration cache: through ``quantize_static`` its histogram calibrators
run with 128 bins and 128 quantized bins, which leaves entropy a single candidate threshold (the
minmax range). ``[step_options.quantize]`` may set ``num_bins``, ``num_quantized_bins`` and
``percentile``.

Excluded nodes keep float weights and compute in float. With TensorRT's placement nothing around
them is quantized; with ONNX Runtime's, an input can still carry the Q/DQ of the node that produced
it (that node quantizes its output): :func:`layer_errors` charges such a tensor to both nodes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat
from edgepack.calibration.adapters import ort_reader
from edgepack.deps import require
from edgepack.errors import ConversionError, UsageError
from edgepack.profiles import Runtime
from edgepack.tools import fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    from edgepack.calibration import Dataset
    from edgepack.profiles import Profile
    from edgepack.quantize import LayerError, QuantOptions

TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear's axis attribute
ENTROPY_BINS = 1024  # ~0.3 s per tensor in ONNX Runtime's Python KL search; 2048 (TensorRT's) ~1.3 s
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
    started = time.perf_counter()
    workdir = fresh_dir(workdir)
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
    meta = _meta(
        qdq,
        float_artifact,
        options,
        settings,
        profile,
        calibration_samples=min(options.samples, len(calibration)),
        calibration_cache=cache.name,
        prepared_model=str(prepared),
        seconds=round(time.perf_counter() - started, 3),
    )
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
        step = profile.quantize_settings  # [step_options.quantize] may tune the histogram
        calibrator |= step.model_dump(exclude_none=True)
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
    graph = onnx.load(prepared).graph
    weights = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in weights]

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
    model: Any, float_artifact: Artifact, options: QuantOptions, settings: _Settings, profile: Profile, **facts: Any
) -> dict[str, Any]:
    ops = [n.op_type for n in model.graph.node]
    float_io = {"dtype": "float32", "scale": None, "zero_point": None}  # QDQ: float I/O, Q/DQ inside
    meta = tool_meta(
        "onnxruntime.quantization",
        "onnxruntime",
        precision="int8",
        quant_format="QDQ",
        method=options.method,
        calibrator=dict(settings.calibrator),
        per_channel=settings.per_channel,
        activation_dtype="int8" if settings.activation_type == "QInt8" else "uint8",
        weight_dtype="int8",
        symmetric_activations=settings.extra_options["ActivationSymmetric"],
        op_types=list(settings.op_types) if settings.op_types else "all",
        io="float",
        quant_params={s.name: dict(float_io) for s in (*float_artifact.inputs, *float_artifact.outputs)},
        excluded=list(options.exclude),
        qdq_nodes=sum(op in ("QuantizeLinear", "DequantizeLinear") for op in ops),
        opset=_opset(model),
        **facts,
    )
    warnings = []
    if options.io != "float":
        warnings.append(f"[quantize] io = {options.io!r} is not used: QDQ models keep float inputs and outputs")
    if options.per_channel and not settings.per_channel:
        warnings.append(f"per-tensor weights: per-channel Q/DQ needs opset 13, the target takes {profile.target_opset}")
    if profile.runtime is Runtime.TENSORRT:
        meta["tensorrt_flags"] = tensorrt_flags(profile)
        if not options.symmetric_activations:
            warnings.append("symmetric int8 activations were used: TensorRT takes no other")
    if "transposed_outputs" in float_artifact.meta:
        meta["transposed_outputs"] = float_artifact.meta["transposed_outputs"]
    meta["warnings"] = warnings
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
    from edgepack.quantize import qdq_layers

    reference = Path(quantized.meta.get("prepared_model", ""))
    with tempfile.TemporaryDirectory() as tmp:
        if not reference.is_file():  # an artifact from another process: prepare the float model again
            reference, _ = _prepare(Path(float_artifact.path), Path(tmp) / "prepared.onnx", options, profile)
        return qdq_layers.measure(reference, Path(quantized.path), samples.take(LAYER_SAMPLES))
