"""What a device check runs: how many validation samples, and which inference is counted or timed.

Where wall time means something (:data:`TIMED_RUNNERS`: a real device over SSH, native OpenVINO)
run.py times ``latency.runs`` inferences after ``latency.warmup``. Under emulation an inference's
instruction count is deterministic, so one counted inference says all that repetitions would. A
model whose inference is big (at least :data:`COUNT_FIRST_MACS` multiply-accumulates: minutes under
QEMU) has its first sample's inference counted (``--count-first``): it then runs once, not twice;
the count then includes the runtime's first-run setup, which the check says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.profiles import Profile

# Runners whose wall times mean something: only there are repeated timed runs worth their cost.
TIMED_RUNNERS = ("native", "ssh")
EMULATED_MACS = 3e9  # emulated work for the samples' outputs, when [emulation] samples is not set
COUNT_FIRST_MACS = 1e9  # from here one emulated inference costs over ~10 s: the first sample's is counted


def emulated_samples(profile: Profile, cost: Any, total: int) -> int:
    """How many validation samples run under emulation: ``[emulation] samples``, else as many as fit
    in :data:`EMULATED_MACS` multiply-accumulates (at least one): every sample of a small model, one
    of a 640x640 detector (each costs minutes under QEMU). ``cost`` None (uncountable): every sample."""
    if profile.emulation.samples:
        return min(total, int(profile.emulation.samples))
    macs = getattr(cost, "macs", None)
    return total if not macs else max(1, min(total, int(EMULATED_MACS // macs)))


def count_first(profile: Profile, cost: Any) -> bool:
    """Whether the first sample's (cold) inference is the counted one: ``[emulation] count_first``, else
    when one inference is at least :data:`COUNT_FIRST_MACS` (``cost`` None, uncountable: no)."""
    if profile.emulation.count_first is not None:
        return profile.emulation.count_first
    return bool(getattr(cost, "macs", None)) and cost.macs >= COUNT_FIRST_MACS


def run_args(profile: Profile, runner: str, bundle: Path, cost: Any = None) -> list[str]:
    """run.py's arguments other than file paths: timed runs where timing means something, else one counted block.

    ``emulation.warmup`` and ``emulation.runs`` (defaults 0 and 1: the samples warm the runtime up) set
    the emulated warm-up and counted inferences, unless the first sample's inference is counted
    (:func:`count_first`); a bundle whose run.py predates ``--count`` gets them as ``--runs``.
    """
    threads = ["--threads", str(profile.latency.threads)]
    threads += ["--precision", "f32"] if profile.runtime.value == "openvino" else []
    if runner in TIMED_RUNNERS:
        return ["--warmup", str(profile.latency.warmup), "--runs", str(profile.latency.runs), *threads]
    warmup, count = profile.emulation.warmup, profile.emulation.runs
    script = (bundle / "run.py").read_text()
    if "--count" not in script:
        return ["--warmup", str(warmup), "--runs", str(count), *threads]
    if "--count-first" in script and count_first(profile, cost):
        return ["--warmup", "0", "--runs", "0", "--count", "1", "--count-first", *threads]
    return ["--warmup", str(warmup), "--runs", "0", "--count", str(count), *threads]
