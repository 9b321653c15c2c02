"""One adapter per quantizer: a :class:`Dataset` fed to TFLite, ONNX Runtime or NNCF.

Each adapter only renames and reorders the dataset's feeds; the samples are read lazily from the
dataset every time the quantizer iterates. Frameworks are imported inside the functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from edgepack.calibration.dataset import Dataset
from edgepack.deps import require
from edgepack.errors import UsageError


def representative_dataset(ds: Dataset) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A generator function for ``TFLiteConverter.representative_dataset``.

    Returns:
        A callable; each call starts a new pass that yields one list of arrays (input order) per sample.
    """

    def generate() -> Iterator[list[np.ndarray]]:
        for feed in ds:
            yield [feed[name] for name in ds.input_names]

    return generate


def ort_reader(ds: Dataset, input_names: Sequence[str] | None = None) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``ds``.

    Args:
        ds: The samples.
        input_names: The ONNX model's input names, matched to ``ds.input_names`` by position;
            None keeps the dataset's names.

    Returns:
        A reader whose ``get_next()`` returns one ``{name: array}`` feed, then None at the end;
        ``rewind()`` starts again and ``set_range(start, end)`` limits it to samples ``start:end``.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        UsageError: ``input_names`` has the wrong length.
    """
    return _ort_reader_class()(ds, _names(ds, input_names))


def nncf_dataset(ds: Dataset, input_names: Sequence[str] | None = None, *, positional: bool = False) -> Any:
    """An ``nncf.Dataset`` over ``ds`` for ``nncf.quantize``.

    For an ONNX model NNCF runs ``InferenceSession.run(None, feed)``, so it needs a dict keyed by
    the ONNX input names (the default). For an OpenVINO model NNCF passes the item to
    ``InferRequest.infer``, which takes a dict keyed by input names or a tuple in input order:
    use ``positional=True`` when the OpenVINO tensor names differ from the dataset's.

    Args:
        ds: The samples (random access lets NNCF read only its ``subset_size`` samples).
        input_names: The model's input names, matched to ``ds.input_names`` by position.
        positional: Yield a tuple of arrays in input order instead of a dict.

    Raises:
        MissingDependencyError: nncf is not installed.
        UsageError: ``input_names`` has the wrong length.
    """
    nncf = require("nncf")
    names = _names(ds, input_names)
    order = ds.input_names

    def to_tuple(feed: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(feed[k] for k in order)

    def to_dict(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: feed[k] for name, k in zip(names, order, strict=True)}

    return nncf.Dataset(ds, to_tuple if positional else to_dict)


def _names(ds: Dataset, input_names: Sequence[str] | None) -> tuple[str, ...]:
    if input_names is None:
        return ds.input_names
    names = tuple(input_names)
    if len(names) != len(ds.input_names):
        raise UsageError(
            f"{len(names)} input names ({', '.join(names)}) for a dataset of {len(ds.input_names)} inputs"
            f" ({', '.join(ds.input_names)})."
        )
    return names


@functools.cache
def _ort_reader_class() -> type:
    base = require("onnxruntime.quantization").CalibrationDataReader

    class DatasetReader(base):  # type: ignore[misc, valid-type]
        """Feeds a Dataset to ONNX Runtime's static quantization, one sample per ``get_next``."""

        def __init__(self, ds: Dataset, names: tuple[str, ...]) -> None:
            self._ds = ds
            self._names = names
            self._range = range(len(ds))
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._positions, None)
            if i is None:
                return None
            feed = self._ds[i]
            return {name: feed[k] for name, k in zip(self._names, self._ds.input_names, strict=True)}

        def rewind(self) -> None:
            self._positions = iter(self._range)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._range = range(len(self._ds))[start_index:end_index]
            self.rewind()

        def __len__(self) -> int:
            return len(self._range)

    return DatasetReader
