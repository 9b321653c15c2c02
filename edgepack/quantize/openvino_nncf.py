"""Post-training int8 quantization of OpenVINO IR with NNCF.

``nncf.quantize`` inserts FakeQuantize on the activations that feed Convolution/MatMul and stores
the weights as int8 constants (Convert + Multiply), so the saved ``.bin`` is about a quarter of the
f32 one. The model keeps float inputs and outputs; the CPU plugin runs the quantized parts in int8.

Calibration method -> NNCF activation range estimator: minmax -> MINMAX, percentile ->
MEAN_QUANTILE (mean of per-sample 0.01%/99.99% quantiles), entropy -> HISTOGRAM (NNCF has no KL
calibration; its histogram estimator minimises the quantization error instead, and says so in
``meta["warnings"]``). Symmetric activations pick NNCF's PERFORMANCE preset, else MIXED.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat
from edgepack.calibration.adapters import nncf_dataset
from edgepack.convert.onnx_openvino import save_ir
from edgepack.deps import require
from edgepack.errors import UsageError
from edgepack.runtimes.openvino import exact_f32_config
from edgepack.tools import fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    from edgepack.calibration import Dataset
    from edgepack.profiles import Profile
    from edgepack.quantize import LayerError, QuantOptions

# Ops NNCF quantizes (inputs and weights) on the CPU; their friendly names are what IgnoredScope takes.
QUANTIZABLE = (
    "Convolution",
    "GroupConvolution",
    "ConvolutionBackpropData",
    "GroupConvolutionBackpropData",
    "MatMul",
)
_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}
_F32 = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}  # this CPU defaults to bf16
LAYER_SAMPLES = 32
_HINT = "Keep the failing layer in float (exclude it), or package the model in fp32."


def quantize(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    calibration: Dataset,
    workdir: Path,
    options: QuantOptions,
    profile: Profile,
) -> Artifact:
    """Quantize the float IR with ``nncf.quantize`` and save ``workdir/model.xml`` + ``model.bin`` (int8 weights).

    Args:
        pre: Unused (the IR is quantized directly).
        float_artifact: The float OpenVINO IR.
        calibration: Calibration samples; NNCF reads at most ``options.samples`` of them.
        workdir: Output folder.
        options: Method, per-channel, activation symmetry and the layers kept in float.
        profile: The target (unused beyond the runtime choice).

    Returns:
        The quantized IR artifact (float inputs and outputs).

    Raises:
        UsageError: a mode other than int8, or exclude names that are not layers of the model.
        ConversionError: NNCF or OpenVINO fails.
    """
    del pre, profile
    if options.mode != "int8":
        raise UsageError(
            f"the NNCF quantizer makes int8 models, not {options.mode!r}.",
            hint="For fp16 weights convert with compress_to_fp16; the CPU plugin picks its own float precision.",
        )
    started = time.perf_counter()
    ov = require("openvino")
    nncf = require("nncf")
    model = ov.Core().read_model(str(float_artifact.path))
    keep = {op.get_friendly_name() for op in model.get_ordered_ops()}  # the float IR's names (IgnoredScope)
    _check_exclude(model, options.exclude)
    advanced, warnings = _advanced(nncf, options)
    preset = nncf.QuantizationPreset.PERFORMANCE if options.symmetric_activations else nncf.QuantizationPreset.MIXED

    def run() -> Any:
        return nncf.quantize(
            model,
            nncf_dataset(calibration, positional=True),
            subset_size=min(options.samples, len(calibration)),
            preset=preset,
            target_device=nncf.TargetDevice.CPU,
            ignored_scope=nncf.IgnoredScope(names=list(options.exclude)),
            advanced_parameters=advanced,
        )

    quantized = run_tool(run, failure=f"NNCF could not quantize {Path(float_artifact.path).name}", hint=_HINT)
    workdir = fresh_dir(workdir)
    xml = workdir / "model.xml"
    run_tool(
        lambda: save_ir(quantized, xml, compress_to_fp16=False, keep=keep),
        failure="OpenVINO could not save the quantized model",
        hint="Check the free disk space of the work folder.",
    )
    meta = _meta(
        quantized,
        float_artifact,
        options,
        warnings,
        preset=preset.value,
        calibration_samples=min(options.samples, len(calibration)),
        seconds=round(time.perf_counter() - started, 3),
    )
    files = (xml, xml.with_suffix(".bin"))
    return Artifact.from_file(
        xml, ModelFormat.OPENVINO, float_artifact.inputs, float_artifact.outputs, files=files, meta=meta
    )


def _check_exclude(model: Any, exclude: tuple[str, ...]) -> None:
    names = {op.get_friendly_name() for op in model.get_ops()}
    unknown = [name for name in exclude if name not in names]
    if unknown:
        known = sorted(op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in QUANTIZABLE)
        raise UsageError(
            f"exclude names {', '.join(unknown)} are not layers of the OpenVINO model.",
            hint=f"Use layer names as quantization reports them, e.g. {', '.join(known[:5])}.",
        )


def _advanced(nncf: Any, options: QuantOptions) -> tuple[Any, list[str]]:
    """NNCF's advanced parameters for the method and per-channel setting, and warnings about them."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    warnings = []
    if options.method == "entropy":
        warnings.append(
            "NNCF has no entropy (KL) calibration: its HISTOGRAM range estimator (quantization-error"
            " minimisation) was used instead"
        )
    weights = None if options.per_channel else QuantizationParameters(per_channel=False)
    params = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, _ESTIMATORS[options.method]),
        weights_quantization_params=weights,
    )
    return params, warnings


def _meta(model: Any, float_artifact: Artifact, options: QuantOptions, warnings: list[str], **facts: Any) -> dict:
    types = [op.get_type_name() for op in model.get_ops()]
    float_io = {"dtype": "float32", "scale": None, "zero_point": None}  # FakeQuantize inside, float I/O
    meta = tool_meta(
        "nncf",
        precision="int8",
        openvino_version=require("openvino").get_version(),
        method=options.method,
        range_estimator=_ESTIMATORS[options.method],
        per_channel=options.per_channel,
        symmetric_activations=options.symmetric_activations,
        io="float",
        quant_params={s.name: dict(float_io) for s in (*float_artifact.inputs, *float_artifact.outputs)},
        excluded=list(options.exclude),
        fake_quantize_nodes=types.count("FakeQuantize") + types.count("FakeConvert"),
        compress_to_fp16=False,
        **facts,
    )
    if options.io != "float":
        warnings = [*warnings, f"[quantize] io = {options.io!r} is not used: the IR keeps float inputs and outputs"]
    meta["warnings"] = warnings
    return meta


# --------------------------------------------------------------------------- per-layer error

# Ops NNCF moves a FakeQuantize up through (one data input): a cut may start above them.
_TRANSPARENT = frozenset(
    {
        *("Reshape", "Transpose", "Squeeze", "Unsqueeze", "StridedSlice", "Slice", "Pad"),
        *("MaxPool", "AvgPool", "Relu", "Clamp", "Interpolate", "DepthToSpace", "SpaceToDepth", "ShuffleChannels"),
    }
)


def layer_errors(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    quantized: Artifact,
    samples: Dataset,
    options: QuantOptions,
    profile: Profile,
) -> list[LayerError]:
    """Per-layer quantization error of an NNCF model, worst first.

    The float model runs in f32 with extra outputs at every tensor a quantized layer reads. Each
    quantized layer (Convolution/MatMul reading a FakeQuantize or NNCF's int8 weights) is cut out
    of the quantized model, from the float tensors its FakeQuantizes read to its output, fed those
    float tensors and compared with the float layer's output: the error its own quantization adds
    (inputs and weights), not the error it inherits from the layers before it.

    Args:
        pre: Unused.
        float_artifact: The float IR that was quantized.
        quantized: The artifact :func:`quantize` returned.
        samples: Samples to measure on (the first 32).
        options: Unused.
        profile: Unused.

    Returns:
        One LayerError per quantized layer, named as ``nncf.IgnoredScope(names=...)`` takes it.
    """
    del pre, options, profile
    from edgepack.quantize import LayerError

    ov = require("openvino")
    core = ov.Core()
    fmodel = core.read_model(str(float_artifact.path))
    fops = {op.get_friendly_name(): op for op in fmodel.get_ops()}
    qmodel = core.read_model(str(quantized.path))
    names = [op.get_friendly_name() for op in qmodel.get_ordered_ops() if _is_quantized(op)]
    layers = [(n, cut) for n in names if n in fops and (cut := _cut(core, quantized.path, n)) is not None]
    keys = sorted({k for _, (cuts, _) in layers for k in cuts} | {(n, 0) for n, _ in layers})
    keys = [k for k in keys if k[0] in fops]
    first = len(fmodel.outputs)
    fmodel.add_outputs([fops[name].output(index) for name, index in keys])
    f32 = {**_F32, **exact_f32_config(core)}
    request = core.compile_model(fmodel, "CPU", f32).create_infer_request()
    parts = [(n, cuts, core.compile_model(sub, "CPU", f32).create_infer_request()) for n, (cuts, sub) in layers]
    stats: dict[str, list[float]] = {}
    for feed in samples.take(LAYER_SAMPLES):
        result = request.infer([feed[name] for name in samples.input_names])
        values = {key: np.array(result[request.model_outputs[first + i]]) for i, key in enumerate(keys)}
        for name, cuts, part in parts:
            if (name, 0) in values and all(c in values for c in cuts):
                got = part.infer([values[c] for c in cuts])[0]
                _add(stats.setdefault(name, [0.0, 0.0, 0]), values[(name, 0)], got)
    kinds = {n: op.get_type_name() for n, op in fops.items()}
    errors = [LayerError(n, kinds[n], sqnr_db=_sqnr(e), mse=e[1] / max(e[2], 1)) for n, e in stats.items()]
    return sorted(errors, key=lambda e: e.sqnr_db)


def _is_quantized(op: Any) -> bool:
    """A quantizable op that reads a FakeQuantize (activations) or NNCF's int8 weights (``.../fq_weights_N``)."""
    if op.get_type_name() not in QUANTIZABLE:
        return False
    producers = [i.get_source_output().get_node() for i in op.inputs()]
    return any(p.get_type_name() == "FakeQuantize" or "/fq_weights_" in p.get_friendly_name() for p in producers)


def _cut(core: Any, path: Path, name: str) -> tuple[list[tuple[str, int]], Any] | None:
    """Layer ``name`` of a fresh copy of the quantized model, with Parameters for the float tensors it reads.

    Returns:
        The (friendly name, output index) of each float tensor fed, in Parameter order, and the
        sub-model; None when the layer cannot be cut out alone.
    """
    ov = require("openvino")
    model = core.read_model(str(path))
    op = next(o for o in model.get_ops() if o.get_friendly_name() == name)
    keys, params = [], []
    for port in op.inputs():
        cut = _cut_point(port)
        if cut is None:
            continue  # weights
        source = cut.get_source_output()
        param = ov.opset13.parameter(source.get_partial_shape(), source.get_element_type())
        keys.append((source.get_node().get_friendly_name(), source.get_index()))
        cut.replace_source_output(param.output(0))
        params.append(param)
    try:
        return keys, ov.Model([op.output(0)], params, f"{name}_alone")
    except RuntimeError:  # another activation reaches it (not through a FakeQuantize)
        return None


def _cut_point(port: Any) -> Any:
    """Where to feed a float tensor for this input: above its FakeQuantize, or the input itself; None for weights."""
    node = port.get_source_output().get_node()
    here = port
    while True:
        kind = node.get_type_name()
        if kind == "Constant" or "/fq_weights_" in node.get_friendly_name():
            return None
        if kind == "FakeQuantize":
            above = node.input(0).get_source_output().get_node()
            return None if above.get_type_name() == "Constant" else node.input(0)
        if kind not in _TRANSPARENT:
            return port
        here = node.input(0)
        node = here.get_source_output().get_node()


def _add(entry: list[float], expected: np.ndarray, got: np.ndarray) -> None:
    e64 = np.asarray(expected, np.float64)
    entry[0] += float(np.sum(e64**2))
    entry[1] += float(np.sum((e64 - np.asarray(got, np.float64)) ** 2))
    entry[2] += e64.size


def _sqnr(entry: list[float]) -> float:
    if entry[1] == 0:
        return float("inf")
    tiny = np.finfo(np.float32).tiny
    signal = tiny if tiny > entry[0] else entry[0]  # max(), typed: a silent layer's energy is float32's tiny
    return float(10 * np.log10(signal / entry[1]))
