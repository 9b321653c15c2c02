"""Typed values that flow between steps: tensor specs and artifacts.

Each step takes an :class:`Artifact` (a file, its format, its digest and its
I/O) and returns a new one in its own work folder. No step edits its input.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


class ModelFormat(str, enum.Enum):
    """Model file formats edgepack reads or writes."""

    KERAS = "keras"  # Keras 3 .keras zip
    H5 = "h5"  # legacy Keras HDF5
    SAVEDMODEL = "savedmodel"  # TensorFlow SavedModel folder
    ONNX = "onnx"
    TFLITE = "tflite"
    OPENVINO = "openvino"  # OpenVINO IR: .xml (+ .bin beside it)
    TORCH = "torch"  # PyTorch: a torch.export program (.pt2), or a trusted TorchScript/pickled module (.pt/.pth)

    @property
    def is_tensorflow(self) -> bool:
        return self in (ModelFormat.KERAS, ModelFormat.H5, ModelFormat.SAVEDMODEL)


class Layout(str, enum.Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"
    NC = "NC"
    OTHER = "other"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dim), numpy dtype name and layout of a tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    layout: Layout = Layout.OTHER

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    def with_shape(self, shape: tuple[int | None, ...]) -> TensorSpec:
        return replace(self, shape=tuple(shape), layout=guess_layout(tuple(shape)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout.value,
        }


def guess_layout(shape: tuple[int | None, ...]) -> Layout:
    """Guess the layout of an activation tensor from its shape (channels are small)."""
    if len(shape) == 2:
        return Layout.NC
    if len(shape) != 4:
        return Layout.OTHER
    c_last, c_first = shape[3], shape[1]
    if c_last in (1, 3, 4) and c_first not in (1, 3, 4):
        return Layout.NHWC
    if c_first in (1, 3, 4) and c_last not in (1, 3, 4):
        return Layout.NCHW
    if isinstance(shape[1], int) and isinstance(shape[3], int):
        return Layout.NHWC if shape[3] < shape[1] else Layout.NCHW
    return Layout.OTHER


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed; of a folder, over its sorted relative paths and contents."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A model file produced or read by a step.

    ``files`` lists every file that belongs to the model (an OpenVINO IR has
    its ``.bin`` beside the ``.xml``); ``path`` is the one a runtime opens.
    ``meta`` holds step-specific facts (tool versions, opset, precision).
    """

    path: Path
    format: ModelFormat
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[Path, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(
        cls,
        path: Path,
        format: ModelFormat,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        files: tuple[Path, ...] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> Artifact:
        path = Path(path)
        files = tuple(Path(f) for f in files) or (path,)
        if len(files) == 1:
            digest = sha256_file(files[0])
        else:  # e.g. an OpenVINO IR: the .xml and its .bin are one model
            digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
        return cls(
            path=path,
            format=format,
            sha256=digest,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            files=files,
            meta=dict(meta or {}),
        )

    def size_bytes(self) -> int:
        total = 0
        for f in self.files:
            f = Path(f)
            total += sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        return total
