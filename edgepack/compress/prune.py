"""Pruning a Keras model: unstructured (zeros, kept by a masked fine-tune) or structured (smaller layers).

Unstructured pruning zeroes the smallest kernel weights like :func:`~edgepack.compress.clip.clip`,
then fine-tunes with the zeros held in place; the file keeps its shape, so only the
compressed archive shrinks. Structured pruning removes whole filters and units
(:mod:`edgepack.compress.prune_structured`), so parameters, MACs and latency drop; a
short fine-tune then recovers accuracy. Fine-tuning needs data: with labels it mixes
the hard-label loss with the original model's soft outputs, without labels it
learns the original's soft outputs alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgepack.compress import flow
from edgepack.compress.clip import SCOPES, apply_keras_masks, keras_changes, keras_kernels, magnitude_masks
from edgepack.compress.model_io import copy_keras, keras_predict, keras_save, require_keras
from edgepack.compress.prune_structured import prune_structured
from edgepack.compress.report import CompressionReport, TrainingSummary
from edgepack.compress.train import FitOptions, Progress, fit
from edgepack.errors import UsageError

HOLDOUT = 0.2
FINETUNE = FitOptions(epochs=5, patience=2, temperature=2.0, alpha=0.5, learning_rate=1e-3)


def prune(
    model: str | Path,
    *,
    out: str | Path,
    sparsity: float,
    structured: bool = False,
    scope: str = "layer",
    exclude: Sequence[str] = (),
    data: Any = None,
    epochs: int = FINETUNE.epochs,
    options: FitOptions = FINETUNE,
    force: bool = False,
    latency: bool = True,
    trust_code: bool = False,
    progress: Progress | None = None,
) -> CompressionReport:
    """Prune a Keras model, fine-tune it on ``data`` if given, and report what that buys.

    Args:
        model: A .keras or .h5 file (structured pruning: a Keras 3 functional or Sequential model).
        out: Where to write the pruned model (.keras or .h5).
        sparsity: Share of kernel weights (unstructured) or of channels per group (structured) to remove.
        structured: Remove whole filters and units instead of zeroing single weights.
        scope: Unstructured only: ``layer`` (the share per kernel) or ``global`` (over all kernels).
        exclude: Structured only: layers whose output channels stay.
        data: Samples (path or Dataset). A fifth is held out to judge both models and to stop early.
        epochs: Fine-tune epochs (0: none); needs ``data``.
        options: Other fine-tune settings (``epochs`` here wins over ``options.epochs``).
        force: Replace ``out`` if it exists.
        latency: Time both models on the host (exported to .tflite, one thread).
        trust_code: Allow Keras models with Lambda layers (structured pruning still refuses them).
        progress: Called with one line per fine-tune epoch.

    Raises:
        UsageError, OutputExistsError: bad settings or output path.
        ModelError: not a Keras model, or a layer blocks a structured cut (named in the message).
        DataError: the data does not fit the model.
    """
    if not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}.", hint="0.5 removes half.")
    if scope not in SCOPES:
        raise UsageError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}.")
    if exclude and not structured:
        raise UsageError("--exclude applies to --structured pruning only.")
    options = replace(options, epochs=epochs)
    tune = data is not None and epochs > 0
    base, out = flow.start(model, out, data=data, force=force, trust_code=trust_code, holdout=HOLDOUT if tune else None)
    require_keras(base.artifact, "pruning")
    if structured:
        pruned, layers = prune_structured(base.model, sparsity=sparsity, exclude=tuple(exclude))
        masks = None
    else:
        pruned = copy_keras(base.model)
        kernels = keras_kernels(pruned)
        masks = magnitude_masks({k: a for k, (_, a) in kernels.items()}, sparsity=sparsity, scope=scope)
        apply_keras_masks(kernels, masks)
    training = _finetune(base, pruned, options, masks, progress) if tune else None
    if training is not None:
        pruned = copy_keras(pruned)  # an uncompiled copy: no optimizer state or loss in the file
    if masks is not None:
        layers = keras_changes(pruned, list(masks))
    keras_save(pruned, out)
    settings: dict[str, Any] = {"sparsity": sparsity, "structured": structured, "epochs": epochs if tune else 0}
    settings.update({"exclude": list(exclude)} if structured else {"scope": scope})
    notes: tuple[str, ...] = () if tune or data is None else ("epochs=0: no fine-tune",)
    if structured and all(c.params_after == c.params_before for c in layers):
        notes += ("nothing was cut: every channel group is fixed (model inputs/outputs, excluded or nested layers)",)
    return flow.finish(
        base,
        method="prune-structured" if structured else "prune",
        out=out,
        settings=settings,
        layers=layers,
        model=pruned,
        training=training,
        latency=latency,
        notes=notes,
    )


def _finetune(
    base: flow.Baseline, pruned: Any, options: FitOptions, masks: Any, progress: Progress | None
) -> TrainingSummary:
    """Fine-tune ``pruned`` in place against the original's outputs (and labels), masks held."""
    train, held, held_ref = base.split()
    train_ref = keras_predict(base.model, train)
    return fit(
        pruned,
        train,
        train_ref,
        val=held,
        val_ref=held_ref,
        options=options,
        masks=masks,
        progress=progress,
    )
