"""The frame every compression runs in: measure the original, let the method work, measure the result.

:func:`start` opens the model and the data, checks the output path before any
work, and measures the original; :func:`finish` measures the written result
against it (same samples, same runtime) and builds the report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat
from edgepack.compress import measure
from edgepack.compress.model_io import (
    KERAS_FORMATS,
    Samples,
    check_output,
    keras_predict,
    load_keras_model,
    load_samples,
    onnx_predict,
    open_model,
    to_samples,
)
from edgepack.compress.report import CompressionReport, LayerChange, ModelStats, TrainingSummary
from edgepack.errors import UsageError

SPLIT_SEED = 0


@dataclass(frozen=True)
class Baseline:
    """The original model, the samples it is judged on, and its facts.

    Attributes:
        artifact: The original model (static inputs, batch 1).
        model: The loaded Keras model (None for ONNX).
        train: Samples to fine-tune or distill on (None without data or without training).
        eval: Samples both models are judged on (the held-out part when training, else all the data).
        reference: The original's first output on ``eval``.
        stats: The original's facts.
    """

    artifact: Artifact
    model: Any
    train: Samples | None
    eval: Samples | None
    reference: np.ndarray | None
    stats: ModelStats

    @property
    def is_keras(self) -> bool:
        return self.artifact.format in KERAS_FORMATS

    def split(self) -> tuple[Samples, Samples, np.ndarray]:
        """The training samples, the held-out ones and the original's outputs on the held-out ones.

        Raises:
            UsageError: the data was not split (no data, or no held-out share).
        """
        if self.train is None or self.eval is None or self.reference is None:
            raise UsageError(
                "training needs data split into training and held-out samples.",
                hint="Pass --data and a held-out share above 0.",
            )
        return self.train, self.eval, self.reference


def outputs_of(model: Any, artifact: Artifact, samples: Samples) -> np.ndarray:
    """First output on ``samples``: the Keras model when given, else the artifact in its runtime."""
    return keras_predict(model, samples) if model is not None else onnx_predict(artifact, samples)


def start(
    model: str | Path,
    out: str | Path,
    *,
    data: Any = None,
    force: bool = False,
    trust_code: bool = False,
    holdout: float | None = None,
) -> tuple[Baseline, Path]:
    """Open and measure the original; split the data when ``holdout`` is given (training needs it).

    Raises:
        UsageError, OutputExistsError: bad output path (checked before any work).
        ModelError, DataError: the model or the data cannot be used.
    """
    artifact = open_model(model, trust_code=trust_code)
    out = check_output(out, artifact.format, force=force)
    if Path(out).resolve() == Path(artifact.path).resolve():
        raise UsageError(f"output {out} is the input model.", hint="Write the compressed model to another file.")
    keras_model = load_keras_model(artifact) if artifact.format in KERAS_FORMATS else None
    train = evaluation = None
    if data is not None:
        dataset = load_samples(data, artifact.inputs)
        if holdout:
            rest, held = dataset.split(holdout, seed=SPLIT_SEED)
            train, evaluation = to_samples(rest), to_samples(held)
        else:
            evaluation = to_samples(dataset)
    reference = outputs_of(keras_model, artifact, evaluation) if evaluation is not None else None
    stats = measure.model_stats(
        Path(artifact.path), artifact.format, model=keras_model, outputs=reference, samples=evaluation
    )
    return Baseline(artifact, keras_model, train, evaluation, reference, stats), out


def finish(
    base: Baseline,
    *,
    method: str,
    out: Path,
    settings: Mapping[str, Any],
    layers: tuple[LayerChange, ...],
    model: Any = None,
    training: TrainingSummary | None = None,
    latency: bool = True,
    notes: tuple[str, ...] = (),
) -> CompressionReport:
    """Measure the written model ``out`` (``model``: its Keras form) against the baseline and report."""
    fmt: ModelFormat = base.artifact.format
    after_artifact = Artifact.from_file(out, fmt, base.artifact.inputs, base.artifact.outputs)
    outputs = outputs_of(model, after_artifact, base.eval) if base.eval is not None else None
    after = measure.model_stats(out, fmt, model=model, outputs=outputs, samples=base.eval, reference=base.reference)
    timing = None
    if latency:
        with tempfile.TemporaryDirectory(prefix="edgepack-compress-") as workdir:
            timing = measure.latency_change((base.artifact, base.model), (after_artifact, model), Path(workdir))
    if base.eval is None:
        notes = (*notes, "no data given: accuracy not measured")
    return CompressionReport(
        method=method,
        model=str(base.artifact.path),
        output=str(out),
        settings=dict(settings),
        before=base.stats,
        after=after,
        layers=layers,
        training=training,
        latency=timing,
        notes=notes,
    )
