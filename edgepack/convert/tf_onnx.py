"""Keras (.keras, .h5), SavedModel and .tflite -> ONNX with tf2onnx.

Inputs are converted with the source's static shapes (a fixed ``input_signature``
or ``shape_override``), so a Keras model with batch ``None`` becomes an ONNX model
with batch 1, not a dynamic dim. The opset is the requested one, capped at the
highest tf2onnx knows (18 for tf2onnx 1.17).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.convert.keras_tflite import load_model, savedmodel_function
from edgepack.deps import require
from edgepack.modelio import describe, read_specs
from edgepack.tools import fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions

DEFAULT_OPSET = 17


def max_opset() -> int:
    """Highest ONNX opset the installed tf2onnx writes."""
    constants = require("tf2onnx.constants")
    return max(constants.OPSET_TO_IR_VERSION)


def _from_keras(src: Artifact, opset: int, path: Path, options: ConvertOptions) -> None:
    tf = require("tensorflow")
    tf2onnx = require("tf2onnx")
    model = load_model(src, trust_code=options.trust_code)  # the fixed signature fixes the shapes
    signature = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in src.inputs]
    try:
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(path))
    except KeyError:
        # tf2onnx's from_keras cannot map Keras 3 Sequential models' tensors; trace the call instead, naming the
        # outputs like the source so validation and manifests keep them.
        names = [spec.name for spec in src.outputs]
        single = len(signature) == 1

        @tf.function(input_signature=signature)
        def call(*args: object) -> dict[str, object]:
            result = model(args[0] if single else list(args), training=False)
            results = result if isinstance(result, list | tuple) else [result]
            return dict(zip(names, results, strict=True))

        reset_names()
        tf2onnx.convert.from_function(call, input_signature=signature, opset=opset, output_path=str(path))


def canonical_names(path: Path) -> None:
    """Renumber tf2onnx's generated ``name__N`` suffixes in graph order.

    tf2onnx numbers generated names with a process-wide counter whose value after the first conversion in a
    process differs from later ones; renumbering by position makes the file depend only on the graph, so that
    bundles are byte-identical whichever conversion in a process made them.
    """
    onnx = require("onnx")
    model = onnx.load(str(path))
    numbers: dict[str, str] = {}

    def rename(name: str) -> str:
        def sub(match: re.Match[str]) -> str:
            return "__" + numbers.setdefault(match.group(1), str(len(numbers) + 1))

        return _SUFFIX.sub(sub, name)

    graph = model.graph
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for item in (*graph.initializer, *graph.value_info, *graph.input, *graph.output):
        item.name = rename(item.name)
    onnx.save(model, str(path))


_SUFFIX = re.compile(r"__(\d+)")


def reset_names() -> None:
    """tf2onnx numbers generated node names with a process-wide counter; reset it so that converting the same
    model twice in one process gives byte-identical files (reproducible bundles)."""
    utils: Any = require("tf2onnx.utils")  # the counter is not in the module's declared attributes
    utils.INTERNAL_NAME = 1


def _from_savedmodel(src: Artifact, opset: int, path: Path, options: ConvertOptions) -> None:
    tf2onnx = require("tf2onnx")
    function, signature, _loaded = savedmodel_function(src)
    tf2onnx.convert.from_function(function, input_signature=signature, opset=opset, output_path=str(path))


def _from_tflite(src: Artifact, opset: int, path: Path, options: ConvertOptions) -> None:
    tf2onnx = require("tf2onnx")
    shapes = {spec.name: list(spec.shape) for spec in src.inputs}
    tf2onnx.convert.from_tflite(str(src.path), opset=opset, shape_override=shapes, output_path=str(path))
    # tf2onnx keeps a .tflite's dynamic batch signature despite shape_override: fix the inputs by name.
    from edgepack.convert.onnx_fix import fix_input_shapes, load_onnx, save_onnx

    model = load_onnx(path)
    if fix_input_shapes(model, src.inputs):
        onnx = require("onnx")
        model = onnx.shape_inference.infer_shapes(model)
        save_onnx(model, path)


_FROM: dict[ModelFormat, Callable[[Artifact, int, Path, Any], None]] = {
    ModelFormat.KERAS: _from_keras,
    ModelFormat.H5: _from_keras,
    ModelFormat.SAVEDMODEL: _from_savedmodel,
    ModelFormat.TFLITE: _from_tflite,
}


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert a Keras, SavedModel or .tflite source to ``workdir/model.onnx``.

    Raises:
        ModelError: the source cannot be loaded.
        ConversionError: tf2onnx fails.
    """
    workdir = fresh_dir(workdir)
    started = time.perf_counter()
    cap = max_opset()
    wanted = options.opset or DEFAULT_OPSET
    opset = min(wanted, cap)
    path = workdir / "model.onnx"
    reset_names()
    run_tool(
        lambda: _FROM[src.format](src, opset, path, options),
        failure=f"tf2onnx could not convert {src.path.name} to ONNX opset {opset}",
        hint="Try another opset (the profile's 'opset'), or convert the model to ONNX yourself and package the .onnx.",
    )
    canonical_names(path)
    extra: dict[str, Any] = {"opset_requested": wanted} if wanted != opset else {}
    meta = tool_meta("tf2onnx", opset=opset, precision="fp32", seconds=round(time.perf_counter() - started, 3), **extra)
    return describe(src, path, ModelFormat.ONNX, read_specs(path, ModelFormat.ONNX), meta=meta)
