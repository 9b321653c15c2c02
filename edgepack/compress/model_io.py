"""What compression reads and writes: the model, its samples as arrays, and the output file (atomically).

Keras models load through :func:`edgepack.source.load_keras` (safe mode: no
code from the file runs); ONNX models through ``onnx.load``. Outputs go to a
temporary file beside the destination and are renamed over it only when
complete, and an existing destination is replaced only with ``force``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.atomic import atomic_write_bytes, fsync_dir
from edgepack.errors import ModelError, OutputExistsError, UsageError

if TYPE_CHECKING:
    from edgepack.calibration import Dataset

KERAS_FORMATS = (ModelFormat.KERAS, ModelFormat.H5)
OUTPUT_SUFFIXES: dict[ModelFormat, tuple[str, ...]] = {
    ModelFormat.KERAS: (".keras", ".h5"),
    ModelFormat.H5: (".keras", ".h5"),
    ModelFormat.ONNX: (".onnx",),
}


@dataclass(frozen=True)
class Samples:
    """Model-ready samples as arrays: one array per input (samples on axis 0) and optional labels."""

    x: tuple[np.ndarray, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return int(self.x[0].shape[0])

    def feed(self) -> tuple[np.ndarray, ...] | np.ndarray:
        """What ``keras.Model.__call__`` and ``fit`` take: the array, or a tuple for several inputs."""
        return self.x[0] if len(self.x) == 1 else self.x

    def take(self, index: np.ndarray) -> Samples:
        return Samples(tuple(a[index] for a in self.x), None if self.labels is None else self.labels[index])


def check_output(out: str | Path, fmt: ModelFormat, *, force: bool) -> Path:
    """The output path, checked before any work: a suffix the format can be written as, and not in the way.

    Raises:
        UsageError: the suffix does not fit the model format.
        OutputExistsError: ``out`` exists and ``force`` is false.
    """
    out = Path(out)
    suffixes = OUTPUT_SUFFIXES.get(fmt)
    if suffixes is None:
        raise UsageError(
            f"edgepack compresses Keras (.keras, .h5) and ONNX models, not {fmt.value}.",
            hint="Compress the original Keras or ONNX model, then package it.",
        )
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"output {out} must end in {' or '.join(suffixes)} for a {fmt.value} model.")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists.", hint="Use --force to replace it, or choose another path.")
    if not out.parent.is_dir():
        raise UsageError(f"the folder of {out} does not exist.", hint="Create it first.")
    return out


def open_model(path: str | Path, *, trust_code: bool = False) -> Artifact:
    """The model as an artifact with static inputs (batch 1), refusing formats compression cannot edit."""
    from edgepack.source import open_source

    artifact = open_source(path, trust_code=trust_code)
    if artifact.format not in OUTPUT_SUFFIXES:
        raise ModelError(
            f"{path} is a {artifact.format.value} model; compression edits Keras (.keras, .h5) and ONNX models.",
            hint="Compress the original Keras or ONNX model, then package it.",
        )
    return artifact


def load_keras_model(artifact: Artifact) -> Any:
    """Load a Keras artifact in safe mode."""
    from edgepack.modelio import load_keras

    return load_keras(artifact.path, artifact.format, trust_code=bool(artifact.meta.get("trust_code")))


def require_keras(artifact: Artifact, what: str) -> None:
    """Refuse an ONNX model for operations that need a trainable Keras model."""
    if artifact.format not in KERAS_FORMATS:
        raise ModelError(
            f"{what} needs a Keras model (.keras or .h5); {artifact.path} is {artifact.format.value}.",
            hint="Prune or distill the Keras original; `edgepack compress clip` works on ONNX models.",
        )


def load_samples(data: Any, inputs: Sequence[TensorSpec]) -> Dataset:
    """``data`` as a checked :class:`~edgepack.calibration.Dataset` (a path is loaded; a Dataset is kept)."""
    from edgepack.calibration import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data
    return load_dataset(Path(data), inputs)


def to_samples(dataset: Dataset) -> Samples:
    """Every feed of ``dataset`` stacked into one array per input (within the dataset's memory budget)."""
    rows = dataset.as_lists()
    x = tuple(np.concatenate([row[i] for row in rows]) for i in range(len(dataset.input_names)))
    labels = dataset.labels
    return Samples(x, None if labels is None else np.asarray(labels).reshape(-1))


def keras_save(model: Any, dest: Path) -> Path:
    """Save a Keras model to ``dest`` atomically (a temporary file beside it, then ``os.replace``)."""
    from edgepack.tools import quiet

    tmp = dest.parent / f".{dest.stem}.tmp-{secrets.token_hex(4)}{dest.suffix}"
    try:
        with quiet():
            model.save(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def onnx_save(model: Any, dest: Path) -> Path:
    """Serialize an ONNX model to ``dest`` atomically."""
    return atomic_write_bytes(dest, model.SerializeToString())


def keras_module(model: Any) -> Any:
    """The Keras package a model belongs to: ``tf_keras`` for legacy Keras 2 models, else ``keras``."""
    from edgepack.deps import require

    return require("tf_keras") if type(model).__module__.startswith("tf_keras") else require("keras")


def copy_keras(model: Any) -> Any:
    """An independent, uncompiled copy of a Keras model (same architecture, copied weights, no optimizer)."""
    keras = keras_module(model)
    if keras.__name__ == "keras" and type(model).__name__ in ("Functional", "Sequential"):
        clone = type(model).from_config(model.get_config())  # clone_model would re-compile a trained model
    else:
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def keras_predict(model: Any, samples: Samples, *, batch: int = 256) -> np.ndarray:
    """The model's first output on every sample, in inference mode, as one array."""
    keras = keras_module(model)
    parts = []
    for start in range(0, len(samples), batch):
        chunk = tuple(a[start : start + batch] for a in samples.x)
        result = model(chunk[0] if len(chunk) == 1 else list(chunk), training=False)
        first = result[0] if isinstance(result, list | tuple) else result
        parts.append(np.asarray(first) if not hasattr(keras, "ops") else keras.ops.convert_to_numpy(first))
    return np.concatenate(parts)


def onnx_predict(artifact: Artifact, samples: Samples) -> np.ndarray:
    """The ONNX model's first output on every sample, in batches of the model's static batch size.

    Samples from :func:`to_samples` always hold a whole number of the model's batches.
    """
    from edgepack.runtimes import open_session

    session = open_session(artifact, threads=1)
    batch = session.inputs[0].shape[0] if isinstance(session.inputs[0].shape[0], int) else 64
    parts = []
    for start in range(0, len(samples), batch):
        parts.append(session.run([a[start : start + batch] for a in samples.x])[0])
    return np.concatenate(parts)
