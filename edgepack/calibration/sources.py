"""Readers for data files: ``.npy``/``.npz`` headers, memory-mapped arrays, folders of ``.npy`` or images.

Nothing here unpickles: an object array is refused from its header, before any data is read.
Every reader exposes *rows*: an object with ``shape`` (rows first), ``dtype`` and slicing that
returns a plain array, so a folder of thousands of files is read one file at a time.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import IO, Protocol

import numpy as np

from edgepack.calibration.preprocess import Preprocess, read_image
from edgepack.errors import DataError

# zipfile raises RuntimeError for an encrypted member, NotImplementedError for an unknown compression,
# zlib.error / EOFError for a damaged stream.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_NO_PICKLE = "edgepack never loads pickles (they can run code)."


class Rows(Protocol):
    """An array-like read lazily: ``rows[a:b]`` returns a plain array of rows ``a`` to ``b``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of a stored array, read without loading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(fh: IO[bytes], label: str) -> ArrayHeader:
    """Read a ``.npy`` header from an open binary file.

    Raises:
        DataError: not a ``.npy`` stream, or an object (pickled) array.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = reader(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TokenError, TypeError, RuntimeError) as exc:
        # numpy parses the header dict with Python's tokenizer: a damaged header can raise any of these
        raise DataError(f"{label} is not a valid .npy array ({exc}).", hint="Save it with numpy.save.") from exc
    if dtype.hasobject:
        raise DataError(f"{label} holds Python objects (a pickled array); {_NO_PICKLE}", hint="Save numbers instead.")
    if any(int(d) < 0 for d in shape):
        raise DataError(
            f"{label} is not a valid .npy array (negative shape {tuple(shape)}).", hint="Save it with numpy.save."
        )
    return ArrayHeader(tuple(int(d) for d in shape), dtype)


def npy_header(path: Path) -> ArrayHeader:
    try:
        with path.open("rb") as fh:
            return read_header(fh, str(path))
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}).") from exc


def open_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file (its data stays on disk until sliced).

    Raises:
        DataError: unreadable, not ``.npy``, or pickled.
    """
    header = npy_header(path)
    if header.nbytes == 0:
        return np.empty(header.shape, header.dtype)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, OverflowError) as exc:
        raise DataError(f"cannot read {path} as an array ({exc}).", hint="Save it with numpy.save.") from exc


def npz_headers(path: Path) -> dict[str, ArrayHeader]:
    """Headers of every array in a ``.npz``, keyed like ``numpy.load`` keys them.

    Raises:
        DataError: not a zip of ``.npy`` arrays, or one of them pickled.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            headers = {}
            for member in zf.namelist():
                key = member.removesuffix(".npy")
                with zf.open(member) as fh:
                    headers[key] = read_header(fh, f"{path}['{key}']")
            return headers
    except _ZIP_ERRORS as exc:
        raise DataError(f"{path} is not a valid .npz archive ({exc}).", hint="Save it with numpy.savez.") from exc


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Load the named arrays of a ``.npz`` (headers are checked first by :func:`npz_headers`)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (ValueError, *_ZIP_ERRORS) as exc:
        raise DataError(f"cannot read {path} ({exc}).", hint="Save it with numpy.savez.") from exc


class FileRows:
    """Many ``.npy`` files seen as one array of rows; one file is mapped at a time.

    Args:
        files: The files, in order.
        counts: Rows in each file (a file holding one sample without a batch dimension counts 1).
        row_shape: Shape of one row.
        dtype: The files' common dtype.
    """

    def __init__(self, files: Sequence[Path], counts: Sequence[int], row_shape: tuple[int, ...], dtype: np.dtype):
        self.files = tuple(files)
        self._starts = np.cumsum([0, *counts])
        self.row_shape = tuple(row_shape)
        self.shape = (int(self._starts[-1]), *self.row_shape)
        self.dtype = np.dtype(dtype)
        self._cached: tuple[int, np.ndarray] | None = None

    def _file(self, k: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != k:
            rows = int(self._starts[k + 1] - self._starts[k])
            self._cached = (k, open_npy(self.files[k]).reshape(rows, *self.row_shape))
        return self._cached[1]

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.shape[0])
        parts = []
        while start < stop:
            k = int(np.searchsorted(self._starts, start, side="right")) - 1
            end = min(stop, int(self._starts[k + 1]))
            base = int(self._starts[k])
            parts.append(np.array(self._file(k)[start - base : end - base]))
            start = end
        return np.concatenate(parts) if parts else np.empty((0, *self.row_shape), self.dtype)

    def chunks(self, stop: int) -> Iterator[tuple[str, np.ndarray]]:
        """``(file name, rows)`` for the first ``stop`` rows, file by file (for scans that name the file)."""
        for k, path in enumerate(self.files):
            if self._starts[k] >= stop:
                break
            yield path.name, self[int(self._starts[k]) : min(stop, int(self._starts[k + 1]))]


class ImageRows:
    """A list of image files seen as rows of preprocessed samples; decodes only the rows sliced."""

    def __init__(self, files: Sequence[Path], preprocess: Preprocess, size: tuple[int, int]):
        self.files = tuple(files)
        self.preprocess = preprocess
        self.size = size
        self.shape = (len(self.files), *preprocess.sample_shape(size))
        self.dtype = np.dtype(preprocess.dtype)

    def __getitem__(self, index: slice) -> np.ndarray:
        samples = [read_image(path, self.preprocess, self.size) for path in self.files[index]]
        return np.stack(samples) if samples else np.empty((0, *self.shape[1:]), self.dtype)


@dataclass(frozen=True)
class FolderListing:
    """What a data folder holds: ``kind`` is ``"npy"`` or ``"images"``."""

    kind: str
    files: tuple[Path, ...]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None


def scan_folder(folder: Path) -> FolderListing:
    """List a folder of ``.npy`` files, of images, or of class subfolders of images (sorted by name).

    Raises:
        DataError: the folder mixes kinds, or holds no data.
    """
    entries = _visible(folder)
    npys = [p for p in entries if p.is_file() and p.suffix.lower() == ".npy"]
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    class_dirs = [d for d in entries if d.is_dir() and any(_is_image(p) for p in _visible(d))]
    if npys and (images or class_dirs):
        raise DataError(f"{folder} holds both .npy files and images.", hint="Put each kind in its own folder.")
    if npys:
        return FolderListing("npy", tuple(npys))
    if images and class_dirs:
        raise DataError(
            f"{folder} holds images both at its top level and in subfolders.",
            hint="Put every image in a class subfolder (labels come from folder names), or none.",
        )
    if images:
        return FolderListing("images", tuple(images))
    if class_dirs:
        files, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            found = [p for p in _visible(class_dir) if _is_image(p)]
            files += found
            labels += [label] * len(found)
        return FolderListing("images", tuple(files), np.asarray(labels, np.int64), tuple(d.name for d in class_dirs))
    raise DataError(
        f"{folder} holds no .npy files and no images ({', '.join(IMAGE_SUFFIXES)}).",
        hint="Give a .npz, a .npy, a folder of .npy files or a folder of images.",
    )


def _visible(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted((Path(e.path) for e in it if not e.name.startswith(".")), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder} ({exc.strerror}).") from exc


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
