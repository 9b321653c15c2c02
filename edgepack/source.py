"""Reading the user's model: format detection from content, I/O specs, fixed shapes, safe loading.

Nothing here runs code from a model file: Keras models load in safe mode and
a ``Lambda`` layer (Python code in the file) is refused unless the user opts
in with ``trust_code=True`` (``--trust-model-code``). Pickles (PyTorch
checkpoints, ``.pkl``) are refused outright.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec, guess_layout
from edgepack.deps import require
from edgepack.errors import ModelError, UsageError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ONNX_FIRST_BYTES = {0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42}
_SHAPE_FLAG = "--input-shape NAME=1,224,224,3"

Shape = tuple[int | None, ...]


# --------------------------------------------------------------------------- detection


def detect_format(path: str | Path) -> ModelFormat:
    """Detect a model's format from its content (the extension is only a tie-breaker).

    Raises:
        ModelError: the path is missing, empty, unsafe (a pickle) or not a model edgepack reads.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise ModelError(f"cannot read {path} ({exc.strerror}).", hint="Check the path to the model.") from exc
    if not exists:
        raise ModelError(f"{path} does not exist.", hint="Check the path to the model.")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return ModelFormat.SAVEDMODEL
        raise ModelError(
            f"{path} is a folder without saved_model.pb.",
            hint="Give a SavedModel folder, or a .keras, .h5, .onnx or .tflite file.",
        )
    if not path.is_file():  # a FIFO, socket or device: reading it could block or never end
        raise ModelError(f"{path} is not a regular file.", hint="Give the model file itself.")
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelError(f"cannot read {path} ({exc.strerror}).") from exc
    if not head:
        raise ModelError(f"{path} is empty.", hint="Re-export the model.")
    if head.startswith(_HDF5_MAGIC):
        return ModelFormat.H5
    if head[4:8] == b"TFL3":
        return ModelFormat.TFLITE
    if head.startswith(b"PK\x03\x04"):
        return _detect_zip(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelError(
            f"{path} is a Python pickle; edgepack never loads pickles (they can run code).",
            hint="Export the model to ONNX, .keras or SavedModel first.",
        )
    if head.lstrip().startswith(b"<?xml") or head.lstrip().startswith(b"<net"):
        raise ModelError(
            f"{path} looks like an OpenVINO IR; edgepack takes .keras, .h5, SavedModel, .onnx or .tflite as input.",
            hint="Package the original model (ONNX or Keras) instead.",
        )
    if head[0] in _ONNX_FIRST_BYTES:
        return ModelFormat.ONNX
    raise ModelError(
        f"{path} is not a model edgepack recognises (not .keras, .h5, SavedModel, .onnx or .tflite content).",
        hint="Check that the file is complete and of a supported format.",
    )


def _detect_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path} is a damaged zip archive ({exc}).", hint="Re-export the .keras model.") from exc
    if any(n.endswith("data.pkl") for n in names):
        raise ModelError(
            f"{path} is a PyTorch checkpoint (pickle); edgepack never loads pickles.",
            hint="Export it to ONNX with torch.onnx.export and package the .onnx.",
        )
    if "config.json" in names:
        return ModelFormat.KERAS
    raise ModelError(f"{path} is a zip archive but not a Keras 3 model (no config.json).")


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
    from edgepack.convert._common import quiet

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


# --------------------------------------------------------------------------- shapes


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape name=1,224,224,3`` flags (a bare ``1,224,224,3`` for a single input)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values or []:
        name, sep, dims = value.rpartition("=")
        key = name.strip() if sep else ""
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape {value!r} is not a shape.", hint=f"Write it as {_SHAPE_FLAG}.")
        shapes[key] = shape
    return shapes


def fix_shapes(
    inputs: list[TensorSpec], given: Mapping[str, tuple[int, ...]], *, batch: int | None, path: Path
) -> tuple[list[TensorSpec], dict[str, str]]:
    """Fix every dynamic input dim from the user's shapes, then the profile's batch size.

    Returns the static specs and, per input, where its shape came from.

    Raises:
        ModelError: a given shape does not fit, or a dim stays dynamic.
    """
    given = dict(given)
    if "" in given:
        if len(inputs) != 1:
            raise UsageError(
                f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); name each shape.",
                hint=f"Write {_SHAPE_FLAG} for each input.",
            )
        given[inputs[0].name] = given.pop("")
    unknown = sorted(set(given) - {i.name for i in inputs})
    if unknown:
        raise UsageError(
            f"--input-shape names {', '.join(unknown)}, which the model does not have.",
            hint=f"Its inputs are: {', '.join(i.name for i in inputs)}.",
        )
    fixed, origin, still_dynamic = [], {}, []
    for spec in inputs:
        if spec.name in given:
            shape = given[spec.name]
            if len(shape) != len(spec.shape) or any(m is not None and m != g for m, g in zip(spec.shape, shape)):
                raise ModelError(
                    f"--input-shape {spec.name}={','.join(map(str, shape))} does not fit the model's input "
                    f"{spec.name} of shape {_fmt(spec.shape)}.",
                    hint="Keep the model's fixed dims and its rank.",
                )
            fixed.append(spec.with_shape(shape))
            origin[spec.name] = "--input-shape"
            continue
        shape = list(spec.shape)
        source = "model"
        if shape and shape[0] is None and batch is not None:
            shape[0] = batch
            source = f"model, batch {batch} from the profile"
        if any(d is None for d in shape):
            still_dynamic.append(f"{spec.name} {_fmt(spec.shape)}")
        fixed.append(spec.with_shape(tuple(shape)))
        origin[spec.name] = source
    if still_dynamic:
        raise ModelError(
            f"{path.name} has dynamic input dims that edgepack will not guess: {'; '.join(still_dynamic)}.",
            hint=f"Fix them with {_SHAPE_FLAG} (one flag per input).",
        )
    return fixed, origin


def _is_numpy_dtype(name: str) -> bool:
    import numpy as np

    try:
        return np.dtype(name).kind in "biuf"
    except TypeError:
        return False


def _fmt(shape: Shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _fix_output_batch(spec: TensorSpec, batch_size: int | None) -> TensorSpec:
    if spec.shape and spec.shape[0] is None and batch_size is not None:
        return spec.with_shape((batch_size, *spec.shape[1:]))
    return spec


# --------------------------------------------------------------------------- entry point


def open_source(
    path: str | Path,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = 1,
    trust_code: bool = False,
) -> Artifact:
    """Open the user's model as the pipeline's first artifact, with every input shape static."""
    from edgepack import memory

    path = Path(path)
    fmt = detect_format(path)
    needs = {"the model loaded and converted": memory.MODEL_COPIES * memory.model_bytes(path)}
    memory.check_fits(path, needs)  # before a framework reads the whole file
    inputs, outputs = read_io(path, fmt, trust_code=trust_code)
    if not inputs:
        raise ModelError(f"{path} has no inputs.", hint="Re-export the model with its input layer.")
    untyped = [i.name for i in inputs if not _is_numpy_dtype(i.dtype)]
    if untyped:
        raise ModelError(
            f"{path}: input(s) {', '.join(map(repr, untyped))} have no numeric tensor type (a damaged file, "
            "or a sequence/map input).",
            hint="Re-export the model with plain tensor inputs.",
        )
    fixed, origin = fix_shapes(inputs, input_shapes or {}, batch=batch, path=path)
    needs["validation inputs"] = memory.VALIDATION_SAMPLES * memory.tensor_bytes(fixed)
    if fmt is ModelFormat.TFLITE:  # its tensor shapes are all in the file: a damaged one can claim gigabytes
        from edgepack.macs import estimate_tflite

        needs["its activations"] = estimate_tflite(path).activation_bytes
    memory.check_fits(path, needs)
    batch_size = fixed[0].shape[0] if fixed[0].shape else None
    outputs = [_fix_output_batch(o, batch_size) for o in outputs]
    return Artifact.from_file(
        path,
        fmt,
        tuple(fixed),
        tuple(outputs),
        meta={"shape_origin": origin, "trust_code": trust_code, "declared_inputs": [i.to_dict() for i in inputs]},
    )
