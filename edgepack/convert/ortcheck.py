"""Run two ONNX models on the same inputs in onnxruntime and say whether their outputs agree.

Used to accept a rewritten graph (a simplified one, one at a lower opset) only when
it computes what the original does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgepack.artifact import TensorSpec
from edgepack.deps import require

RTOL, ATOL = 1e-4, 1e-5

Feeds = list[dict[str, np.ndarray]]
Outputs = list[list[np.ndarray]]


def random_array(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """A random array for a static input: normal floats, 0/1 integers (often indices), random bools."""
    dtype = np.dtype(spec.dtype)
    shape = tuple(d if d is not None else 1 for d in spec.shape)  # a dim left dynamic is fed at 1
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_feeds(inputs: Sequence[TensorSpec], seed: int, count: int = 2) -> Feeds:
    """``count`` input dicts drawn from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [{spec.name: random_array(spec, rng) for spec in inputs} for _ in range(count)]


def run_onnx(model: Any, feeds: Feeds) -> Outputs:
    """Outputs of an in-memory ``ModelProto`` for each feed, on one CPU thread."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def compare(reference: Outputs, candidate: Outputs, rtol: float = RTOL, atol: float = ATOL) -> tuple[float, str | None]:
    """Largest absolute difference, and why the outputs disagree (None when they agree)."""
    worst = 0.0
    for ref_outputs, cand_outputs in zip(reference, candidate, strict=True):
        if len(ref_outputs) != len(cand_outputs):
            return float("inf"), f"{len(cand_outputs)} outputs instead of {len(ref_outputs)}"
        for index, (ref, cand) in enumerate(zip(ref_outputs, cand_outputs, strict=True)):
            ref, cand = np.asarray(ref), np.asarray(cand)
            if ref.shape != cand.shape:
                return float("inf"), f"output {index} has shape {list(cand.shape)} instead of {list(ref.shape)}"
            if ref.dtype.kind not in "fc":
                if not np.array_equal(ref, cand):
                    return float("inf"), f"output {index} differs"
                continue
            diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
            worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
            if not np.allclose(cand, ref, rtol=rtol, atol=atol, equal_nan=True):
                return worst, f"outputs differ (max abs diff {worst:.3g}, tolerance atol {atol} + rtol {rtol})"
    return worst, None
