"""Keras (.keras, .h5), SavedModel and .tflite -> ONNX with tf2onnx.

Inputs are converted with the source's static shapes (a fixed ``input_signature``
or ``shape_override``), so a Keras model with batch ``None`` becomes an ONNX model
with batch 1, not a dynamic dim. The opset is the requested one, capped at the
highest tf2onnx knows (18 for tf2onnx 1.17).

Functions (a SavedModel's serving signature, a traced Keras call) are converted from their concrete
function with only the signature's arguments as graph inputs: tf2onnx's ``from_function`` also takes
captured non-variable tensors (e.g. a precomputed CQT kernel) as inputs. When the ONNX graph's inputs
still are not the source's, a SavedModel takes the SavedModel -> TFLite -> ONNX route instead.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.convert.keras_tflite import load_model, savedmodel_function
from edgepack.deps import require
from edgepack.errors import ConversionError
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
        from_function(call, signature, opset, path)


def from_function(function: Any, signature: list[Any], opset: int, path: Path) -> None:
    """Convert ``function`` traced on ``signature`` to ONNX, its graph inputs being the signature's arguments.

    tf2onnx's ``from_function`` makes every non-resource tensor of the concrete function an input, captured
    constants included; here only the arguments are inputs and freezing turns the captures into constants.
    Outputs are named like the function's structured outputs (a signature's output keys).
    """
    tf = require("tensorflow")
    tf2onnx = require("tf2onnx")
    loader: Any = require("tf2onnx.tf_loader")
    concrete = function.get_concrete_function(*signature)
    inputs = [t.name for t in concrete.inputs[: len(signature)]]  # the arguments come first, the captures after
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    rename = tf2onnx.convert.tensor_names_from_structed(concrete, inputs, outputs)
    with tf.device("/cpu:0"):
        graph_def = loader.from_function(concrete, inputs, outputs)
    tf2onnx.convert.from_graph_def(
        graph_def,
        name=concrete.name,
        input_names=inputs,
        output_names=outputs,
        opset=opset,
        tensors_to_rename=rename,
        output_path=str(path),
    )


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
    function, signature, _loaded = savedmodel_function(src)
    from_function(function, signature, opset, path)


def _via_tflite(src: Artifact, opset: int, path: Path, options: ConvertOptions) -> None:
    """SavedModel -> .tflite (TFLiteConverter, fp32) -> ONNX (tf2onnx ``from_tflite``), I/O named like the source.

    The .tflite's signature keys (the SavedModel's input and output names) rename the ONNX graph's inputs and
    outputs, so validation pairs outputs by name even where the .tflite wrote them in another order.
    """
    import dataclasses

    from edgepack.convert import keras_tflite
    from edgepack.modelio import tflite_signature_names

    tflite = keras_tflite.convert(src, path.parent / "via_tflite", dataclasses.replace(options, precision="fp32"))
    _from_tflite(tflite, opset, path, options)
    _rename_io(path, tflite_signature_names(Path(tflite.path)))


def _rename_io(path: Path, names: dict[str, str]) -> None:
    """Rename graph inputs and outputs (and every use of them) by ``names``; others keep theirs."""
    onnx = require("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    renames = {
        t.name: names[t.name]
        for t in (*graph.input, *graph.output)
        if names.get(t.name) and names[t.name] != t.name and names[t.name] not in taken
    }
    if not renames:
        return
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for item in (*graph.value_info, *graph.input, *graph.output):
        item.name = renames.get(item.name, item.name)
    onnx.save(model, str(path))


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
        ConversionError: tf2onnx fails, or its graph inputs are not the source's, on every route (a SavedModel
            also tries SavedModel -> TFLite -> ONNX; ``meta["route"]`` names the route that worked).
    """
    workdir = fresh_dir(workdir)
    started = time.perf_counter()
    cap = max_opset()
    wanted = options.opset or DEFAULT_OPSET
    opset = min(wanted, cap)
    path = workdir / "model.onnx"
    routes = [("tf2onnx", _FROM[src.format])]
    if src.format is ModelFormat.SAVEDMODEL:
        routes.append(("SavedModel -> TFLite -> tf2onnx", _via_tflite))
    problems: list[ConversionError] = []
    for route, action in routes:
        reset_names()
        try:
            run_tool(
                functools.partial(action, src, opset, path, options),
                failure=f"{route} could not convert {src.path.name} to ONNX opset {opset}",
                hint=_HINT,
            )
            _check_inputs(src, path, route)
        except ConversionError as exc:
            problems.append(exc)
            continue
        canonical_names(path)
        extra: dict[str, Any] = {"opset_requested": wanted} if wanted != opset else {}
        if problems:
            extra["route"] = route
            extra["route_notes"] = [p.message for p in problems]
        seconds = round(time.perf_counter() - started, 3)
        meta = tool_meta("tf2onnx", opset=opset, precision="fp32", seconds=seconds, **extra)
        return describe(src, path, ModelFormat.ONNX, read_specs(path, ModelFormat.ONNX), meta=meta)
    if len(problems) == 1:
        raise problems[0]
    raise ConversionError(
        f"every route to ONNX failed for {src.path.name}: " + "; ".join(p.message.rstrip(".") for p in problems) + ".",
        hint="Package it for a LiteRT target instead, or convert the model to ONNX yourself and package the .onnx.",
    )


_HINT = "Try another opset (the profile's 'opset'), or convert the model to ONNX yourself and package the .onnx."


def _check_inputs(src: Artifact, path: Path, route: str) -> None:
    """Raise when the ONNX graph's inputs are not the source's (e.g. a captured constant became an input)."""
    actual, _ = read_specs(path, ModelFormat.ONNX)
    wanted = {_plain(spec.name) for spec in src.inputs}
    named_or_shaped = all(
        _plain(have.name) in wanted or tuple(have.shape) == tuple(spec.shape)
        for have, spec in zip(actual, src.inputs, strict=False)
    )
    if len(actual) == len(src.inputs) and named_or_shaped:
        return
    got = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in actual)
    want = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in src.inputs)
    raise ConversionError(
        f"{route} gave {src.path.name} the graph input(s) {got} instead of the signature's {want}.",
        hint=_HINT,
    )


def _plain(name: str) -> str:
    """A tensor name without the decorations converters add (``serving_default_x:0`` -> ``x``)."""
    return name.split(":")[0].removeprefix("serving_default_")
