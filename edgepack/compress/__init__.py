"""Compression beyond quantization, judged by what it buys on the target.

- :func:`clip`: zero small weights (Keras or ONNX); only the compressed archive shrinks.
- :func:`prune`: unstructured (zeros held by a masked fine-tune) or structured (whole filters and
  units removed: fewer parameters, MACs and milliseconds).
- :func:`distill`: train a smaller student on the teacher's soft outputs.

Each returns a :class:`CompressionReport` with the before/after file and gzip sizes, parameters,
MACs, accuracy (or agreement with the original) and host latency. :func:`pipeline_step` runs one
of them inside ``edgepack package`` before conversion. Nothing heavy is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgepack.artifact import ModelFormat
from edgepack.compress.clip import clip
from edgepack.compress.distill import distill
from edgepack.compress.prune import prune
from edgepack.compress.report import CompressionReport, LatencyChange, LayerChange, ModelStats, TrainingSummary
from edgepack.compress.train import FitOptions, Progress
from edgepack.errors import UsageError

__all__ = [
    "PIPELINE_ORDER",
    "CompressionReport",
    "FitOptions",
    "LatencyChange",
    "LayerChange",
    "ModelStats",
    "TrainingSummary",
    "clip",
    "distill",
    "pipeline_step",
    "prune",
]

# When several methods are asked for, run them in this order (one pipeline_step call each).
PIPELINE_ORDER = ("distill", "prune", "clip")
_FIT_KEYS = {"epochs", "patience", "temperature", "alpha", "batch_size", "learning_rate"}


def pipeline_step(
    model_path: str | Path,
    fmt: ModelFormat | str,
    *,
    settings: Mapping[str, Mapping[str, Any]],
    data: Any,
    workdir: str | Path,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run one compression method as the pipeline's first step and return the new model and its report.

    Args:
        model_path: The source model (.keras, .h5 or .onnx).
        fmt: Its format.
        settings: Exactly one method and its options, e.g. ``{"prune": {"sparsity": 0.5, "structured": True}}``,
            ``{"clip": {"sparsity": 0.3}}``, ``{"distill": {"student": "width=0.5"}}``. Keys of each
            method's function are accepted (``epochs``, ``temperature``... for the fine-tune).
        data: Samples (path or Dataset); needed by ``distill`` and by any fine-tune.
        workdir: This step's folder; the model is written to ``workdir/compressed.<ext>``.
        progress: Called with one line per training epoch.

    Returns:
        The compressed model's path, and the report as a dict for the manifest's ``compression`` list
        (wall-clock figures are under its ``latency`` key; the input and output paths are left out).

    Raises:
        UsageError: not exactly one known method, or unknown options.
    """
    fmt = ModelFormat(fmt)
    if len(settings) != 1 or next(iter(settings)) not in PIPELINE_ORDER:
        raise UsageError(
            f"pipeline_step takes one of {', '.join(PIPELINE_ORDER)}, got {', '.join(settings) or 'nothing'}.",
            hint=f"Call it once per method, in the order {', '.join(PIPELINE_ORDER)}.",
        )
    method, options = next(iter(settings.items()))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / ("compressed.onnx" if fmt is ModelFormat.ONNX else "compressed.keras")
    kwargs = dict(options)
    fit_keys = _FIT_KEYS - {"epochs"} if method == "prune" else _FIT_KEYS  # prune takes epochs itself
    fit = {k: kwargs.pop(k) for k in list(kwargs) if k in fit_keys}
    try:
        report = _run(method, model_path, out, data, kwargs, fit, progress)
    except TypeError as exc:  # an unknown option key
        raise UsageError(f"bad {method} settings {dict(options)} ({exc}).") from exc
    result = report.to_dict()
    result.pop("model", None)
    result.pop("output", None)
    return out, result


def _run(
    method: str,
    model: str | Path,
    out: Path,
    data: Any,
    kwargs: dict[str, Any],
    fit: dict[str, Any],
    progress: Progress | None,
) -> CompressionReport:
    from dataclasses import replace

    from edgepack.compress.distill import DISTILL
    from edgepack.compress.prune import FINETUNE

    if method == "clip":
        if fit:
            raise UsageError(f"clip takes no training options, got {', '.join(fit)}.")
        return clip(model, out=out, data=data, force=True, **kwargs)
    if method == "prune":
        return prune(
            model, out=out, data=data, force=True, options=replace(FINETUNE, **fit), progress=progress, **kwargs
        )
    return distill(model, out=out, data=data, force=True, options=replace(DISTILL, **fit), progress=progress, **kwargs)
