"""Typed results of a compression: what the model cost before and after, per layer, and on the host.

Everything is frozen and turns into plain JSON with ``to_dict()``. Wall-clock
latency lives apart from the reproducible figures (the ``latency`` key), so a
manifest can keep the one and move the other out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


def _clean(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


@dataclass(frozen=True)
class ModelStats:
    """Static and measured facts of one model file.

    Attributes:
        format: Model format (``keras``, ``h5``, ``onnx``).
        file_bytes: Size of the model file.
        archive_bytes: Size of the file gzip-compressed (level 9): what zeros save in a download.
        params: Weight elements (every weight tensor of the model).
        nonzero_params: Weight elements that are not exactly zero.
        macs: Multiply-accumulates of one inference at batch 1 (Conv, Dense/Gemm, MatMul).
        accuracy: Top-1 accuracy on the evaluation samples (when they have labels).
        agreement: Top-1 agreement with the reference model (the original, or the teacher).
        eval_samples: How many samples ``accuracy`` and ``agreement`` were measured on.
    """

    format: str
    file_bytes: int
    archive_bytes: int
    params: int
    nonzero_params: int
    macs: int | None
    accuracy: float | None = None
    agreement: float | None = None
    eval_samples: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return _clean({**asdict(self), "sparsity": round(self.sparsity, 6)})


@dataclass(frozen=True)
class LayerChange:
    """What compression did to one layer's weights.

    Attributes:
        name: Layer (Keras) or initializer (ONNX) name.
        op: Layer class or ONNX op type.
        params_before: Weight elements before.
        params_after: Weight elements after (smaller only when structured pruning removed channels).
        zeros_after: Elements that are exactly zero after.
        channels_before: Output channels or units before (structured pruning and distillation only).
        channels_after: Output channels or units after.
    """

    name: str
    op: str
    params_before: int
    params_after: int
    zeros_after: int
    channels_before: int | None = None
    channels_after: int | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.params_after if self.params_after else 0.0

    def to_dict(self) -> dict[str, Any]:
        return _clean({**asdict(self), "sparsity": round(self.sparsity, 6)})


@dataclass(frozen=True)
class TrainingSummary:
    """How a fine-tune or a distillation ran.

    Attributes:
        epochs_requested: The epoch budget.
        epochs_run: Epochs actually run (fewer when early stopping stopped it).
        best_epoch: 1-based epoch whose weights were kept (the lowest held-out loss), if any.
        stopped_early: Whether early stopping ended the run.
        train_samples: Samples trained on.
        val_samples: Held-out samples watched by early stopping (0: none).
        labels: Whether hard labels were used (else only the reference model's soft outputs).
        temperature: Softening temperature of the reference outputs.
        alpha: Weight of the hard-label loss (0 when there are no labels).
        final_loss: Training loss of the last epoch.
        best_val_loss: Lowest held-out loss.
    """

    epochs_requested: int
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    train_samples: int
    val_samples: int
    labels: bool
    temperature: float
    alpha: float
    final_loss: float | None
    best_val_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True)
class LatencyChange:
    """Host latency before and after, each model exported and timed in the same runtime, one thread.

    Attributes:
        runtime: Runtime both models ran in (``litert`` for Keras models, ``onnxruntime`` for ONNX).
        threads: Intra-op threads (1).
        runs: Timed runs per model.
        before_ms: Median latency of the original.
        after_ms: Median latency of the compressed model.
    """

    runtime: str
    threads: int
    runs: int
    before_ms: float
    after_ms: float

    @property
    def speedup(self) -> float:
        return self.before_ms / self.after_ms if self.after_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


@dataclass(frozen=True)
class CompressionReport:
    """The result of :func:`edgepack.compress.clip`, ``prune`` or ``distill``.

    Attributes:
        method: ``clip``, ``prune``, ``prune-structured`` or ``distill``.
        model: The input model (the teacher for distillation).
        output: The compressed model written.
        settings: The options as applied (JSON-ready).
        before: Facts of the input model.
        after: Facts of the output model.
        layers: Per-layer changes.
        training: How the fine-tune or distillation ran, if one did.
        latency: Host latency before and after, if measured (wall-clock: not reproducible).
        notes: What was assumed or skipped.
    """

    method: str
    model: str
    output: str
    settings: Mapping[str, Any]
    before: ModelStats
    after: ModelStats
    layers: tuple[LayerChange, ...] = ()
    training: TrainingSummary | None = None
    latency: LatencyChange | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": self.model,
            "output": self.output,
            "settings": dict(self.settings),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "training": self.training.to_dict() if self.training else None,
            "latency": self.latency.to_dict() if self.latency else None,
            "notes": list(self.notes),
        }
