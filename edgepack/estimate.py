"""Device latency figures from an emulated run, each labelled for what it is.

Four figures come out of a device check under QEMU (see ``docs/latency.md``):

1. emulated wall time (:func:`emulated_wall_time`): what the run took under QEMU
   TCG on an x86_64 host. It is *not* device time: TCG is 20-400x slower than
   the device, and the factor depends on the model.
2. executed guest instructions per inference: counted by the qemu plugin, the
   same to about 0.002 % from run to run and host to host: the regression metric.
3. an estimate for the device (:func:`device_estimate`) from that count and the
   profile's device facts: ``t = instructions / (ipc * clock)``, with a stated
   uncertainty band. The profile's latency budget applies to this figure
   (:func:`check_budget`).
4. a roofline lower bound (:func:`roofline`) from the model's MACs and weight
   bytes and the device's peak compute and memory bandwidth.

Everything here is pure arithmetic on values the caller passes in: no
framework imports, no I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edgepack.errors import LatencyBudgetError, ProfileError

EMULATED_LABEL = "emulated (QEMU TCG on x86_64), not device time"
COUNT_LABEL = "executed guest instructions per inference (stable across runs and hosts: the regression metric)"
ESTIMATE_LABEL = "estimate for the device from the instruction count and the profile's device facts, not measured"
ROOFLINE_LABEL = "roofline lower bound from MACs, weight bytes, peak compute and bandwidth: the device cannot be faster"

# Multiplicative uncertainty of an ipc that was not calibrated against a published
# measurement: the true effective IPC is taken to lie in [ipc / 2, ipc * 2].
DEFAULT_IPC_UNCERTAINTY = 2.0

# Amdahl's law for threads > 1: S(n) = 1 / ((1 - p) + p / n). The instruction count is
# single-threaded, so more threads only divide the time. The published 1- vs 4-thread
# MobileNet v2 runs span p = 0.4 (ncnn on a Raspberry Pi 3B+ / 4: 1.42x / 1.51x, their
# shared LPDDR bus saturates) to p = 0.88 (XNNPACK on a Pixel 2: 53 -> 18 ms). See docs/latency.md.
PARALLEL_FRACTION = 0.75
PARALLEL_FRACTION_RANGE = (0.4, 0.95)

PRECISIONS = ("fp32", "fp16", "int8", "dynamic")


@dataclass(frozen=True)
class CoreFacts:
    """What a CPU core's SIMD unit does per 128-bit instruction, relative to fp32 FMA.

    Attributes:
        isa: Architecture version (for the report).
        dotprod: ARMv8.2 DotProd (SDOT/UDOT): 16 int8 MACs per instruction, 4x an fp32 FMLA's 4.
        fp16_arith: ARMv8.2 FP16 arithmetic: 8 fp16 FMAs per instruction, 2x fp32.
    """

    isa: str
    dotprod: bool
    fp16_arith: bool


# Keyed by the name found (case-insensitively) in ``device.cpu``. Facts from Arm's
# technical reference manuals: A53 and A72 implement ARMv8.0-A (no DotProd, no FP16
# arithmetic); A76 and A78 implement ARMv8.2-A with both.
CORES: dict[str, CoreFacts] = {
    "cortex-a53": CoreFacts("ARMv8.0-A", dotprod=False, fp16_arith=False),
    "cortex-a72": CoreFacts("ARMv8.0-A", dotprod=False, fp16_arith=False),
    "cortex-a76": CoreFacts("ARMv8.2-A", dotprod=True, fp16_arith=True),
    "cortex-a78": CoreFacts("ARMv8.2-A", dotprod=True, fp16_arith=True),
}


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Estimate:
    """Estimated device latency of one inference, with its uncertainty band.

    Attributes:
        value_ms: The estimate.
        low_ms: Lower end of the band (ipc * uncertainty, best thread scaling).
        high_ms: Upper end of the band (ipc / uncertainty, worst thread scaling).
        formula: The formula with the numbers put in.
        inputs: Every input the formula used.
        label: What the figure is (and is not).
    """

    value_ms: float
    low_ms: float
    high_ms: float
    formula: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ESTIMATE_LABEL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = dict(self.inputs)
        return data


@dataclass(frozen=True)
class Roofline:
    """Roofline lower bound on one inference: ``max(compute_ms, memory_ms)``.

    Attributes:
        bound_ms: The lower bound.
        limit: ``"compute"`` or ``"memory"``: the larger term.
        compute_ms: ``2 * macs / (peak_gflops * compute_scale * cores_used)``.
        memory_ms: ``weight_bytes / mem_bandwidth`` (weights streamed from DRAM once).
        activation_ms: ``activation_bytes / mem_bandwidth``: what the activations would add if every
            one went through DRAM once. Reported only; caches can hold them, so it is not in the bound.
        precision: Precision the compute peak was scaled for.
        compute_scale: Multiplier on the fp32 peak for that precision (see :func:`compute_scale`).
        formula: The formula with the numbers put in.
        inputs: Every input the formula used.
        notes: Assumptions that apply to this device.
        label: What the figure is.
    """

    bound_ms: float
    limit: str
    compute_ms: float
    memory_ms: float
    activation_ms: float
    precision: str
    compute_scale: float
    formula: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    label: str = ROOFLINE_LABEL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = dict(self.inputs)
        data["notes"] = list(self.notes)
        return data


# --------------------------------------------------------------------------- (a) emulated wall time


def emulated_wall_time(times_ms: Sequence[float]) -> dict[str, Any]:
    """Median and spread of an emulated run's times per inference (run.py's timed runs, or its counted block).

    Raises:
        ValueError: no times.
    """
    return {"label": EMULATED_LABEL, **spread(times_ms)}


def spread(times_ms: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, population stdev and count of run times (ms).

    Raises:
        ValueError: no times.
    """
    if not times_ms:
        raise ValueError("no run times to summarize")
    ordered = sorted(float(t) for t in times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "stdev_ms": statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
        "runs": len(ordered),
    }


# --------------------------------------------------------------------------- (c) device estimate


def speedup(threads: int, parallel_fraction: float = PARALLEL_FRACTION) -> float:
    """Amdahl's law: how much faster ``threads`` threads run than one."""
    return 1.0 / ((1.0 - parallel_fraction) + parallel_fraction / threads)


def ipc_uncertainty(device: Any) -> float:
    """The device's multiplicative ipc uncertainty (``device.ipc_uncertainty``), else the default."""
    value = getattr(device, "ipc_uncertainty", None)
    return float(value) if value else DEFAULT_IPC_UNCERTAINTY


def parallel_fraction(device: Any) -> tuple[float, tuple[float, float]]:
    """The device's Amdahl parallel fraction and band (``device.parallel_fraction[_range]``), else the generic ones."""
    value = getattr(device, "parallel_fraction", None)
    band = getattr(device, "parallel_fraction_range", None)
    return (
        float(value) if value is not None else PARALLEL_FRACTION,
        (float(band[0]), float(band[1])) if band else PARALLEL_FRACTION_RANGE,
    )


def device_estimate(instructions_per_inference: int, device: Any, *, threads: int = 1) -> Estimate:
    """Estimate the device's latency from the single-thread instruction count of one inference.

    ``t1 = instructions / (ipc * clock)``; with more threads ``t = t1 / S(n)`` (Amdahl, ``n`` at most
    ``device.cores``). The band takes ipc in ``[ipc / u, ipc * u]`` (``u`` from :func:`ipc_uncertainty`)
    and, for ``n > 1``, the parallel fraction in the device's band (:func:`parallel_fraction`; by
    default :data:`PARALLEL_FRACTION` in :data:`PARALLEL_FRACTION_RANGE`).

    Args:
        instructions_per_inference: Guest instructions of one inference, counted single-threaded.
        device: The profile's ``device`` (needs ``ipc``, ``clock_ghz``, ``cores``, ``name``).
        threads: Threads the device runs the model with.

    Raises:
        ProfileError: the device has no ``ipc``.
        ValueError: a count or thread number that is not positive.
    """
    if isinstance(instructions_per_inference, bool) or int(instructions_per_inference) <= 0:
        raise ValueError(f"instructions per inference must be a positive integer, got {instructions_per_inference!r}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if not device.ipc:
        raise ProfileError(
            f"device {device.name!r} has no ipc, so its latency cannot be estimated from an instruction count.",
            hint="Add `ipc = ...` to the profile's [device] table (see docs/latency.md for how to choose it).",
        )
    insns, ipc, ghz = int(instructions_per_inference), float(device.ipc), float(device.clock_ghz)
    u = ipc_uncertainty(device)
    n = min(int(threads), int(device.cores))
    p, (p_low, p_high) = parallel_fraction(device)
    t1_ms = insns / (ipc * ghz * 1e6)
    value = t1_ms / speedup(n, p)
    low = t1_ms / u / (speedup(n, p_high) if n > 1 else 1.0)
    high = t1_ms * u / (speedup(n, p_low) if n > 1 else 1.0)
    formula = f"t = N / (IPC * f) = {insns:,} / ({ipc:g} * {ghz:g} GHz) = {t1_ms:.2f} ms"
    if n > 1:
        formula += f"; / S({n}) = {speedup(n, p):.2f} with S(n) = 1 / ((1 - p) + p / n)"
        formula += f", p = {p:g} in [{p_low:g}, {p_high:g}]"
    formula += f"; band: IPC in [IPC / {u:g}, IPC * {u:g}]"
    inputs = {
        "instructions_per_inference": insns,
        "ipc": ipc,
        "ipc_uncertainty": u,
        "clock_ghz": ghz,
        "threads": n,
        "parallel_fraction": p if n > 1 else None,
        "device": device.name,
    }
    return Estimate(value, low, high, formula, inputs)


def check_budget(estimate: Estimate, budget_ms: float | None, target: str) -> dict[str, Any]:
    """Apply the profile's latency budget to the device estimate.

    Returns:
        ``{"budget_ms", "estimate_ms", "within_budget"}``; ``within_budget`` is None without a budget.

    Raises:
        LatencyBudgetError: the estimate is over the budget.
    """
    if budget_ms is None:
        return {"budget_ms": None, "estimate_ms": estimate.value_ms, "within_budget": None}
    if estimate.value_ms > budget_ms:
        raise LatencyBudgetError(
            f"{target}: estimated device latency {estimate.value_ms:.1f} ms (band {estimate.low_ms:.1f}-"
            f"{estimate.high_ms:.1f} ms) is over the latency budget of {budget_ms:g} ms.",
            hint="Quantize to int8, use a smaller model, or raise latency.budget_ms in the profile.",
        )
    return {"budget_ms": budget_ms, "estimate_ms": estimate.value_ms, "within_budget": True}


# --------------------------------------------------------------------------- (d) roofline


def core_facts(device: Any) -> CoreFacts | None:
    """The :data:`CORES` entry named in ``device.cpu``, or None for a core not in the table."""
    cpu = (getattr(device, "cpu", "") or "").lower().replace(" ", "-")
    return next((facts for name, facts in CORES.items() if name in cpu), None)


def compute_scale(device: Any, precision: str) -> tuple[float, str]:
    """Multiplier on the device's fp32 peak for ``precision``, and the rule that gave it.

    Each multiplier is the most the core's ISA allows per instruction, so the roofline stays a
    lower bound whatever kernels the runtime picks: int8 (and LiteRT's dynamic range, whose
    hybrid kernels multiply int8) is 4x with DotProd (16 int8 MACs per SDOT vs 4 per FMLA) and
    2x without it (8 16-bit lanes per SMLAL); fp16 is 2x with ARMv8.2 FP16 arithmetic, else 1x
    (the runtime computes in fp32). Cores not in :data:`CORES` get the generic 1x / 1x / 2x.
    """
    facts = core_facts(device)
    if precision == "fp32":
        return 1.0, "fp32 peak"
    if facts is None:
        if precision == "fp16":
            return 1.0, "generic rule: fp16 at the fp32 peak"
        return 2.0, "generic rule: int8 at 2x the fp32 peak"
    if precision == "fp16":
        if facts.fp16_arith:
            return 2.0, f"{facts.isa} FP16 arithmetic: 2x"
        return 1.0, f"{facts.isa}, no FP16 arithmetic: 1x"
    if facts.dotprod:
        return 4.0, f"{facts.isa} DotProd (SDOT): 4x"
    return 2.0, f"{facts.isa}, no DotProd (SMLAL 8x16-bit): 2x"


def roofline(cost: Any, device: Any, *, precision: str, threads: int = 1) -> Roofline:
    """Lower bound on one inference: ``max(2 * MACs / peak, weight_bytes / bandwidth)``.

    ``device.peak_gflops`` is one core's fp32 peak; it is scaled by :func:`compute_scale` and by the
    cores in use (``threads``, at most ``device.cores``). The memory term counts the weights only
    (each read from DRAM once per inference, true when they exceed the last-level cache) and not
    the activations, which caches may hold; element-wise ops are not in ``cost.macs``. Both
    omissions keep the bound a bound.

    Args:
        cost: From :mod:`edgepack.macs` (``macs``, ``weight_bytes``, ``activation_bytes``).
        device: The profile's ``device`` (``peak_gflops``, ``mem_bandwidth_gbs``, ``cpu``, ``cores``).
        precision: fp32, fp16, int8 or dynamic (a string or a ``Precision``).
        threads: Cores the runtime uses.

    Raises:
        ProfileError: the device has neither a peak nor a bandwidth.
        ValueError: an unknown precision.
    """
    precision = str(getattr(precision, "value", precision)).lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if not device.peak_gflops and not device.mem_bandwidth_gbs:
        raise ProfileError(
            f"device {device.name!r} has neither peak_gflops nor mem_bandwidth_gbs: no roofline.",
            hint="Add them to the profile's [device] table.",
        )
    scale, rule = compute_scale(device, precision)
    cores = max(1, min(int(threads), int(device.cores)))
    flops = 2 * int(cost.macs)
    peak = (device.peak_gflops or 0.0) * scale * cores
    bandwidth = device.mem_bandwidth_gbs or 0.0
    compute_ms = flops / (peak * 1e6) if peak else 0.0
    memory_ms = cost.weight_bytes / (bandwidth * 1e6) if bandwidth else 0.0
    activation_ms = cost.activation_bytes / (bandwidth * 1e6) if bandwidth else 0.0
    limit = "compute" if compute_ms >= memory_ms else "memory"
    formula = (
        f"max(2 * {int(cost.macs):,} MAC / ({device.peak_gflops or 0:g} GFLOP/s * {scale:g} * {cores}) = "
        f"{compute_ms:.2f} ms, {int(cost.weight_bytes):,} B / {bandwidth:g} GB/s = {memory_ms:.2f} ms)"
    )
    notes = [f"compute scale: {rule}", "memory term: weights only, read once per inference"]
    if not device.peak_gflops or not device.mem_bandwidth_gbs:
        notes.append("the profile gives only one of peak_gflops and mem_bandwidth_gbs: the other term is 0")
    inputs = {
        "macs": int(cost.macs),
        "weight_bytes": int(cost.weight_bytes),
        "activation_bytes": int(cost.activation_bytes),
        "peak_gflops_fp32_per_core": device.peak_gflops,
        "mem_bandwidth_gbs": device.mem_bandwidth_gbs,
        "cores_used": cores,
        "device": device.name,
    }
    bound = max(compute_ms, memory_ms)
    return Roofline(bound, limit, compute_ms, memory_ms, activation_ms, precision, scale, formula, inputs, tuple(notes))


# --------------------------------------------------------------------------- all four


def latency_figures(
    *,
    times_ms: Sequence[float],
    instructions: int | None,
    cost: Any | None,
    device: Any,
    precision: str,
    threads: int = 1,
    count_note: str = "",
) -> tuple[dict[str, Any], Estimate | None]:
    """The four labelled latency figures of one emulated device check, for the report.

    Figures that cannot be computed (no instruction count, no ipc, no cost) are None, with the
    reason under ``notes``. The budget is not applied here: pass the returned estimate to
    :func:`check_budget` once the report is written.

    Returns:
        The figures (a JSON-ready dict) and the :class:`Estimate` (None when there is none).
    """
    notes: list[str] = []
    estimate = bound = None
    if instructions is None:
        notes.append(f"no instruction count ({count_note or 'not counted'}): no device estimate")
    elif not device.ipc:
        notes.append(f"device {device.name!r} has no ipc: no device estimate")
    else:
        estimate = device_estimate(instructions, device, threads=threads)
    if cost is not None and (device.peak_gflops or device.mem_bandwidth_gbs):
        bound = roofline(cost, device, precision=precision, threads=threads)
    if estimate is not None and bound is not None and estimate.value_ms < bound.bound_ms:
        notes.append("the estimate is below the roofline bound: the device's ipc is too optimistic for this model")
    figures = {
        "emulated": emulated_wall_time(times_ms) if times_ms else None,
        "instructions": {"label": COUNT_LABEL, "per_inference": instructions} if instructions is not None else None,
        "estimate": estimate.to_dict() if estimate else None,
        "roofline": bound.to_dict() if bound else None,
        "notes": notes,
    }
    return figures, estimate
