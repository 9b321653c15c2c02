"""Reading models' I/O: Keras loading in safe mode, the tensors a model file declares, produced-model specs.

Nothing here runs code from a model file: Keras models load in safe mode and a
``Lambda`` layer (Python code in the file) is refused unless the user opts in
with ``trust_code=True`` (``--trust-model-code``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec, guess_layout
from edgepack.deps import require
from edgepack.errors import ConversionError, ModelError

# --------------------------------------------------------------------------- safety


def refuse_code(config: Any, path: Path, trust_code: bool) -> None:
    """Refuse a Keras config that holds Python code (Lambda layers) unless trusted."""
    if trust_code:
        return
    found = sorted(set(_lambda_layers(config)))
    if found:
        raise ModelError(
            f"{path} holds Python code in Lambda layer(s) {', '.join(found)}; edgepack does not run code from "
            "model files.",
            hint="Rebuild the model without Lambda layers, or pass --trust-model-code if you trust its author.",
        )


def _lambda_layers(node: Any) -> list[str]:
    # An explicit stack, not recursion: a damaged or hostile config may nest deeper than Python's stack.
    hits, stack = [], [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                config = node.get("config")
                hits.append(str(config.get("name", "lambda")) if isinstance(config, dict) else "lambda")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return hits


def _keras_config(path: Path, fmt: ModelFormat) -> Any:
    try:
        if fmt is ModelFormat.KERAS:
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("config.json"))
        h5py = require("h5py")
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
        if raw is None:
            raise ModelError(
                f"{path} is an HDF5 file without a Keras model config (a weights-only file?).",
                hint="Save the whole model with model.save('model.h5') or, better, model.save('model.keras').",
            )
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise ModelError(
            f"{path} is damaged: cannot read its Keras config ({exc}).", hint="Re-export the model."
        ) from exc


def load_keras(path: str | Path, fmt: ModelFormat, *, trust_code: bool = False) -> Any:
    """Load a .keras or .h5 model in safe mode; Keras 2 .h5 files fall back to tf_keras.

    Raises:
        ModelError: the file is damaged, or holds code and ``trust_code`` is False.
    """
    path = Path(path)
    refuse_code(_keras_config(path, fmt), path, trust_code)
    _tensorflow()
    keras = require("keras")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as exc:  # noqa: BLE001
        if fmt is not ModelFormat.H5:
            raise ModelError(f"{path} cannot be loaded by Keras ({_first_line(exc)}).", hint="Re-export it.") from exc
        first = exc
    tf_keras = require("tf_keras")
    try:
        return tf_keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"{path} cannot be loaded by Keras 3 ({_first_line(first)}) nor tf_keras ({_first_line(exc)}).",
            hint="Re-save it as .keras with the Keras version that trained it.",
        ) from exc


def _tensorflow() -> Any:
    """Import TensorFlow with its C++ start-up log lines kept off the terminal.

    TensorFlow 2.21 writes absl log lines to fd 2 on import whatever ``TF_CPP_MIN_LOG_LEVEL`` says,
    which would break the CLI's one-line errors; later imports are no-ops.
    """
    from edgepack.tools import quiet

    with quiet():
        return require("tensorflow")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# --------------------------------------------------------------------------- I/O specs


def read_io(
    path: str | Path, fmt: ModelFormat, *, trust_code: bool = False
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a model, as written in the file (dynamic dims are None)."""
    reader = _IO_READERS.get(fmt)
    if reader is None:
        raise ModelError(f"edgepack cannot read {fmt.value} models as input.")
    return reader(Path(path), fmt, trust_code)


def _io_onnx(path: Path, fmt: ModelFormat, trust_code: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a valid ONNX model ({_first_line(exc)}).", hint="Re-export it.") from exc
    graph = model.graph
    if not graph.node or not graph.output:
        raise ModelError(f"{path} is not a valid ONNX model (empty graph).", hint="Re-export it.")
    if (where := _binary_name(graph)) is not None:
        raise ModelError(
            f"{path} is damaged: {where} is not valid UTF-8 text (protobuf read it as bytes).", hint="Re-export it."
        )
    initializers = {init.name for init in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except Exception:  # noqa: BLE001
            dtype = "unknown"
        return TensorSpec(value.name, shape, dtype, guess_layout(shape))

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def _binary_name(graph: Any) -> str | None:
    """Where a name or operator type in an ONNX graph (or its subgraphs) is not valid UTF-8, else None.

    Protobuf hands such proto2 strings back as ``bytes``; a bit flip in a name does this, and every
    later step (and any runtime) would choke on it.
    """
    named = [("input", v.name) for v in graph.input] + [("output", v.name) for v in graph.output]
    named += [("initializer", t.name) for t in graph.initializer]
    for node in graph.node:
        named += [("operator type", node.op_type), ("operator domain", node.domain)]
        named += [("node input", n) for n in node.input] + [("node output", n) for n in node.output]
    for what, text in named:
        if not isinstance(text, str):
            return f"an ONNX {what} name {text[:40]!r}"
    subgraphs = [a.g for n in graph.node for a in n.attribute if a.HasField("g")]
    subgraphs += [g for n in graph.node for a in n.attribute for g in a.graphs]
    return next((w for g in subgraphs if (w := _binary_name(g)) is not None), None)


def _io_tflite(path: Path, fmt: ModelFormat, trust_code: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    litert = require("ai_edge_litert.interpreter")
    try:
        interp = litert.Interpreter(model_path=str(path))
        details = interp.get_input_details(), interp.get_output_details()  # names may not decode
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a valid .tflite model ({_first_line(exc)}).", hint="Re-export it.") from exc

    def spec(detail: Mapping[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature")
        dims = signature if signature is not None and len(signature) else detail["shape"]
        shape = tuple(int(d) if d > 0 else None for d in dims)
        return TensorSpec(detail["name"], shape, detail["dtype"].__name__, guess_layout(shape))

    return [spec(d) for d in details[0]], [spec(d) for d in details[1]]


def _io_keras(path: Path, fmt: ModelFormat, trust_code: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    model = load_keras(path, fmt, trust_code=trust_code)

    def spec(tensor: Any, fallback: str) -> TensorSpec:
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        history = getattr(tensor, "_keras_history", None)  # the producing layer's name, e.g. "logits"
        layer = getattr(history[0], "name", None) if history else None
        name = layer or getattr(tensor, "name", None) or fallback
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        return TensorSpec(name.split(":")[0], shape, dtype, guess_layout(shape))

    inputs = [spec(t, f"input_{i}") for i, t in enumerate(model.inputs)]
    names = list(getattr(model, "output_names", None) or [])
    outputs = [spec(t, names[i] if i < len(names) else f"output_{i}") for i, t in enumerate(model.outputs)]
    return inputs, outputs


def _io_savedmodel(path: Path, fmt: ModelFormat, trust_code: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    tf = _tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise ModelError(f"{path} has no 'serving_default' signature.", hint="Export with model.export().") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a loadable SavedModel ({_first_line(exc)}).", hint="Re-export it.") from exc

    def spec(name: str, tensor: Any) -> TensorSpec:
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        return TensorSpec(name, shape, tensor.dtype.name, guess_layout(shape))

    _, kwargs = fn.structured_input_signature
    inputs = [spec(n, t) for n, t in sorted(kwargs.items())]
    outputs = [spec(n, t) for n, t in sorted(fn.structured_outputs.items())]
    return inputs, outputs


_IO_READERS = {
    ModelFormat.ONNX: _io_onnx,
    ModelFormat.TFLITE: _io_tflite,
    ModelFormat.KERAS: _io_keras,
    ModelFormat.H5: _io_keras,
    ModelFormat.SAVEDMODEL: _io_savedmodel,
}



# --------------------------------------------------------------------------- produced models


def _bare(name: str) -> str:
    """A tensor name without the decorations converters add (``serving_default_x:0`` -> ``x``)."""
    name = name.split(":")[0]
    for prefix in ("serving_default_",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def tflite_signature_names(path: Path) -> dict[str, str]:
    """Tensor name -> signature name of a .tflite with one signature (its I/O keys: the source's names).

    The converter keeps the signature's names (``contour``, ``onset``) but may write the output tensors
    (``StatefulPartitionedCall:0``...) in another order; this is what pairs them again.
    """
    litert = require("ai_edge_litert.interpreter")
    try:
        interp = litert.Interpreter(model_path=str(path))
        signatures = interp._get_full_signature_list()  # noqa: SLF001 - the only API with tensor indices
        tensors = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    except Exception:  # noqa: BLE001 - no signature information: pair by name or position as before
        return {}
    if len(signatures) != 1:
        return {}
    (signature,) = signatures.values()
    io = {**signature.get("inputs", {}), **signature.get("outputs", {})}
    return {tensors[index]: key for key, index in io.items() if index in tensors}


def _pair(
    source: Sequence[TensorSpec], actual: Sequence[TensorSpec], aliases: Mapping[str, str] | None = None
) -> list[TensorSpec | None]:
    """For each actual tensor, the source tensor it stands for: by name (or alias), else by position."""
    by_name = {spec.name: spec for spec in source}
    by_bare = {_bare(spec.name): spec for spec in source}
    aliases = aliases or {}
    paired = [
        by_name.get(a.name) or by_name.get(aliases.get(a.name, "")) or by_bare.get(_bare(a.name)) for a in actual
    ]
    if any(p is None for p in paired) and len(source) == len(actual):
        return list(source)
    return paired


def describe(
    src: Artifact,
    path: Path,
    fmt: ModelFormat,
    io_specs: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
    *,
    meta: Mapping[str, Any],
    files: tuple[Path, ...] = (),
) -> Artifact:
    """The Artifact of a produced model, checked to have the source's static input shapes.

    Specs carry the produced file's tensor names (what its runtime is fed by) in its order, the
    source's input shapes and layouts, and ``meta["source_names"]`` maps each name to the source's.

    Raises:
        ConversionError: an input is missing, or its shape in the produced file is not the source's.
    """
    actual_in, actual_out = io_specs
    aliases = tflite_signature_names(path) if fmt is ModelFormat.TFLITE else {}
    inputs, names = [], {}
    for actual, origin in zip(actual_in, _pair(src.inputs, actual_in, aliases), strict=True):
        if origin is None or tuple(actual.shape) != tuple(origin.shape):
            want = [tuple(s.shape) for s in src.inputs]
            raise ConversionError(
                f"{meta.get('tool', 'the converter')} produced input {actual.name} of shape "
                f"{list(actual.shape)}, but the source's inputs are {want}.",
                hint="Give static shapes with --input-shape NAME=1,... and retry; report it if it persists.",
            )
        inputs.append(TensorSpec(actual.name, origin.shape, actual.dtype, origin.layout))
        names[actual.name] = origin.name
    outputs = []
    for actual, origin in zip(actual_out, _pair(src.outputs, actual_out, aliases), strict=True):
        shape = actual.shape
        if origin is not None and len(origin.shape) == len(shape):
            shape = tuple(a if a is not None else o for a, o in zip(shape, origin.shape, strict=True))
        outputs.append(actual.with_shape(shape))
        if origin is not None:
            names[actual.name] = origin.name
    full_meta = {**meta, "source_format": src.format.value, "source_sha256": src.sha256, "source_names": names}
    return Artifact.from_file(path, fmt, tuple(inputs), tuple(outputs), files=files, meta=full_meta)


def read_specs(path: Path, fmt: ModelFormat) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as declared in a produced .onnx or .tflite file."""
    return read_io(path, fmt)
