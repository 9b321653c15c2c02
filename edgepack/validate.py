"""Validation: run the source and an artifact on the same inputs and compare their outputs.

Each model runs in its own runtime (the source usually in TensorFlow, the
artifact in LiteRT, ONNX Runtime or OpenVINO). Outputs are matched by position.
Every failing output is collected, then reported once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgepack.alignment import LAYOUT_PERMUTATIONS, gather, input_permutations, output_order, permute, size1_moved
from edgepack.errors import AccuracyError, DataError, ModelError
from edgepack.source_kind import Yardstick, yardstick

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact, TensorSpec
    from edgepack.profiles import Accuracy

# NHWC -> NCHW and NCHW -> NHWC.


@dataclass(frozen=True)
class OutputMetrics:
    """How far one candidate output is from the reference.

    Attributes:
        name: Output name (the reference's).
        shape: Shape compared (all samples, rows along axis 0).
        max_abs_error: Largest absolute difference.
        mean_abs_error: Mean absolute difference.
        cosine: Cosine similarity per row (axis 0), averaged; 1.0 for two zero rows, 0.0 for one.
        sqnr_db: Signal-to-quantization-noise ratio in dB; ``inf`` when identical.
        top1_agreement: Share of rows whose argmax agrees, for classifier outputs
            (2-D ``[N, C]`` with ``C > 1``); None otherwise.
        finite: False when the candidate has NaN/inf where the reference has finite values.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None = None
    finite: bool = True

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs_error": _json_float(self.max_abs_error),
            "mean_abs_error": _json_float(self.mean_abs_error),
            "cosine": _json_float(self.cosine),
            "sqnr_db": _json_float(self.sqnr_db),
            "top1_agreement": self.top1_agreement,
            "finite": self.finite,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of :func:`validate`.

    Attributes:
        outputs: Metrics per output, in the source's output order.
        passed: True when no output broke the tolerance.
        failures: One line per broken criterion (all of them, not just the first).
        tolerance: The profile's accuracy table used.
        reference_runtime: The runtime that ran the source model; reference_version its version.
        candidate_runtime: The runtime that ran the artifact; candidate_version its version.
        precision: The precision the artifact's runtime computed in (e.g. OpenVINO's hint).
        samples: Number of input samples compared.
        inputs: "given", or "random (seed N)" for seeded uniform [0, 1) inputs.
        input_permutations: Per input, the axes permutation applied to the source's
            input for the artifact (NHWC<->NCHW), or None.
        yardstick: The rule applied ("float" or "int8") and why (``edgepack.source_kind``).
    """

    outputs: tuple[OutputMetrics, ...]
    passed: bool
    failures: tuple[str, ...]
    tolerance: Mapping[str, float]
    reference_runtime: str
    reference_version: str
    candidate_runtime: str
    candidate_version: str
    precision: str
    samples: int
    inputs: str
    input_permutations: tuple[tuple[int, ...] | None, ...] = field(default=())
    yardstick: Yardstick | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "outputs": [m.to_dict() for m in self.outputs],
            "tolerance": dict(self.tolerance),
            "reference_runtime": self.reference_runtime,
            "reference_version": self.reference_version,
            "candidate_runtime": self.candidate_runtime,
            "candidate_version": self.candidate_version,
            "precision": self.precision,
            "samples": self.samples,
            "inputs": self.inputs,
            "input_permutations": [list(p) if p else None for p in self.input_permutations],
            **({"yardstick": self.yardstick.to_dict()} if self.yardstick else {}),
        }

    def raise_if_failed(self) -> None:
        """Raise AccuracyError naming every failing output with its figures and the tolerance."""
        if self.passed:
            return
        raise AccuracyError(
            f"{self.candidate_runtime} artifact is outside the accuracy budget over {self.samples} sample(s): "
            + "; ".join(self.failures)
            + ".",
            hint=(self.yardstick or Yardstick("float", "")).hint,
        )


# --------------------------------------------------------------------------- metrics


def compare_outputs(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], names: Sequence[str]
) -> list[OutputMetrics]:
    """Compare outputs position by position.

    Each array holds one output over all samples, rows along axis 0. A candidate
    whose 4-D shape is the NCHW<->NHWC permutation of the reference's is
    transposed back first.

    Args:
        reference: Outputs of the source model.
        candidate: Outputs of the artifact, in the same order.
        names: Output names, for reports.

    Returns:
        One :class:`OutputMetrics` per output.

    Raises:
        ModelError: The output counts differ, or shapes cannot be matched.
    """
    import numpy as np

    if not len(reference) == len(candidate) == len(names):
        raise ModelError(
            f"the source has {len(reference)} output(s), the artifact {len(candidate)}; they cannot be compared.",
            hint="Check that the conversion kept every output of the model.",
        )
    metrics = []
    for name, ref, cand in zip(names, reference, candidate, strict=True):
        ref = np.asarray(ref)
        cand = _align(name, ref.shape, np.asarray(cand))
        metrics.append(_metrics(name, ref.astype(np.float64), cand.astype(np.float64)))
    return metrics


def _align(name: str, shape: tuple[int, ...], cand: np.ndarray) -> np.ndarray:
    if cand.shape == shape:
        return cand
    for perm in LAYOUT_PERMUTATIONS:  # each is the other's inverse
        if cand.ndim == 4 and tuple(cand.shape[p] for p in perm) == shape:
            return cand.transpose(perm)
    if cand.size == math.prod(shape) and cand.squeeze().shape == tuple(d for d in shape if d != 1):
        return cand.reshape(shape)  # only unit dims differ, e.g. [N, C] vs [N, 1, 1, C]
    raise ModelError(
        f"output '{name}' has shape {list(cand.shape)} in the artifact, {list(shape)} in the source.",
        hint="Check the conversion's output layout and shapes.",
    )


def _metrics(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputMetrics:
    import numpy as np

    finite = bool(np.all(np.isfinite(cand) | ~np.isfinite(ref)))
    diff = np.abs(ref - cand)
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return OutputMetrics(
        name=name,
        shape=tuple(int(d) for d in ref.shape),
        max_abs_error=float(diff.max(initial=0.0)),
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine_similarity(ref, cand),
        sqnr_db=sqnr,
        top1_agreement=top1_agreement(ref, cand),
        finite=finite,
    )


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity per row (axis 0; a 0-/1-D array is one row), averaged over rows.

    Two zero rows count as 1.0 (identical); one zero row against a non-zero one as 0.0.
    """
    import numpy as np

    rows = reference.shape[0] if reference.ndim >= 2 else 1
    a = np.asarray(reference, dtype=np.float64).reshape(rows, -1)
    b = np.asarray(candidate, dtype=np.float64).reshape(rows, -1)
    norm_a = np.linalg.norm(a, axis=1)
    norm_b = np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    both = (norm_a > 0) & (norm_b > 0)
    cos = np.where(both, dots / np.where(both, norm_a * norm_b, 1.0), 0.0)
    cos = np.where((norm_a == 0) & (norm_b == 0), 1.0, cos)
    return float(np.clip(cos, -1.0, 1.0).mean()) if rows else 1.0


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Share of rows whose argmax agrees, for a classifier output (2-D ``[N, C]``, ``C > 1``), else None."""
    import numpy as np

    if reference.ndim != 2 or reference.shape[1] < 2 or reference.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))


def check_metrics(metrics: Sequence[OutputMetrics], tolerance: Accuracy) -> list[str]:
    """Every broken criterion, one line each.

    An output fails when its error is large in BOTH senses: ``max_abs_error >
    tolerance.max_abs_error`` AND ``cosine < tolerance.min_cosine``. Either alone
    is too strict: fp16 gives large absolute errors on large-magnitude outputs
    whose direction is intact, and near-zero outputs can lose cosine while their
    absolute error is negligible. A classifier output also fails when its top-1
    agreement is below ``tolerance.min_top1_agreement``. NaN/inf in the candidate
    (where the reference is finite) always fails.
    """
    failures = []
    for m in metrics:
        if not m.finite:
            failures.append(f"output '{m.name}' has NaN or inf values where the source's are finite")
            continue
        if m.max_abs_error > tolerance.max_abs_error and m.cosine < tolerance.min_cosine:
            failures.append(
                f"output '{m.name}': max_abs_error {m.max_abs_error:.3g} > {tolerance.max_abs_error:g} "
                f"and cosine {m.cosine:.6f} < {tolerance.min_cosine:g} (SQNR {m.sqnr_db:.1f} dB)"
            )
        if m.top1_agreement is not None and m.top1_agreement < tolerance.min_top1_agreement:
            failures.append(
                f"output '{m.name}': top-1 agreement {m.top1_agreement:.2%} < {tolerance.min_top1_agreement:.2%} "
                f"over {m.rows} row(s)"
            )
    return failures


# --------------------------------------------------------------------------- validate


def validate(
    source: Artifact,
    artifact: Artifact,
    samples: list[list[np.ndarray]] | None,
    tolerance: Accuracy,
    *,
    seed: int = 0,
    count: int = 8,
    precision: str = "f32",
    reference: Any = None,
) -> ValidationReport:
    """Run ``source`` and ``artifact`` in their own runtimes on the same inputs and compare.

    Args:
        source: The model the artifact was made from (the reference).
        artifact: The model to check.
        samples: Input samples, each a list of arrays in the source's input order
            with the model's batch size; None for ``count`` seeded random samples
            (uniform [0, 1), like the bundle's run.py) of the source's input shapes.
        tolerance: The profile's accuracy table (see :func:`check_metrics`; a quantized .tflite source is judged
            by its int8 criteria instead, see :mod:`edgepack.source_kind`).
        seed: Seed of the random samples.
        count: Number of random samples.
        precision: Inference precision hint for the artifact's runtime (OpenVINO).
        reference: An open session of ``source`` to reuse (one run validates many targets against it).

    Returns:
        The report; call ``raise_if_failed()`` to turn a failure into AccuracyError.

    Raises:
        DataError: The samples do not fit the source's inputs.
        ModelError: Inputs or outputs of the two models cannot be matched.
    """
    from edgepack.runtimes import open_session

    reference = reference or open_session(source, threads=1)
    candidate = open_session(artifact, threads=1, precision=precision)
    perms = input_permutations(reference.inputs, candidate.inputs)
    if samples is None:
        feeds, origin = random_samples(reference.inputs, seed=seed, count=count), f"random (seed {seed})"
    else:
        feeds, origin = _check_samples(samples, reference.inputs), "given"
    ref_runs, cand_runs = [], []
    names = [spec.name for spec in reference.outputs]
    order = output_order(names, candidate.outputs, artifact.meta.get("source_names") or {})
    for sample in feeds:
        ref_runs.append(reference.run(sample))
        outputs = candidate.run([permute(a, p) for a, p in zip(sample, perms, strict=True)])
        cand_runs.append([size1_moved(outputs[i], r) for i, r in zip(order, ref_runs[-1], strict=False)])
    metrics = compare_outputs(gather(ref_runs), gather(cand_runs), names)
    rule = yardstick(source, artifact)  # a quantized .tflite source is judged by the int8 criteria
    failures = check_metrics(metrics, tolerance) if rule.name == "float" else rule.int8_failures(metrics, tolerance)
    return ValidationReport(
        outputs=tuple(metrics),
        passed=not failures,
        failures=tuple(failures),
        tolerance=tolerance.model_dump(),
        reference_runtime=reference.runtime,
        reference_version=reference.version,
        candidate_runtime=candidate.runtime,
        candidate_version=candidate.version,
        precision=candidate.precision,
        samples=len(feeds),
        inputs=origin,
        input_permutations=tuple(perms),
        yardstick=rule,
    )


def random_samples(specs: Sequence[TensorSpec], *, seed: int = 0, count: int = 8) -> list[list[np.ndarray]]:
    """``count`` samples of uniform [0, 1) floats (0/1 for integer and bool inputs); dynamic dims become 1."""
    import numpy as np

    if count < 1:
        raise DataError(f"validation needs at least one sample, got count={count}.")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = []
        for spec in specs:
            shape = tuple(d or 1 for d in spec.shape)
            dtype = np.dtype(spec.dtype)
            if dtype.kind in "iub":
                sample.append(rng.integers(0, 2, size=shape).astype(dtype))
            else:
                sample.append(rng.random(shape).astype(dtype))
        samples.append(sample)
    return samples


def _check_samples(samples: list[list[np.ndarray]], specs: Sequence[TensorSpec]) -> list[list[np.ndarray]]:
    import numpy as np

    from edgepack.runtimes import check_feeds

    if not samples:
        raise DataError("no validation samples were given.", hint="Give at least one sample, or none for random ones.")
    checked = []
    for i, sample in enumerate(samples):
        try:
            arrays = check_feeds(specs, sample)
        except DataError as exc:
            raise DataError(
                f"validation sample {i}: {exc.message}",
                hint="Give samples of the model's input shapes (with its batch size), in its input order.",
            ) from exc
        checked.append([np.require(a, dtype=s.dtype, requirements="C") for s, a in zip(specs, arrays, strict=True)])
    return checked


def _json_float(value: float) -> float | str:
    """A float for JSON: finite as is, else "inf", "-inf" or "nan" (JSON has no such numbers)."""
    return value if math.isfinite(value) else str(value)
