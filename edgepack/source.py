"""Opening the user's model: format detection from content, fixed shapes, the source Artifact.

Nothing here runs code from a model file: Keras models load in safe mode and
a ``Lambda`` layer (Python code in the file) is refused unless the user opts
in with ``trust_code=True`` (``--trust-model-code``). A PyTorch ``.pt2``
(torch.export) runs no code when read; a TorchScript or pickled ``.pt``/``.pth``
does, and is refused without that flag. Other pickles (``.pkl``) are refused outright.
"""

from __future__ import annotations

import shlex
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgepack import shapes
from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.errors import ModelError, UsageError
from edgepack.modelio import read_io
from edgepack.shapes import InputShape

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ONNX_FIRST_BYTES = {0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42}
_SHAPE_FLAG = "--input-shape NAME=1,224,224,3"
_TORCH_SUFFIXES = (".pt", ".pth")

Shape = tuple[int | None, ...]


# --------------------------------------------------------------------------- detection


def detect_format(path: str | Path, *, trust_code: bool = False) -> ModelFormat:
    """Detect a model's format from its content (the extension is only a tie-breaker).

    A ``.pt2`` (torch.export) is :attr:`ModelFormat.TORCH`; so is a TorchScript or ``torch.save`` file
    (``.pt``/``.pth``) when ``trust_code`` is True: loading one runs code from it.

    Raises:
        ModelError: the path is missing, empty, unsafe (a pickle, TorchScript without ``trust_code``) or not a
            model edgepack reads.
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
        return _detect_zip(path, trust_code)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if path.suffix.lower() in _TORCH_SUFFIXES:  # a legacy torch.save file
            return _trusted_torch(path, "pickle", trust_code)
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
        f"{path} is not a model edgepack recognises "
        "(not .keras, .h5, SavedModel, .onnx, .tflite or PyTorch .pt2 content).",
        hint="Check that the file is complete and of a supported format.",
    )


def _detect_zip(path: Path, trust_code: bool = False) -> ModelFormat:
    from edgepack.torchio import EXPORTED, zip_kind

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path} is a damaged zip archive ({exc}).", hint="Re-export the .keras model.") from exc
    kind = zip_kind(names)
    if kind == EXPORTED:
        return ModelFormat.TORCH
    if kind is not None:
        return _trusted_torch(path, kind, trust_code)
    if "config.json" in names:
        return ModelFormat.KERAS
    raise ModelError(f"{path} is a zip archive but not a Keras 3 model (no config.json).")


def _trusted_torch(path: Path, kind: str, trust_code: bool) -> ModelFormat:
    """A TorchScript or pickled PyTorch file: TORCH when trusted, else refused naming the flag."""
    from edgepack.torchio import refuse_untrusted

    if not trust_code:
        raise refuse_untrusted(path, kind)
    return ModelFormat.TORCH


# --------------------------------------------------------------------------- shapes

ShapeValue = tuple[int, ...] | InputShape
GivenShapes = Mapping[str, ShapeValue | Sequence[Any]] | Sequence[InputShape]


def parse_input_shapes(values: list[str] | None) -> dict[str, ShapeValue]:
    """Parse ``--input-shape`` flags: ``name=1,224,224,3``, a bare ``1x224x224x3`` for a single input, and
    ranges such as ``name=1,3,48,[32:320:1024]`` (min:opt:max).

    Returns:
        Per input name (``""`` for a bare shape) a tuple of ints for a static shape (as before ranges
        existed) or an :class:`edgepack.shapes.InputShape` when a dim is a range.

    Raises:
        UsageError: a value is not a shape.
    """
    shapes: dict[str, ShapeValue] = {}
    for value in values or []:
        shape = InputShape.parse(value)
        shapes[shape.name] = shape if shape.is_dynamic else shape.static()
    return shapes


def static_shapes(given: GivenShapes | None) -> dict[str, tuple[int, ...]]:
    """Each given shape as one static shape (a range's opt shape), for code that runs a single shape.

    Raises:
        UsageError: a value is not a shape.
    """
    return {name: shape.static() for name, shape in _given(given).items()}


def _given(given: GivenShapes | None) -> dict[str, InputShape]:
    if not given:
        return {}
    if isinstance(given, Mapping):
        return {str(name): InputShape.from_value(str(name), value) for name, value in given.items()}
    return {shape.name: shape for shape in given}


def resolve_shapes(
    inputs: Sequence[TensorSpec], given: GivenShapes | None, *, batch: int | None, path: Path
) -> tuple[list[TensorSpec], dict[str, str], tuple[InputShape, ...]]:
    """Fix every dynamic input dim from the user's shapes (their opt shape for a range), then the profile's batch.

    Returns:
        The static specs, per input where its shape came from, and the inputs given with a range.

    Raises:
        UsageError: a shape names no input, or a bare shape is given for a model with several inputs.
        ModelError: a given shape does not fit, or a dim stays dynamic.
    """
    wanted = _given(given)
    if "" in wanted:
        if len(inputs) != 1:
            raise UsageError(
                f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); name each shape.",
                hint=f"Write {_SHAPE_FLAG} for each input.",
            )
        wanted[inputs[0].name] = wanted.pop("").named(inputs[0].name)
    unknown = sorted(set(wanted) - {i.name for i in inputs})
    if unknown:
        raise UsageError(
            f"--input-shape names {', '.join(unknown)}, which the model does not have.",
            hint=f"Its inputs are: {', '.join(i.name for i in inputs)}.",
        )
    fixed, origin, ranges = [], {}, []
    for spec in inputs:
        if spec.name in wanted:
            shape = wanted[spec.name]
            _check_fits(spec, shape)
            fixed.append(spec.with_shape(shape.static()))
            origin[spec.name] = "--input-shape, range" if shape.is_dynamic else "--input-shape"
            ranges += [shape] if shape.is_dynamic else []
            continue
        dims = list(spec.shape)
        origin[spec.name] = "model"
        if dims and dims[0] is None and batch is not None:
            dims[0] = batch
            origin[spec.name] = f"model, batch {batch} from the profile"
        fixed.append(spec.with_shape(tuple(dims)))
    if any(not spec.is_static for spec in fixed):
        raise _missing_shapes(inputs, fixed, path)
    return fixed, origin, tuple(ranges)


def fix_shapes(
    inputs: list[TensorSpec], given: GivenShapes, *, batch: int | None, path: Path
) -> tuple[list[TensorSpec], dict[str, str]]:
    """:func:`resolve_shapes` without the ranges: the static specs and where each shape came from."""
    fixed, origin, _ = resolve_shapes(inputs, given, batch=batch, path=path)
    return fixed, origin


def _check_fits(spec: TensorSpec, shape: InputShape) -> None:
    fits = len(shape.dims) == len(spec.shape) and all(
        m is None or g == m for m, g in zip(spec.shape, shape.dims)
    )
    if not fits:
        raise ModelError(
            f"--input-shape {spec.name}={shape.flag().rpartition('=')[2]} does not fit the model's input "
            f"{spec.name} of shape {_fmt(spec.shape)}.",
            hint="Keep the model's fixed dims and its rank; only its dynamic (?) dims take a size or a range.",
        )


def _missing_shapes(inputs: Sequence[TensorSpec], fixed: Sequence[TensorSpec], path: Path) -> ModelError:
    """The error for dims nobody fixed: every input with its known dims, and flags built from the real names."""
    known = "; ".join(shapes.describe(spec.name, spec.shape) for spec in inputs)
    needy = [(spec, done) for spec, done in zip(inputs, fixed) if not done.is_static]
    examples = " ".join(shapes.fill_example(spec.name, done.shape) for spec, done in needy)
    spec, done = needy[0]
    ranged = [
        str(shapes.DimRange(32, 320, 1024)) if d is None and i > 0 else str(d if d is not None else 1)
        for i, d in enumerate(done.shape)
    ]
    hint = f"Give each a shape, e.g. {examples}"
    if any(d is None for d in done.shape[1:]):
        hint += (
            f" (or, for ONNX Runtime, OpenVINO and TensorRT targets, a range (min:opt:max) that stays dynamic: "
            f"{shapes.FLAG} {shlex.quote(spec.name + '=' + ','.join(ranged))})"
        )
    return ModelError(
        f"{path.name} has dynamic input dims (?) that edgepack will not guess; its inputs are {known}.",
        hint=hint + ".",
    )


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


def _torch_io(
    path: Path, given: GivenShapes | None, trust_code: bool
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A PyTorch file's I/O; a module that declares no input shapes (TorchScript, a pickle) takes the given
    ones, and its outputs come from running it at them."""
    from edgepack import torchio

    inputs, outputs = torchio.read_io(path, trust_code=trust_code)
    if outputs:
        return inputs, outputs
    wanted = _given(given)
    if "" in wanted and len(inputs) == 1:
        wanted[inputs[0].name] = wanted.pop("").named(inputs[0].name)
    missing = [spec.name for spec in inputs if spec.name not in wanted]
    if missing:
        raise ModelError(
            f"{path.name} is a PyTorch module that does not declare its input shapes ({', '.join(missing)}).",
            hint="Give each with --input-shape NAME=1,3,224,224 (input_shapes= in the API), or package a .pt2.",
        )
    outputs = torchio.output_specs(
        torchio.load(path, trust_code=trust_code), [spec.with_shape(wanted[spec.name].static()) for spec in inputs]
    )
    # A dim given as a range is declared dynamic, so that the range fits it (as an ONNX model's dynamic dim).
    dims = {name: tuple(d if isinstance(d, int) else None for d in shape.dims) for name, shape in wanted.items()}
    return [spec.with_shape(dims[spec.name]) for spec in inputs], outputs


# --------------------------------------------------------------------------- entry point


def open_source(
    path: str | Path,
    *,
    input_shapes: GivenShapes | None = None,
    batch: int | None = 1,
    trust_code: bool = False,
) -> Artifact:
    """Open the user's model as the pipeline's first artifact, with every input shape static.

    Args:
        path: The model file (or SavedModel folder).
        input_shapes: Per input name (``""`` for a single input) a tuple of ints, an
            :class:`edgepack.shapes.InputShape` (which may hold ranges), or a sequence of ints and
            ``(min, opt, max)`` triples; or a sequence of InputShape.
        batch: The profile's batch size for an unknown first dim of an input given no shape.
        trust_code: Load Keras models that hold Python code.

    Returns:
        The source artifact. Its input specs are static (a range's opt shape); ``meta["shape_ranges"]``
        lists each input given with a range as ``{"name", "min", "opt", "max"}``
        (:func:`edgepack.shapes.ranges_from_meta` reads it back).

    Raises:
        ModelError: the model is unreadable or unsafe, or its shapes cannot be fixed.
        UsageError: a shape names no input of the model.
    """
    from edgepack import memory

    path = Path(path)
    fmt = detect_format(path, trust_code=trust_code)
    needs = {"the model loaded and converted": memory.MODEL_COPIES * memory.model_bytes(path)}
    memory.check_fits(path, needs)  # before a framework reads the whole file
    if fmt is ModelFormat.TORCH:
        inputs, outputs = _torch_io(path, input_shapes, trust_code)
    else:
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
    fixed, origin, ranges = resolve_shapes(inputs, input_shapes, batch=batch, path=path)
    widest = {r.name: r.max() for r in ranges}  # validation also runs at each range's max shape
    largest = [spec.with_shape(widest[spec.name]) if spec.name in widest else spec for spec in fixed]
    needs["validation inputs"] = memory.VALIDATION_SAMPLES * memory.tensor_bytes(largest)
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
        meta={
            "shape_origin": origin,
            "shape_ranges": [r.to_dict() for r in ranges],
            "trust_code": trust_code,
            "declared_inputs": [i.to_dict() for i in inputs],
        },
    )
