"""Keras (.keras, .h5) and SavedModel -> .tflite with TensorFlow's TFLiteConverter.

Keras models are rebuilt on fixed-shape ``Input`` layers and converted with
``from_keras_model``; SavedModels are re-exported with a fixed-shape signature
and converted with ``from_saved_model``. ``from_concrete_functions`` is avoided:
on a Keras 3 model it yields NaN outputs or fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.deps import require
from edgepack.errors import ModelError
from edgepack.modelio import describe, read_specs
from edgepack.tools import first_line, fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions

# Called with the TFLiteConverter after the precision settings, before ``convert()``: the seam
# for quantization (it sets ``optimizations``, ``representative_dataset``, inference types).
ConfigureConverter = Callable[[Any], None]


def load_model(src: Artifact, *, trust_code: bool) -> Any:
    """Load a .keras/.h5 source the safe way (``edgepack.source.load_keras``)."""
    from edgepack.modelio import load_keras

    return load_keras(src.path, src.format, trust_code=trust_code)


def fixed_keras_model(model: Any, inputs: tuple[TensorSpec, ...]) -> Any:
    """The same model called on ``Input`` layers with the source's static shapes (batch included)."""
    keras = require("tf_keras") if type(model).__module__.startswith("tf_keras") else require("keras")
    specs = {spec.name: spec for spec in inputs}
    names = [_keras_name(t, i) for i, t in enumerate(model.inputs)]
    ordered = [specs[name] for name in names] if all(name in specs for name in names) else list(inputs)
    layers = [keras.Input(batch_shape=s.shape, dtype=s.dtype, name=n) for s, n in zip(ordered, names, strict=True)]
    outputs = model(layers[0] if len(layers) == 1 else layers)
    # A fixed name: Keras numbers auto-named models per process, which would leak into the .tflite's tensor names
    # and make two conversions in one process differ byte for byte.
    return keras.Model(layers[0] if len(layers) == 1 else layers, outputs, name="edgepack_fixed_shape")


def _keras_name(tensor: Any, index: int) -> str:
    return str(getattr(tensor, "name", None) or f"input_{index}").split(":")[0]


def savedmodel_function(src: Artifact) -> tuple[Any, list[Any], Any]:
    """A ``tf.function`` over the SavedModel's serving signature with the source's static shapes.

    Returns the function, its input signature (positional, in ``src.inputs`` order) and the
    loaded SavedModel (keep it alive: it owns the variables).
    """
    tf = require("tensorflow")
    try:
        loaded = tf.saved_model.load(str(src.path))
        serving = loaded.signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"{src.path} is not a loadable SavedModel with a serving_default signature ({first_line(exc)}).",
            hint="Re-export it with model.export() or tf.saved_model.save(..., signatures=...).",
        ) from exc
    names = [spec.name for spec in src.inputs]
    signature = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in src.inputs]

    def serve(*args: Any) -> Any:
        return serving(**dict(zip(names, args, strict=True)))

    return tf.function(serve, input_signature=signature), signature, loaded


def fixed_savedmodel(src: Artifact, folder: Path) -> Path:
    tf = require("tensorflow")
    function, _, loaded = savedmodel_function(src)
    module = tf.Module()
    module.serve, module.loaded = function, loaded
    tf.saved_model.save(module, str(folder), signatures={"serving_default": function.get_concrete_function()})
    return folder


def _converter(src: Artifact, workdir: Path, options: ConvertOptions) -> Any:
    tf = require("tensorflow")
    if src.format is ModelFormat.SAVEDMODEL:
        return tf.lite.TFLiteConverter.from_saved_model(str(fixed_savedmodel(src, workdir / "fixed_savedmodel")))
    model = fixed_keras_model(load_model(src, trust_code=options.trust_code), src.inputs)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _configure(converter: Any, options: ConvertOptions) -> None:
    tf = require("tensorflow")
    if options.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    if options.select_tf_ops:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]


def convert(
    src: Artifact,
    workdir: Path,
    options: ConvertOptions,
    *,
    configure: ConfigureConverter | None = None,
) -> Artifact:
    """Convert a Keras or SavedModel source to ``workdir/model.tflite``.

    Args:
        src: a KERAS, H5 or SAVEDMODEL artifact with static input shapes.
        workdir: this step's folder.
        options: precision ("fp32"/"fp16"), ``select_tf_ops``, ``trust_code``.
        configure: quantization seam, called with the converter after the precision settings.

    Raises:
        ModelError: the source cannot be loaded.
        ConversionError: TFLiteConverter fails.
    """
    workdir = fresh_dir(workdir)
    started = time.perf_counter()

    def build() -> bytes:
        converter = _converter(src, workdir, options)
        _configure(converter, options)
        if configure is not None:
            configure(converter)
        return converter.convert()

    flatbuffer = run_tool(
        build,
        failure=f"TFLiteConverter could not convert {src.path.name}",
        hint="If it names unsupported TensorFlow ops, set select_tf_ops = true in the profile's "
        "[step_options.convert]; otherwise re-export the model.",
    )
    path = workdir / "model.tflite"
    path.write_bytes(flatbuffer)
    meta = tool_meta(
        "tflite-converter",
        "tensorflow",
        precision=options.precision,
        select_tf_ops=options.select_tf_ops,
        seconds=round(time.perf_counter() - started, 3),
    )
    return describe(src, path, ModelFormat.TFLITE, read_specs(path, ModelFormat.TFLITE), meta=meta)
