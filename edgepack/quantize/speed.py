"""Int8 must pay: time the float and the quantized artifact on this host, in their own runtime.

Both run in the target's runtime (LiteRT, ONNX Runtime, OpenVINO) with one thread, the profile's
warm-up and run counts, on the same held-out sample. The figures are a host proxy, not the
device: they say whether the quantized graph is cheaper to run, not how fast the device is.
They are wall-clock measurements, so they live under the section's ``"latency"`` key, which the
pipeline moves out of the reproducible manifest.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgepack.errors import LatencyBudgetError

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact, TensorSpec
    from edgepack.profiles import Profile

THREADS = 1
MIN_TOTAL_MS = 200.0  # sub-millisecond models are timed over at least this long, or the ratio is noise
MAX_RUNS = 20000


def compare_latency(
    float_artifact: Artifact,
    quantized: Artifact,
    feeds: Sequence[np.ndarray],
    inputs: Sequence[TensorSpec],
    *,
    mode: str,
    profile: Profile,
) -> dict[str, Any]:
    """Median latency of both artifacts on this host.

    Args:
        float_artifact: The float model in the target's format.
        quantized: The quantized model.
        feeds: One sample, in the source's input order and layout.
        inputs: The source's input specs (the layout ``feeds`` are in).
        mode: The quantization mode ("int8", "fp16", "dynamic").
        profile: Supplies warm-up and run counts (``[latency]``).

    Returns:
        ``{float_ms, int8_ms, ratio, ...}``: ``int8_ms`` is the quantized model's median (whatever
        the mode) and ``ratio`` is ``float_ms / int8_ms`` (above 1: the quantized model is faster).
    """
    from edgepack.alignment import input_permutations, permute
    from edgepack.runtimes import open_session

    timed, runtime = [], ""
    for artifact in (float_artifact, quantized):
        # Integer I/O is fed and read as integers, so the timing is the model's, not numpy's (de)quantizing.
        session = open_session(artifact, threads=THREADS, raw_outputs=True)
        perms = input_permutations(inputs, session.inputs)
        sample = [permute(a, p) for a, p in zip(feeds, perms, strict=True)]
        sample = _native(sample, session.inputs, artifact.meta.get("quant_params", {}))
        timed.append(_time(session, sample, warmup=profile.latency.warmup, runs=profile.latency.runs))
        runtime = f"{session.runtime} {session.version}"
    (float_ms, float_runs), (quant_ms, quant_runs) = timed
    return {
        "mode": mode,
        "float_ms": round(float_ms, 4),
        "int8_ms": round(quant_ms, 4),
        "ratio": round(float_ms / quant_ms, 3) if quant_ms > 0 else None,
        "runtime": runtime,
        "threads": THREADS,
        "runs": {"float": float_runs, "int8": quant_runs},
        "warmup": profile.latency.warmup,
        "statistic": "median",
        "label": f"host ({platform.machine()}) proxy, not the device",
    }


def _native(sample: list[np.ndarray], specs: Sequence[TensorSpec], params: dict[str, Any]) -> list[np.ndarray]:
    """Float feeds quantized once to the input tensor's integer type (``quant_params``), others as they are."""
    import numpy as np

    native = []
    for spec, array in zip(specs, sample, strict=True):
        p = params.get(spec.name) or {}
        if p.get("scale") and np.issubdtype(np.dtype(p["dtype"]), np.integer):
            info = np.iinfo(p["dtype"])
            q = np.round(array.astype(np.float64) / p["scale"] + p["zero_point"])
            array = np.clip(q, info.min, info.max).astype(p["dtype"])
        native.append(np.require(array, requirements="C"))
    return native


def _time(session: Any, sample: list[np.ndarray], *, warmup: int, runs: int) -> tuple[float, int]:
    """Median ms and the runs it took: a model too fast for ``runs`` to fill MIN_TOTAL_MS is timed again, longer."""
    from edgepack.runtimes import benchmark

    stats = benchmark(session, sample, warmup=warmup, runs=runs)
    if stats.median_ms * runs >= MIN_TOTAL_MS:
        return stats.median_ms, runs
    more = min(MAX_RUNS, math.ceil(MIN_TOTAL_MS / max(stats.median_ms, 1e-4)))
    return benchmark(session, sample, warmup=0, runs=more).median_ms, more


def check_speed(latency: dict[str, Any], *, mode: str, must_be_faster: bool) -> list[str]:
    """Warnings when an int8 model is not faster than float on this host.

    Raises:
        LatencyBudgetError: int8 is not faster and ``must_be_faster`` (``quantize.must_be_faster``).
    """
    ratio = latency.get("ratio")
    if mode != "int8" or ratio is None or ratio > 1.0:
        return []
    message = (
        f"INT8 IS NOT FASTER on this host: {latency['int8_ms']:.3f} ms vs float {latency['float_ms']:.3f} ms "
        f"({latency['runtime']}, {latency['threads']} thread); the device may differ, measure it there"
    )
    if must_be_faster:
        raise LatencyBudgetError(
            message + ".",
            hint="Keep precision fp32 for this model, or drop quantize.must_be_faster from the profile.",
        )
    return [message]
