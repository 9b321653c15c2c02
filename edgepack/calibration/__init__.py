"""Calibration and validation data: load, check against the model's inputs, and feed to quantizers.

Data is an iterable of input dicts (:class:`Dataset`) plus a transform, adapted once each to
TFLite's ``representative_dataset``, ONNX Runtime's ``CalibrationDataReader`` and ``nncf.Dataset``
(see :mod:`edgepack.calibration.adapters`). Nothing heavy is imported here.
"""

from edgepack.calibration.adapters import nncf_dataset, ort_reader, representative_dataset
from edgepack.calibration.dataset import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_SAMPLES,
    Dataset,
    dataset_from_arrays,
    load_dataset,
)
from edgepack.calibration.preprocess import PREPROCESS_FILE, Preprocess

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIN_SAMPLES",
    "PREPROCESS_FILE",
    "Dataset",
    "Preprocess",
    "dataset_from_arrays",
    "load_dataset",
    "nncf_dataset",
    "ort_reader",
    "representative_dataset",
]
