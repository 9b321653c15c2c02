"""Short training runs for compression: fine-tune after pruning, or distill a student from a teacher.

One loss serves both: ``alpha * CE(hard labels) + (1 - alpha) * T^2 * KL(reference_T || model_T)``,
where ``reference`` is the original model (fine-tune) or the teacher (distillation) and ``_T``
means softened at temperature ``T``. Without labels ``alpha`` is 0: the model learns the
reference's soft outputs alone. Masks keep pruned weights at exactly zero: they are re-applied
after every batch and once more at the end. Early stopping watches the held-out loss and keeps
the best epoch's weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.compress.model_io import Samples, keras_module
from edgepack.compress.report import TrainingSummary
from edgepack.errors import DataError, ModelError, UsageError

Progress = Callable[[str], None]
_EPS = 1e-7


@dataclass(frozen=True)
class FitOptions:
    """How to train.

    Attributes:
        epochs: Epoch budget.
        patience: Stop after this many epochs without a lower held-out loss (0: never stop early).
        temperature: Softening temperature of the reference outputs.
        alpha: Weight of the hard-label loss when labels are given.
        batch_size: Samples per step.
        learning_rate: Adam learning rate.
        seed: Shuffling seed.
    """

    epochs: int = 5
    patience: int = 3
    temperature: float = 2.0
    alpha: float = 0.5
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.patience < 0 or self.batch_size < 1:
            raise UsageError("epochs and patience must be >= 0 and the batch size >= 1.")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UsageError(f"--temperature must be > 0, got {self.temperature}.")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must be in [0, 1], got {self.alpha}.")
        if not self.learning_rate > 0:
            raise UsageError(f"the learning rate must be > 0, got {self.learning_rate}.")


def as_logits(outputs: np.ndarray) -> tuple[np.ndarray, bool]:
    """Logits of a classifier output ``[N, C]``, and whether it was probabilities (softmax rows).

    Probabilities become log-probabilities, which softmax turns back into the same distribution.
    """
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        raise ModelError(
            f"training needs a classifier output [N, classes]; the model's first output has shape {outputs.shape}.",
            hint="Fine-tuning and distillation support single-output classifiers.",
        )
    probs = bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))
    return (np.log(np.clip(outputs, _EPS, 1.0)) if probs else outputs).astype(np.float32), probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _targets(ref_logits: np.ndarray, labels: np.ndarray | None, temperature: float) -> np.ndarray:
    """Soft targets at ``temperature`` and one-hot labels, side by side: ``[N, 2C]`` float32."""
    classes = ref_logits.shape[1]
    onehot = np.zeros_like(ref_logits)
    if labels is not None:
        if labels.min() < 0 or labels.max() >= classes:
            raise DataError(f"labels must be class indices in [0, {classes - 1}] for this model's {classes} outputs.")
        onehot[np.arange(len(labels)), labels.astype(np.int64)] = 1.0
    return np.concatenate([_softmax(ref_logits / temperature), onehot], axis=1).astype(np.float32)


def kd_loss(classes: int, temperature: float, alpha: float, model_probs: bool) -> Callable[[Any, Any], Any]:
    """The distillation loss over packed targets ``[soft_T | one-hot]`` (see the module doc)."""
    from edgepack.deps import require

    tf = require("tensorflow")
    t = float(temperature)

    def loss(y_true: Any, y_pred: Any) -> Any:
        soft, hard = y_true[:, :classes], y_true[:, classes:]
        logits = tf.math.log(tf.clip_by_value(y_pred, _EPS, 1.0)) if model_probs else y_pred
        log_soft = tf.math.log(tf.clip_by_value(soft, _EPS, 1.0))
        kl = tf.reduce_sum(soft * (log_soft - tf.nn.log_softmax(logits / t)), axis=-1) * (t * t)
        ce = -tf.reduce_sum(hard * tf.nn.log_softmax(logits), axis=-1)
        return alpha * ce + (1.0 - alpha) * kl

    return loss


def _callbacks(
    model: Any, masks: Mapping[Any, np.ndarray], patience: int, epochs: int, progress: Progress | None
) -> Any:
    """One Keras callback doing masking, early stopping with best-weights restore, and progress."""
    from edgepack.compress.measure import keras_layers

    keras = keras_module(model)
    layers = {layer.name: layer for layer in keras_layers(model)}
    variables = [(layers[name].weights[i], mask.astype(np.float32)) for (name, i), mask in masks.items()]

    callback: Any = keras.callbacks.Callback  # untyped: the model's own Keras (keras or tf_keras)

    class Guard(callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = math.inf
            self.best_epoch: int | None = None
            self.best_weights: list[Any] | None = None
            self.wait = 0
            self.stopped = False
            self.runs = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            for variable, mask in variables:
                variable.assign(variable * mask)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs, self.runs = logs or {}, epoch + 1
            val = logs.get("val_loss")
            if progress is not None:
                tail = f", held-out loss {val:.4f}" if val is not None else ""
                progress(f"epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}{tail}")
            if val is None:
                return
            if val < self.best:
                self.best, self.best_epoch, self.wait = float(val), epoch + 1, 0
                self.best_weights = model.get_weights()
            else:
                self.wait += 1
                if patience and self.wait >= patience:
                    self.stopped = model.stop_training = True

        def on_train_end(self, logs: Any = None) -> None:
            if self.best_weights is not None:
                model.set_weights(self.best_weights)
            self.on_train_batch_end(-1)

    return Guard()


def _dataset(samples: Samples, targets: np.ndarray, batch_size: int, seed: int | None) -> Any:
    from edgepack.deps import require

    tf = require("tensorflow")
    ds = tf.data.Dataset.from_tensor_slices((samples.feed(), targets))
    if seed is not None:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def fit(
    model: Any,
    train: Samples,
    train_ref: np.ndarray,
    *,
    val: Samples | None = None,
    val_ref: np.ndarray | None = None,
    options: FitOptions,
    masks: Mapping[tuple[str, int], np.ndarray] | None = None,
    progress: Progress | None = None,
) -> TrainingSummary:
    """Train ``model`` in place on ``train`` against the reference outputs ``train_ref``.

    Args:
        model: A Keras model with one classifier output.
        train: Training samples (their labels, if any, are the hard targets).
        train_ref: The reference model's first output on ``train`` (probabilities or logits).
        val: Held-out samples for early stopping (with ``val_ref``); None trains every epoch.
        val_ref: The reference's output on ``val``.
        options: Epochs, patience, temperature, alpha, batch size, learning rate, seed.
        masks: ``(layer name, weight index) -> keep mask``: weights kept at zero where the mask is False.
        progress: Called with one line per epoch.

    Returns:
        How the run went.
    """
    labels = train.labels
    alpha = options.alpha if labels is not None else 0.0
    ref_logits, _ = as_logits(train_ref)
    _, model_probs = as_logits(
        np.asarray(_first(model(train.x[0][:2] if len(train.x) == 1 else [a[:2] for a in train.x])))
    )
    classes = ref_logits.shape[1]
    keras = keras_module(model)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
        loss=kd_loss(classes, options.temperature, alpha, model_probs),
        jit_compile=False,
    )
    guard = _callbacks(model, masks or {}, options.patience if val is not None else 0, options.epochs, progress)
    data = _dataset(train, _targets(ref_logits, labels, options.temperature), options.batch_size, options.seed)
    val_data, n_val = None, 0
    if val is not None and val_ref is not None:
        n_val = len(val)
        val_labels = val.labels if labels is not None else None
        val_targets = _targets(as_logits(val_ref)[0], val_labels, options.temperature)
        val_data = _dataset(val, val_targets, options.batch_size, None)
    history = model.fit(
        data, validation_data=val_data, epochs=options.epochs, verbose=0, callbacks=[guard], shuffle=False
    )
    losses = history.history.get("loss") or [None]
    return TrainingSummary(
        epochs_requested=options.epochs,
        epochs_run=guard.runs,
        best_epoch=guard.best_epoch,
        stopped_early=guard.stopped,
        train_samples=len(train),
        val_samples=n_val,
        labels=labels is not None,
        temperature=options.temperature,
        alpha=alpha,
        final_loss=None if losses[-1] is None else float(losses[-1]),
        best_val_loss=None if guard.best_epoch is None else guard.best,
    )


def _first(result: Any) -> Any:
    return result[0] if isinstance(result, list | tuple) else result
