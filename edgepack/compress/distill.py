"""Knowledge distillation: train a smaller student on a teacher's softened outputs.

The student is a Keras model file, or the teacher's own architecture with every
cuttable channel group scaled by a width multiplier (``width=0.5``: half the
filters and units; model inputs, outputs and ``Add``-joined branches stay
consistent, see :mod:`edgepack.compress.graph`) and fresh, seeded weights. It
trains on ``T^2 * KL(teacher_T || student_T)``, mixed with the hard-label loss
(weight ``alpha``) when the data has labels, and stops early when the held-out
loss stops improving.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress import flow
from edgepack.compress.graph import analyze
from edgepack.compress.measure import keras_layers
from edgepack.compress.model_io import Samples, copy_keras, keras_predict, keras_save, require_keras
from edgepack.compress.prune_structured import build, rebuild_config
from edgepack.compress.report import CompressionReport, LayerChange
from edgepack.compress.train import FitOptions, Progress, fit
from edgepack.errors import ModelError, UsageError

DISTILL = FitOptions(epochs=30, patience=5, temperature=4.0, alpha=0.5, learning_rate=3e-3)
HOLDOUT = 0.2
SPEC_KEYS = ("width",)


def parse_spec(spec: str) -> dict[str, float]:
    """``"width=0.5"`` -> ``{"width": 0.5}``.

    Raises:
        UsageError: an unknown key, a bad number, or a width outside (0, 4].
    """
    parsed = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in SPEC_KEYS:
            raise UsageError(
                f"student spec {spec!r} is neither a model file nor KEY=VALUE with keys {', '.join(SPEC_KEYS)}.",
                hint="Use --student width=0.5, or --student path/to/student.keras.",
            )
        try:
            parsed[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"student spec {spec!r}: {value!r} is not a number.") from None
    width = parsed.get("width")
    if width is None or not 0 < width <= 4:
        raise UsageError(f"student spec {spec!r} needs width in (0, 4], e.g. width=0.5.")
    return parsed


def student_from_width(teacher: Any, width: float, *, seed: int = 0) -> tuple[Any, dict[str, int]]:
    """The teacher's architecture with each cuttable channel group scaled by ``width``, fresh seeded weights."""
    plan = analyze(teacher, mode="width")
    sizes = {
        producer: max(1, round(group.channels * width))
        for group in plan.cuttable().values()
        for producer in group.producers
    }
    return build(teacher, rebuild_config(teacher, sizes, seed=seed)), sizes


def _student(teacher: Any, student: str | Path | Any, seed: int, trust_code: bool) -> tuple[Any, dict[str, Any]]:
    """The student model and how it was made."""
    if not isinstance(student, str | Path):
        return student, {"student": "model"}
    if Path(student).is_file():
        from edgepack.modelio import load_keras
        from edgepack.source import detect_format

        return load_keras(student, detect_format(student), trust_code=trust_code), {"student": str(student)}
    spec = parse_spec(str(student))
    model, _ = student_from_width(teacher, spec["width"], seed=seed)
    return model, {"student": str(student), **spec}


def _check_fits(teacher_out: np.ndarray, student: Any, train: Samples) -> None:
    probe = replace(train, x=tuple(a[:2] for a in train.x), labels=None)
    shape = keras_predict(student, probe).shape[1:]
    if shape != teacher_out.shape[1:]:
        raise ModelError(
            f"the student's output shape {shape} differs from the teacher's {teacher_out.shape[1:]}.",
            hint="The student must take the same inputs and give the same classes as the teacher.",
        )


def _changes(teacher: Any, student: Any) -> tuple[LayerChange, ...]:
    teacher_layers = {layer.name: layer for layer in keras_layers(teacher)}
    changes = []
    for layer in keras_layers(student):
        old = teacher_layers.get(layer.name)
        if old is None or not layer.weights or type(old) is not type(layer):
            continue
        before, after = old.get_weights(), layer.get_weights()
        sized = hasattr(layer, "filters") or hasattr(layer, "units")
        changes.append(
            LayerChange(
                name=layer.name,
                op=type(layer).__name__,
                params_before=sum(int(a.size) for a in before),
                params_after=sum(int(a.size) for a in after),
                zeros_after=sum(int(a.size - np.count_nonzero(a)) for a in after),
                channels_before=int(before[0].shape[-1]) if sized else None,
                channels_after=int(after[0].shape[-1]) if sized else None,
            )
        )
    return tuple(changes)


def distill(
    teacher: str | Path,
    *,
    student: str | Path | Any,
    data: Any,
    out: str | Path,
    options: FitOptions = DISTILL,
    holdout: float = HOLDOUT,
    seed: int = 0,
    force: bool = False,
    latency: bool = True,
    trust_code: bool = False,
    progress: Progress | None = None,
) -> CompressionReport:
    """Train a student on the teacher's soft outputs and report teacher vs student.

    Args:
        teacher: The trained Keras model (.keras or .h5; width specs need Keras 3 functional/Sequential).
        student: ``"width=0.5"`` (the teacher's architecture scaled), a Keras model file, or a Keras model.
        data: Training samples (path or Dataset), labelled or not; ``holdout`` of them judge and stop early.
        out: Where to write the trained student (.keras or .h5).
        options: Epochs, patience, temperature, alpha (hard-label weight; ignored without labels), rate, batch.
        holdout: Share of the samples held out for early stopping and the before/after figures.
        seed: Seed of the student's fresh weights and of shuffling.
        force: Replace ``out`` if it exists.
        latency: Time teacher and student on the host (exported to .tflite, one thread).
        trust_code: Allow Keras models with Lambda layers (width specs still refuse them).
        progress: Called with one line per epoch.

    Raises:
        UsageError, OutputExistsError: bad settings, spec or output path.
        ModelError: the teacher cannot be scaled (the blocking layer is named) or the student does not fit.
        DataError: the data does not fit the teacher.
    """
    if data is None:
        raise UsageError("distillation needs --data: samples to run the teacher on.")
    base, out = flow.start(teacher, out, data=data, force=force, trust_code=trust_code, holdout=holdout)
    require_keras(base.artifact, "distillation")
    model, how = _student(base.model, student, seed, trust_code)
    train, held, held_ref = base.split()
    train_ref = keras_predict(base.model, train)
    _check_fits(train_ref, model, train)
    options = replace(options, seed=seed)
    training = fit(model, train, train_ref, val=held, val_ref=held_ref, options=options, progress=progress)
    model = copy_keras(model)  # uncompiled: no optimizer state or loss in the file
    keras_save(model, out)
    settings = {**how, "temperature": options.temperature, "alpha": options.alpha, "epochs": options.epochs}
    settings["patience"] = options.patience
    return flow.finish(
        base,
        method="distill",
        out=out,
        settings=settings,
        layers=_changes(base.model, model),
        model=model,
        training=training,
        latency=latency,
    )
