"""The accuracy gate: is the quantized model still as accurate as the float one, on data it never saw?

The float source runs once on the held-out samples (:func:`reference_outputs`); every quantized
attempt runs on the same samples and is judged against it (:func:`evaluate`, :func:`judge`).
Per output it reports max abs error, cosine, SQNR and (for classifiers) top-1 agreement, reusing
:func:`edgepack.validate.compare_outputs`.

The budget rule, per output (``accuracy`` is the profile's ``[accuracy]`` table):

* With labels, the first classifier output (2-D ``[N, C]``, ``C > 1``, one row per label and a
  column for every label value) is judged on task accuracy:
  ``int8 accuracy >= accuracy.int8_min_relative_accuracy x float accuracy``.
* Other classifier outputs, or all of them without labels: top-1 agreement with the float model
  ``>= accuracy.int8_min_top1_agreement``.
* Both are counts of held-out samples, so the allowance is rounded up to whole samples: when the
  budget allows any drop, at least one sample may flip (0.99 of 74 correct samples allows 1, not
  0.74). Without this a budget finer than ``1 / samples`` fails on one borderline sample, which
  is noise, not a measured loss. ``Check.budget`` keeps the profile's figure, ``threshold`` the
  floor applied; the orchestrator warns when the held-out set is too small to resolve the budget.
* Non-classifier outputs (regression, embeddings, feature maps): mean per-row cosine similarity
  ``>= accuracy.int8_min_top1_agreement``, the same fraction read as directional agreement
  (cosine 0.99 is an output SQNR of about 17 dB). SQNR is reported alongside.
* NaN or inf where the float model is finite always fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgepack.validate import OutputMetrics, compare_outputs

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact, TensorSpec
    from edgepack.calibration import Dataset
    from edgepack.profiles import Accuracy


@dataclass(frozen=True)
class Check:
    """One criterion of the budget: ``value >= threshold`` passes.

    Attributes:
        output: The output judged.
        kind: "relative_accuracy", "top1_agreement", "cosine" or "finite".
        value: The measured figure.
        threshold: The floor applied (the budget rounded to whole held-out samples for counts).
        budget: The profile's figure, where it differs from ``threshold``.
    """

    output: str
    kind: str
    value: float
    threshold: float
    budget: float | None = None

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def describe(self) -> str:
        if self.kind == "finite":
            return f"output '{self.output}' has NaN or inf values where the float model's are finite"
        budget = f", budget {self.budget:g}" if self.rounded else ""
        name = self.kind.replace("_", " ")
        return f"output '{self.output}': {name} {self.value:.4f} (floor {self.threshold:.4f}{budget})"

    @property
    def rounded(self) -> bool:
        """True when the budget was below the held-out set's resolution and was rounded to a whole sample."""
        return self.budget is not None and self.budget != self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "kind": self.kind,
            "value": self.value,
            "threshold": self.threshold,
            "budget": self.threshold if self.budget is None else self.budget,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict on one quantized model.

    Attributes:
        checks: Every criterion judged, one or more per output.
        outputs: Float-vs-quantized metrics per output (max abs error, cosine, SQNR, top-1 agreement).
        samples: Held-out samples compared.
        float_accuracy: Task accuracy of the float model (with labels), else None.
        quantized_accuracy: Task accuracy of the quantized model (with labels), else None.
        label_output: The output the labels were scored on, else None.
    """

    checks: tuple[Check, ...]
    outputs: tuple[OutputMetrics, ...]
    samples: int
    float_accuracy: float | None = None
    quantized_accuracy: float | None = None
    label_output: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(c.describe() for c in self.checks if not c.passed)

    @property
    def accuracy_drop(self) -> float | None:
        """Float minus quantized task accuracy (positive: the quantized model is worse)."""
        if self.float_accuracy is None or self.quantized_accuracy is None:
            return None
        return self.float_accuracy - self.quantized_accuracy

    @property
    def margin(self) -> float:
        """The worst ``value - threshold`` over the checks: >= 0 passes; higher is better."""
        return min((c.value - c.threshold for c in self.checks), default=0.0)

    @property
    def notes(self) -> tuple[str, ...]:
        """Where the held-out set is too small to resolve the budget (it was rounded to a whole sample)."""
        return tuple(
            f"output '{c.output}': {self.samples} held-out samples cannot resolve a {c.kind.replace('_', ' ')} "
            f"budget of {c.budget:g}; it was applied as {c.threshold:.4f} (whole samples). Give more data for a "
            "finer gate"
            for c in self.checks
            if c.rounded and c.budget is not None and (1 - c.budget) * self.samples < 1
        )

    def summary(self) -> str:
        """One line of figures, e.g. for an error message."""
        parts = []
        if self.float_accuracy is not None and self.quantized_accuracy is not None:
            parts.append(
                f"accuracy {self.quantized_accuracy:.2%} vs float {self.float_accuracy:.2%} "
                f"on {self.samples} held-out samples"
            )
        parts += [c.describe() for c in self.checks if not c.passed or c.kind != "relative_accuracy"]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "samples": self.samples,
            "float_accuracy": self.float_accuracy,
            "quantized_accuracy": self.quantized_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "label_output": self.label_output,
            "checks": [c.to_dict() for c in self.checks],
            "failures": list(self.failures),
            "notes": list(self.notes),
            "outputs": [m.to_dict() for m in self.outputs],
        }


@dataclass(frozen=True)
class Reference:
    """The float model's outputs on the held-out samples, kept for every attempt.

    Attributes:
        names: Output names (the source's), in order.
        outputs: Per output, all samples with rows along axis 0.
        inputs: The source's input specs (for layout permutations).
        feeds: The held-out samples, each a list of arrays in input order.
        labels: Labels flattened to one per output row, or None.
        sample_outputs: The first sample's outputs (their per-sample shapes align a candidate's).
    """

    names: tuple[str, ...]
    outputs: tuple[np.ndarray, ...]
    inputs: tuple[TensorSpec, ...]
    feeds: tuple[tuple[np.ndarray, ...], ...]
    labels: np.ndarray | None
    sample_outputs: tuple[np.ndarray, ...] = ()


def reference_outputs(source: Artifact, heldout: Dataset) -> Reference:
    """Run the float ``source`` once over ``heldout``."""
    from edgepack.alignment import gather
    from edgepack.runtimes import open_session

    session = open_session(source, threads=1)
    feeds = tuple(tuple(sample) for sample in heldout.as_lists())
    runs = [session.run(list(sample)) for sample in feeds]
    labels = heldout.labels
    return Reference(
        names=tuple(spec.name for spec in session.outputs),
        outputs=tuple(gather(runs)),
        inputs=tuple(session.inputs),
        feeds=feeds,
        labels=None if labels is None else labels.reshape(-1),
        sample_outputs=tuple(runs[0]) if runs else (),
    )


def evaluate(reference: Reference, artifact: Artifact, accuracy: Accuracy) -> GateReport:
    """Run ``artifact`` (one thread) on the reference's samples and judge it."""
    from edgepack.alignment import gather, input_permutations, output_order, permute, size1_moved
    from edgepack.runtimes import open_session

    session = open_session(artifact, threads=1)
    perms = input_permutations(reference.inputs, session.inputs)
    order = output_order(reference.names, session.outputs, artifact.meta.get("source_names") or {})
    runs = []
    for sample in reference.feeds:
        outputs = session.run([permute(a, p) for a, p in zip(sample, perms, strict=True)])
        refs = reference.sample_outputs or tuple(outputs[i] for i in order)
        runs.append([size1_moved(outputs[i], r) for i, r in zip(order, refs, strict=True)])
    return judge(reference.names, reference.outputs, gather(runs), reference.labels, accuracy)


def judge(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    labels: np.ndarray | None,
    accuracy: Accuracy,
) -> GateReport:
    """Apply the budget rule (see the module docstring) to float and quantized outputs.

    Args:
        names: Output names.
        reference: Float outputs, one array per output, rows along axis 0.
        candidate: Quantized outputs in the same order (layout differences are aligned).
        labels: One integer label per row of the classifier output, or None.
        accuracy: The profile's accuracy table.
    """
    import numpy as np

    metrics = compare_outputs(reference, candidate, names)
    label_index = _label_output(metrics, labels)
    agree = accuracy.int8_min_top1_agreement
    checks, float_acc, quant_acc = [], None, None
    for i, m in enumerate(metrics):
        if not m.finite:
            checks.append(Check(m.name, "finite", 0.0, 1.0))
        elif i == label_index:
            ref = np.asarray(reference[i])
            cand = np.asarray(candidate[i]).reshape(ref.shape)
            float_right = int(np.sum(np.argmax(ref, axis=1) == labels))
            quant_right = int(np.sum(np.argmax(cand, axis=1) == labels))
            float_acc, quant_acc = float_right / m.rows, quant_right / m.rows
            checks.append(
                _count_check(m.name, "relative_accuracy", quant_right, float_right, accuracy.int8_min_relative_accuracy)
            )
        elif m.top1_agreement is not None:
            agreeing = round(m.top1_agreement * m.rows)
            checks.append(_count_check(m.name, "top1_agreement", agreeing, m.rows, agree))
        else:
            checks.append(Check(m.name, "cosine", m.cosine, agree))
    return GateReport(
        checks=tuple(checks),
        outputs=tuple(metrics),
        samples=metrics[0].rows if metrics else 0,
        float_accuracy=float_acc,
        quantized_accuracy=quant_acc,
        label_output=metrics[label_index].name if label_index is not None else None,
    )


def allowed_misses(total: int, fraction: float) -> int:
    """Samples of ``total`` that may be lost under a ``fraction`` budget, rounded up to a whole sample.

    >>> allowed_misses(74, 0.99), allowed_misses(100, 0.99), allowed_misses(75, 1.0)
    (1, 1, 0)
    """
    return max(0, math.ceil((1.0 - fraction) * total - 1e-9))


def _count_check(output: str, kind: str, count: int, total: int, fraction: float) -> Check:
    """``count / total >= fraction``, with the allowance rounded up to whole samples."""
    if total <= 0:
        return Check(output, kind, 1.0, fraction, fraction)
    floor = (total - allowed_misses(total, fraction)) / total
    return Check(output, kind, count / total, floor, fraction)


def _label_output(metrics: Sequence[OutputMetrics], labels: np.ndarray | None) -> int | None:
    """The first classifier output with one label per row and a column for every label, or None."""
    if labels is None or len(labels) == 0:
        return None
    for i, m in enumerate(metrics):
        fits = m.rows == len(labels) and m.shape[1] > int(labels.max())
        if m.top1_agreement is not None and m.finite and fits:
            return i
    return None
