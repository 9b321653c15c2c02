"""LiteRT backend: TFLiteConverter post-training quantization, and TFLite's quantization debugger.

Both routes share one quantizer: a Keras/SavedModel source is converted directly; an ONNX source
(converted by onnx2tf) is quantized from the float SavedModel onnx2tf wrote beside the float
.tflite (``float_artifact.meta["saved_model"]``). Modes:

* ``int8``: full-integer, calibrated on the user's data (``TFLITE_BUILTINS_INT8``), float or
  int8/uint8 I/O. Layers in ``options.exclude`` are kept in float with
  ``tf.lite.experimental.QuantizationDebugger``'s ``denylisted_nodes`` (float or int8 I/O).
* ``fp16``: fp16 weights. ``dynamic``: int8 weights, float activations (no calibration).

:func:`layer_errors` measures each op's own quantization error with the debugger's per-layer
verify mode (each float op is fed the previous quantized op's dequantized output), so the error
of a layer is not the sum of the errors before it.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.calibration import representative_dataset
from edgepack.deps import require
from edgepack.errors import ConversionError
from edgepack.modelio import describe, read_specs
from edgepack.quantize import LayerError, QuantOptions
from edgepack.tools import fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    import numpy as np

    from edgepack.calibration import Dataset
    from edgepack.profiles import Profile

_HINT = (
    "If it names an op without an int8 kernel, choose precision fp16 or dynamic for this target; "
    "if it names unsupported TensorFlow ops, set select_tf_ops = true in [step_options.convert]."
)


def quantize(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    calibration: Dataset,
    workdir: Path,
    options: QuantOptions,
    profile: Profile,
) -> Artifact:
    """Quantize ``pre`` to ``workdir/model.tflite`` in ``options.mode``.

    Args:
        pre: The Keras/H5/SavedModel source, or the ONNX model onnx2tf converted.
        float_artifact: The float .tflite (for an ONNX ``pre``, its ``meta["saved_model"]`` is used).
        calibration: Calibration samples (int8 only).
        workdir: This attempt's folder.
        options: Mode, I/O type, per-channel, layers kept in float.
        profile: The target (unused here beyond the interface).

    Raises:
        ConversionError: ``pre`` is a .tflite, or TFLiteConverter fails.
    """
    del profile
    workdir = fresh_dir(workdir)
    started = time.perf_counter()

    def build() -> bytes:
        converter = _converter(pre, float_artifact, workdir, options)
        _configure(converter, options, calibration)
        if options.mode == "int8" and options.exclude:
            return _with_float_layers(converter, options, calibration)
        return converter.convert()

    flatbuffer = run_tool(
        build, failure=f"TFLiteConverter could not quantize {pre.path.name} ({options.mode})", hint=_HINT
    )
    path = workdir / "model.tflite"
    path.write_bytes(flatbuffer)
    meta = tool_meta(
        "tflite-converter",
        "tensorflow",
        precision=options.mode,
        quant_params=quant_params(path),
        excluded=list(options.exclude),
        warnings=_unsupported(options),
        seconds=round(time.perf_counter() - started, 3),
    )
    if "transposed_outputs" in float_artifact.meta:
        meta["transposed_outputs"] = float_artifact.meta["transposed_outputs"]
    return describe(pre, path, ModelFormat.TFLITE, read_specs(path, ModelFormat.TFLITE), meta=meta)


def layer_errors(
    *,
    pre: Artifact,
    float_artifact: Artifact,
    quantized: Artifact,
    samples: Dataset,
    options: QuantOptions,
    profile: Profile,
) -> list[LayerError]:
    """Each quantized op's own output error, worst (lowest SQNR) first.

    The debugger calibrates on ``samples`` (pass the calibration set the model was quantized
    with, so the ranges are the same) and measures on them too. Names are op output tensor
    names, as ``denylisted_nodes`` takes them.

    Raises:
        ConversionError: the debugger fails.
    """
    del quantized, profile
    tf = require("tensorflow")
    plain = replace(options, mode="int8", io="float", exclude=())
    data = representative_dataset(samples)

    def measure() -> str:
        with tempfile.TemporaryDirectory(prefix="edgepack-layers-") as tmp:
            converter = _converter(pre, float_artifact, Path(tmp), plain)
            _configure(converter, plain, samples)
            calibrated = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=data)
        # A second debugger over the debug model: built from bytes, it keeps every tensor, so the
        # float reference of each op can be read next to its quantized output.
        metrics = {"signal": _signal, "noise": _noise}
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=calibrated.get_debug_quantized_model(),
            debug_dataset=data,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics=metrics),
        )
        debugger.run()
        table = io.StringIO()
        debugger.layer_statistics_dump(table)
        return table.getvalue()

    text = run_tool(measure, failure=f"TFLite's quantization debugger failed on {pre.path.name}", hint=_HINT)
    rows = [_layer_error(row) for row in csv.DictReader(io.StringIO(text))]
    return sorted(rows, key=lambda e: (e.sqnr_db, -e.mse))


def quant_params(path: Path) -> dict[str, dict[str, Any]]:
    """``{tensor name: {dtype, scale, zero_point}}`` of a .tflite's inputs and outputs (scale None: float)."""
    import numpy as np

    from edgepack.runtimes.litert import quant_params as params_of

    interpreter_mod = require("ai_edge_litert.interpreter")

    interp = interpreter_mod.Interpreter(model_path=str(path))
    found = {}
    for detail in [*interp.get_input_details(), *interp.get_output_details()]:
        params = params_of(detail)
        found[detail["name"]] = {
            "dtype": np.dtype(detail["dtype"]).name,
            "scale": params[0] if params else None,
            "zero_point": params[1] if params else None,
        }
    return found


# --------------------------------------------------------------------------- converter


def _converter(pre: Artifact, float_artifact: Artifact, workdir: Path, options: QuantOptions) -> Any:
    """A TFLiteConverter over the float graph: the Keras model, the SavedModel, or onnx2tf's SavedModel."""
    tf = require("tensorflow")
    if pre.format in (ModelFormat.KERAS, ModelFormat.H5):
        from edgepack.convert.keras_tflite import fixed_keras_model, load_model

        model = fixed_keras_model(load_model(pre, trust_code=options.trust_code), pre.inputs)
        return tf.lite.TFLiteConverter.from_keras_model(model)
    if pre.format is ModelFormat.SAVEDMODEL:
        from edgepack.convert.keras_tflite import fixed_savedmodel

        return tf.lite.TFLiteConverter.from_saved_model(str(fixed_savedmodel(pre, workdir / "fixed_savedmodel")))
    if pre.format is ModelFormat.ONNX:
        saved = float_artifact.meta.get("saved_model")
        if not saved or not Path(saved, "saved_model.pb").is_file():
            raise ConversionError(
                f"{float_artifact.path.name} has no float SavedModel from onnx2tf beside it to quantize.",
                hint="Convert the ONNX model with edgepack's onnx2tf step (it keeps the SavedModel).",
            )
        return tf.lite.TFLiteConverter.from_saved_model(str(saved))
    raise ConversionError(
        f"{pre.path.name} is a {pre.format.value} model, which LiteRT cannot quantize (a .tflite cannot be"
        " re-quantized).",
        hint="Give edgepack the Keras, SavedModel or ONNX model it was made from.",
    )


def _configure(converter: Any, options: QuantOptions, calibration: Dataset) -> None:
    tf = require("tensorflow")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if options.mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif options.mode == "int8":
        converter.representative_dataset = representative_dataset(calibration)
        converter._experimental_disable_per_channel = not options.per_channel  # noqa: SLF001 - no public switch
        if not options.exclude:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8}.get(options.io)
        if io_type is not None:
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    if options.select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def _with_float_layers(converter: Any, options: QuantOptions, calibration: Dataset) -> bytes:
    """Full-integer quantization with ``options.exclude`` kept in float (the debugger's denylist)."""
    tf = require("tensorflow")
    if options.io == "uint8":
        raise ConversionError(
            "LiteRT can keep layers in float only with float or int8 model I/O, not uint8.",
            hint="Set quantize.io = 'int8' or 'float', or quantize.max_float_layers = 0.",
        )
    debug_options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(options.exclude), fully_quantize=options.io == "int8"
    )
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset(calibration), debug_options=debug_options
    )
    return debugger.get_nondebug_quantized_model()


def _unsupported(options: QuantOptions) -> list[str]:
    """What LiteRT cannot do of what the profile asked (it is said, not silently dropped)."""
    if options.mode != "int8":
        return []
    notes = []
    if options.method != "minmax":
        notes.append(f"LiteRT calibrates min/max ranges only; quantize.method = {options.method!r} was not applied")
    if options.symmetric_activations:
        notes.append("LiteRT int8 activations are asymmetric by spec; quantize.symmetric_activations was not applied")
    return notes


# --------------------------------------------------------------------------- per-layer metrics


def _signal(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    import numpy as np

    del quantized, scale, zero_point
    return float(np.sum(np.square(np.asarray(float_values, dtype=np.float64))))


def _noise(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    import numpy as np

    dequantized = (np.asarray(quantized, dtype=np.float64) - zero_point) * scale
    return float(np.sum(np.square(np.asarray(float_values, dtype=np.float64) - dequantized)))


def _layer_error(row: dict[str, str]) -> LayerError:
    signal, noise = float(row["signal"]), float(row["noise"])
    mse, scale = float(row["mean_squared_error"]), float(row["scale"])
    if noise == 0:
        sqnr = math.inf
    elif signal == 0 or not math.isfinite(signal / noise):
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return LayerError(
        name=row["tensor_name"],
        op_type=row["op_name"],
        sqnr_db=sqnr,
        mse=mse,
        rmse_over_scale=math.sqrt(mse) / scale if scale > 0 else None,
    )
