"""Calibration and validation data: loaded once, checked against the model's inputs first, read lazily.

:func:`load_dataset` reads a ``.npz``, a ``.npy``, a folder of ``.npy`` files or a folder of images,
checks every input's names, shapes, dtypes, NaN/Inf and the sample count, and raises one
:class:`~edgepack.errors.DataError` listing every problem. The :class:`Dataset` it returns yields
one feed (``{input name: array with the model's batch dim}``) at a time; only the rows being fed
are in memory (a ``.npz`` is the exception: it is loaded whole, within ``max_bytes``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.artifact import TensorSpec, sha256_file
from edgepack.calibration import checks
from edgepack.calibration.preprocess import Preprocess
from edgepack.calibration.readers import READERS, Loaded, Part, array_part
from edgepack.calibration.sources import IMAGE_SUFFIXES, Rows
from edgepack.errors import DataError, UsageError

DEFAULT_MIN_SAMPLES = 8
DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class _Origin:
    """Where the samples came from (shared by a dataset and its splits)."""

    source: str
    kind: str
    files: tuple[Path, ...]
    hash_path: Path | None
    preprocess: Preprocess | None
    preprocess_applied: bool
    data_dtypes: Mapping[str, str]
    classes: tuple[str, ...] | None
    max_bytes: int
    digest: dict[str, str] = field(default_factory=dict)  # filled on first describe()

    def sha256(self, rows: Mapping[str, Rows]) -> str:
        if "sha256" not in self.digest:
            if self.hash_path is not None:
                self.digest["sha256"] = sha256_file(self.hash_path)
            else:
                h = hashlib.sha256()
                for name in sorted(rows):
                    h.update(name.encode() + b"\0" + np.ascontiguousarray(rows[name][:]).tobytes())
                self.digest["sha256"] = h.hexdigest()
        return self.digest["sha256"]


class Dataset:
    """Samples that fit a model's inputs, read lazily, in a fixed order.

    Build one with :func:`load_dataset` or :func:`dataset_from_arrays`. Iterating yields one feed per
    sample: ``{input name: array}`` with the input's dtype and batch dimension (a model with batch
    ``B`` gets ``B`` rows per feed).
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        rows: Mapping[str, Rows],
        *,
        labels: np.ndarray | None,
        indices: np.ndarray,
        origin: _Origin,
        selection: str = "all",
    ) -> None:
        self._inputs = tuple(inputs)
        self._rows = dict(rows)
        self._labels = labels
        self._indices = np.asarray(indices, dtype=np.int64)
        self._origin = origin
        self._selection = selection
        self._batch = checks.batch_of(self._inputs[0])

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """The ``i``-th feed (a fresh array per input, never a view of a memory-mapped file)."""
        start = int(self._indices[i]) * self._batch
        return {
            spec.name: np.array(self._rows[spec.name][start : start + self._batch], dtype=spec.dtype, order="C")
            for spec in self._inputs
        }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"Dataset({self._origin.source!r}, samples={len(self)}, selection={self._selection!r})"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._inputs)

    @property
    def labels(self) -> np.ndarray | None:
        """Labels of the samples in order: shape ``(len,)``, or ``(len, B)`` for a model with batch ``B > 1``."""
        if self._labels is None:
            return None
        if self._batch == 1:
            return self._labels[self._indices]
        return self._labels[self._indices[:, None] * self._batch + np.arange(self._batch)]

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names (image class subfolders, sorted); label ``k`` is ``classes[k]``."""
        return self._origin.classes

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them if there are fewer)."""
        if n < 0:
            raise UsageError(f"take({n}): n must be >= 0.")
        return self._subset(self._indices[:n], f"{self._selection}.take({n})")

    def split(self, holdout: float = 0.2, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split into ``(rest, holdout)`` parts, e.g. calibration and validation.

        The split is reproducible: it depends only on the number of samples, ``holdout`` and
        ``seed`` (each position is ranked by a BLAKE2 hash of ``seed`` and the position, not by
        numpy's random streams), so the same data and seed give the same split on any machine
        and numpy version. The parts are disjoint, together hold every sample, keep the
        original order, and each holds at least one sample.

        Args:
            holdout: Fraction of samples in the second part, strictly between 0 and 1.
            seed: Chooses which samples go to the holdout part.

        Raises:
            UsageError: ``holdout`` is not strictly between 0 and 1.
            DataError: fewer than 2 samples.
        """
        if not 0 < holdout < 1:
            raise UsageError(f"split(holdout={holdout}): holdout must be between 0 and 1 (exclusive).")
        n = len(self)
        if n < 2:
            raise DataError(f"cannot split {n} sample(s) into two parts.", hint="Give more data.")
        n_hold = min(n - 1, max(1, round(n * holdout)))
        rank = sorted(range(n), key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
        hold = np.sort(np.asarray(rank[:n_hold], dtype=np.int64))
        rest = np.sort(np.asarray(rank[n_hold:], dtype=np.int64))
        tag = f"{self._selection}.split(holdout={holdout}, seed={seed})"
        return self._subset(self._indices[rest], f"{tag}[0]"), self._subset(self._indices[hold], f"{tag}[1]")

    def as_lists(self) -> list[list[np.ndarray]]:
        """Every feed as a list of arrays in input order (holds the whole dataset in memory).

        Raises:
            DataError: the dataset is larger than the memory budget it was loaded with.
        """
        per_sample = sum(
            int(np.prod(self._rows[s.name].shape[1:], dtype=np.int64)) * self._batch * np.dtype(s.dtype).itemsize
            for s in self._inputs
        )
        if per_sample * len(self) > self._origin.max_bytes:
            raise DataError(
                f"{len(self)} samples need {per_sample * len(self) / 2**20:.0f} MiB, over the"
                f" {self._origin.max_bytes / 2**20:.0f} MiB memory budget.",
                hint="Use take(n) for fewer samples, or iterate the dataset instead.",
            )
        return [[feed[name] for name in self.input_names] for feed in self]

    def describe(self) -> dict[str, Any]:
        """Facts for a manifest: source, kind, count, shapes, dtypes, preprocessing, selection and sha256."""
        o = self._origin
        return {
            "source": Path(o.source).name,  # the name only: same bytes, same bundle, wherever the data sits
            "kind": o.kind,
            "samples": len(self),
            "batch": self._batch,
            "selection": self._selection,
            "inputs": [{**s.to_dict(), "data_dtype": o.data_dtypes.get(s.name, s.dtype)} for s in self._inputs],
            "files": len(o.files),
            "labels": self._labels is not None,
            "classes": list(o.classes) if o.classes else None,
            "preprocess": o.preprocess.to_dict() if o.preprocess else None,
            "preprocess_applied": o.preprocess_applied,
            "sha256": o.sha256(self._rows),
        }

    def _subset(self, indices: np.ndarray, selection: str) -> Dataset:
        return Dataset(
            self._inputs, self._rows, labels=self._labels, indices=indices, origin=self._origin, selection=selection
        )


def load_dataset(
    path: str | Path,
    inputs: Sequence[TensorSpec],
    *,
    preprocess: Preprocess | None = None,
    max_samples: int | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    """Read calibration or validation data and check it against the model's inputs.

    Accepted: a ``.npz`` (one array per input name, or ``x`` and optional labels ``y`` for a single
    input); a ``.npy`` (single input, memory-mapped); a folder of ``.npy`` files (single input, one
    sample or a batch per file, in sorted name order); a folder of ``.png/.jpg/.jpeg/.bmp`` images,
    optionally in class subfolders (labels are the subfolder indices in sorted name order). Arrays
    are ``N x shape[1:]`` (a batch) or exactly one sample. Images need ``preprocess`` or a
    ``preprocess.toml`` in the folder; for arrays, which are taken as model-ready, the
    preprocessing is only recorded in :meth:`Dataset.describe`.

    Args:
        path: The file or folder.
        inputs: The model's inputs, in order.
        preprocess: Image preprocessing (overrides a ``preprocess.toml`` beside the data).
        max_samples: Use at most the first this many samples (only those are checked and read).
        min_samples: Fewer samples than this is an error.
        max_bytes: Memory budget: a larger ``.npz`` is refused (it cannot be read lazily), and so is
            :meth:`Dataset.as_lists` on a larger dataset.

    Raises:
        DataError: the data is unreadable or does not fit the inputs; one error lists every problem.
        MissingDependencyError: images are given and Pillow is not installed.
        UsageError: bad arguments.
    """
    path = Path(path)
    inputs = _checked_inputs(inputs, max_samples, min_samples)
    if not path.exists():
        raise DataError(f"{path} does not exist.", hint="Check the path to the data.")
    key = "folder" if path.is_dir() else path.suffix.lower()
    if key not in READERS:
        hint = "Put images in a folder with a preprocess.toml." if key in IMAGE_SUFFIXES else ""
        raise DataError(
            f"{path} is not a .npz, a .npy or a folder.", hint=hint or "Give a .npz, .npy, or a folder of them."
        )
    loaded = READERS[key](path, inputs, preprocess, max_bytes)
    return _finish(loaded, inputs, str(path), path, max_samples, min_samples, max_bytes)


def dataset_from_arrays(
    arrays: Mapping[str, np.ndarray],
    inputs: Sequence[TensorSpec],
    *,
    labels: np.ndarray | None = None,
    max_samples: int | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    source: str = "<arrays>",
) -> Dataset:
    """A dataset over in-memory arrays (one per input name), checked like :func:`load_dataset`."""
    inputs = _checked_inputs(inputs, max_samples, min_samples)
    loaded = Loaded("arrays", labels=None if labels is None else np.asarray(labels))
    names = [s.name for s in inputs]
    if set(arrays) != set(names):
        loaded.problems.append(f"arrays are [{', '.join(arrays)}] but the model's inputs are [{', '.join(names)}]")
    for spec in inputs:
        if spec.name in arrays:
            label = f"array '{spec.name}'"
            loaded.parts[spec.name] = array_part(label, np.asarray(arrays[spec.name]), spec, loaded.problems)
    return _finish(loaded, inputs, source, None, max_samples, min_samples, DEFAULT_MAX_BYTES)


def _checked_inputs(inputs: Sequence[TensorSpec], max_samples: int | None, min_samples: int) -> tuple[TensorSpec, ...]:
    inputs = tuple(inputs)
    if not inputs:
        raise UsageError("the model has no inputs to feed.")
    if len({s.name for s in inputs}) != len(inputs):
        raise UsageError(f"input names repeat: {', '.join(s.name for s in inputs)}.")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max_samples must be >= 1, got {max_samples}.")
    if min_samples < 1:
        raise UsageError(f"min_samples must be >= 1, got {min_samples}.")
    return inputs


def _finish(
    loaded: Loaded,
    inputs: tuple[TensorSpec, ...],
    source: str,
    hash_path: Path | None,
    max_samples: int | None,
    min_samples: int,
    max_bytes: int,
) -> Dataset:
    """Run the checks that need every input's rows, then raise one DataError or build the Dataset."""
    problems = loaded.problems
    batch = checks.batch_of(inputs[0])
    fitting: dict[str, Part] = {}
    rows: dict[str, Rows] = {}  # the rows of each fitting part
    for spec in inputs:
        part = loaded.parts.get(spec.name)
        if part is None:
            continue
        if dtype_issue := checks.dtype_problem(part.label, part.dtype, spec):
            problems.append(dtype_issue)
        elif part.rows is not None:
            fitting[spec.name] = part
            rows[spec.name] = part.rows
    counts = {name: rows[name].shape[0] for name in fitting}
    if len(set(counts.values())) > 1:
        problems.append("inputs have different sample counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    n_rows = min(counts.values(), default=0)
    if n_rows % batch:
        problems.append(f"{n_rows} rows do not divide into samples of the model's batch {batch}")
    n_samples = n_rows // batch
    n_used = n_samples if max_samples is None else min(n_samples, max_samples)
    for spec in inputs:
        part = fitting.get(spec.name)
        if part is not None and part.scannable:
            blocks = checks.chunked(part.label, rows[spec.name], n_used * batch)
            problems += checks.scan(spec.name, blocks, spec, part.dtype)
    n_labels = None if loaded.labels is None else (loaded.labels.shape[0] if loaded.labels.ndim else 0)
    if n_labels is not None and n_labels != n_rows and fitting:
        problems.append(f"{n_labels} labels for {n_rows} samples")
    if fitting and len(fitting) == len(inputs) and n_used < min_samples:
        capped = f" (max_samples={max_samples})" if n_used < n_samples else ""
        problems.append(f"{n_used} samples{capped}, need at least {min_samples}")
    if problems:
        wants = ", ".join(f"'{s.name}' {checks.shape_text(s.shape)} {s.dtype}" for s in inputs)
        raise DataError(
            f"{source} does not fit the model: " + "; ".join(problems) + ".",
            hint=f"The model takes {wants}.",
        )
    origin = _Origin(
        source=source,
        kind=loaded.kind,
        files=loaded.files,
        hash_path=hash_path,
        preprocess=loaded.preprocess,
        preprocess_applied=loaded.preprocess_applied,
        data_dtypes={name: part.dtype.name for name, part in fitting.items()},
        classes=loaded.classes,
        max_bytes=max_bytes,
    )
    return Dataset(inputs, rows, labels=loaded.labels, indices=np.arange(n_used), origin=origin)
