"""One reader per data kind (``.npz``, ``.npy``, folder of ``.npy``, folder of images).

A reader matches the data to the model's inputs by name and shape and returns a :class:`Loaded`:
lazily read rows per input plus the problems found so far. It raises at once only when it cannot
go on (unreadable file, over the memory budget, no preprocessing for images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepack import memory
from edgepack.artifact import TensorSpec
from edgepack.calibration import checks
from edgepack.calibration.preprocess import PREPROCESS_FILE, Preprocess
from edgepack.calibration.sources import (
    FileRows,
    ImageRows,
    Rows,
    load_npz,
    npy_header,
    npz_headers,
    open_npy,
    scan_folder,
)
from edgepack.errors import DataError


@dataclass(frozen=True)
class Part:
    """One input's data: where it came from (for messages), its rows (None if its shape does not fit)."""

    label: str
    rows: Rows | None
    dtype: np.dtype
    scannable: bool = True


@dataclass
class Loaded:
    """What a reader found: rows per input name, labels, problems, and facts for ``describe()``."""

    kind: str
    parts: dict[str, Part] = field(default_factory=dict)
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    problems: list[str] = field(default_factory=list)
    files: tuple[Path, ...] = ()
    preprocess: Preprocess | None = None
    preprocess_applied: bool = False


Reader = Callable[[Path, Sequence[TensorSpec], Preprocess | None, int], Loaded]


def array_part(label: str, array: np.ndarray, spec: TensorSpec, problems: list[str]) -> Part:
    """Fit an in-memory or memory-mapped array to ``spec`` (a batch, or one sample without batch dim)."""
    if array.dtype.hasobject:
        raise DataError(f"{label} holds Python objects; edgepack never loads pickles.", hint="Give numeric arrays.")
    rows = checks.row_count(array.shape, spec)
    if rows is None:
        problems.append(checks.shape_problem(label, array.shape, spec))
        return Part(label, None, array.dtype)
    return Part(label, array if array.ndim == len(spec.shape) else array[None], array.dtype)


def read_npz(path: Path, inputs: Sequence[TensorSpec], preprocess: Preprocess | None, max_bytes: int) -> Loaded:
    headers = npz_headers(path)
    loaded = Loaded("npz", files=(path,), preprocess=preprocess or _beside(path.parent))
    names = [s.name for s in inputs]
    if set(names) <= set(headers):
        data_keys = {name: name for name in names}
    elif len(names) == 1 and "x" in headers:
        data_keys = {names[0]: "x"}
    else:
        loaded.problems.append(
            f"arrays in the file are [{', '.join(headers)}] but the model's inputs are [{', '.join(names)}]"
            " (name one array per input, or use x and optional y labels with a single input)"
        )
        return loaded
    label_key = "y" if "y" in headers and "y" not in names else None
    extra = [k for k in headers if k not in data_keys.values() and k != label_key]
    if extra:
        loaded.problems.append(f"unexpected arrays [{', '.join(extra)}] beside inputs [{', '.join(names)}]")
    wanted = [*data_keys.values(), *([label_key] if label_key else [])]
    total = sum(headers[k].nbytes for k in wanted)
    if total > max_bytes:
        raise DataError(
            f"{path} holds {total / 2**20:.0f} MiB of arrays, over the {max_bytes / 2**20:.0f} MiB memory budget"
            " (a .npz is loaded whole).",
            hint="Save each input as a .npy file (memory-mapped) or a folder of .npy files, or raise max_bytes.",
        )
    available = memory.available_memory()
    if available is not None and total > available and not memory.overridden():
        raise DataError(
            f"{path} holds {total / 2**20:.0f} MiB of arrays, more than the {available / 2**20:.0f} MiB of memory"
            " available (a .npz is loaded whole).",
            hint="Save each input as a .npy file (memory-mapped) or a folder of .npy files, or free memory.",
        )
    arrays = load_npz(path, wanted)
    for spec in inputs:
        key = data_keys[spec.name]
        loaded.parts[spec.name] = array_part(f"'{key}' in {path.name}", arrays[key], spec, loaded.problems)
    loaded.labels = arrays[label_key] if label_key else None
    return loaded


def read_npy(path: Path, inputs: Sequence[TensorSpec], preprocess: Preprocess | None, max_bytes: int) -> Loaded:
    loaded = Loaded("npy", files=(path,), preprocess=preprocess or _beside(path.parent))
    if not _single_input(inputs, "a .npy file", loaded.problems):
        return loaded
    loaded.parts[inputs[0].name] = array_part(path.name, open_npy(path), inputs[0], loaded.problems)
    return loaded


def read_folder(path: Path, inputs: Sequence[TensorSpec], preprocess: Preprocess | None, max_bytes: int) -> Loaded:
    found = scan_folder(path)
    if found.kind == "images":
        return _read_images(path, found.files, found.labels, found.classes, inputs, preprocess)
    loaded = Loaded("npy-folder", files=found.files, preprocess=preprocess or _beside(path))
    if not _single_input(inputs, "a folder of .npy files", loaded.problems):
        return loaded
    spec = inputs[0]
    counts: list[int] = []
    bad: list[str] = []
    dtypes: dict[str, str] = {}
    tail: tuple[int, ...] | None = None
    for file in found.files:
        header = npy_header(file)
        n_rows = checks.row_count(header.shape, spec)
        counts.append(n_rows or 0)
        dtypes.setdefault(header.dtype.name, file.name)
        if n_rows is None:
            bad.append(f"{file.name} {checks.shape_text(header.shape)}")
        elif tail is None:
            tail = header.shape[1:] if len(header.shape) == len(spec.shape) else header.shape
    if bad:
        loaded.problems.append(
            f"{len(bad)} files in {path.name}/ do not fit input '{spec.name}' {checks.shape_text(spec.shape)}"
            f" (one sample or N x {checks.shape_text(spec.shape[1:])} per file): {checks.listing(bad)}"
        )
    if len(dtypes) > 1:
        mixed = [f"{f} is {d}" for d, f in dtypes.items()]
        loaded.problems.append(f"files in {path.name}/ mix dtypes ({checks.listing(mixed)}); save them all alike")
    dtype = np.dtype(next(iter(dtypes)))
    ok = not bad and len(dtypes) == 1
    rows = FileRows(found.files, counts, _row_shape(spec, tail or ()), dtype) if ok else None
    loaded.parts[spec.name] = Part(f"{path.name}/", rows, dtype)
    return loaded


def _row_shape(spec: TensorSpec, tail: tuple[int, ...]) -> tuple[int, ...]:
    """The row shape: the input's own dims, or the first file's where the input's are dynamic."""
    return tuple(t if w is None else w for w, t in zip(spec.shape[1:], tail, strict=True))


def _read_images(
    folder: Path,
    files: tuple[Path, ...],
    labels: np.ndarray | None,
    classes: tuple[str, ...] | None,
    inputs: Sequence[TensorSpec],
    preprocess: Preprocess | None,
) -> Loaded:
    pre = preprocess or _beside(folder)
    if pre is None:
        raise DataError(
            f"{folder} is a folder of images but no preprocessing is given.",
            hint=f"Add a {PREPROCESS_FILE} to the folder (size, layout, channel_order, scale, mean, std)"
            " or pass the preprocessing options.",
        )
    loaded = Loaded("image-folder", labels=labels, classes=classes, files=files, preprocess=pre)
    loaded.preprocess_applied = True
    if not _single_input(inputs, "a folder of images", loaded.problems):
        return loaded
    spec = inputs[0]
    size = pre.resolve_size(spec.shape)
    if len(spec.shape) != 4 or size is None:
        loaded.problems.append(
            f"input '{spec.name}' {checks.shape_text(spec.shape)} is not a 4-D image input with a static size"
            " (set size in the preprocessing, or give arrays instead of images)"
        )
        return loaded
    rows = ImageRows(files, pre, size)
    sample = rows.shape[1:]
    if checks.row_count(sample, spec) != 1:
        loaded.problems.append(
            f"preprocessed images are {checks.shape_text(sample)} ({pre.layout}, {pre.channel_order}, size {size[0]}x"
            f"{size[1]}) but input '{spec.name}' takes {checks.shape_text(spec.shape)}"
            " (fix layout, channel_order or size in the preprocessing)"
        )
        return loaded
    rows[0:1]  # decode the first image now: an unreadable file or a missing Pillow shows up here
    loaded.parts[spec.name] = Part(f"{folder.name}/", rows, rows.dtype, scannable=False)
    return loaded


def _single_input(inputs: Sequence[TensorSpec], what: str, problems: list[str]) -> bool:
    if len(inputs) == 1:
        return True
    names = ", ".join(s.name for s in inputs)
    problems.append(f"{what} feeds one input but the model has {len(inputs)} ({names}); use a .npz with one array each")
    return False


def _beside(folder: Path) -> Preprocess | None:
    """The ``preprocess.toml`` in ``folder``, if there is one."""
    candidate = folder / PREPROCESS_FILE
    return Preprocess.from_toml(candidate) if candidate.is_file() else None


READERS: dict[str, Reader] = {".npz": read_npz, ".npy": read_npy, "folder": read_folder}
