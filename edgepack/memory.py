"""Memory pre-checks: refuse a model that cannot fit in memory with a clear error, before an OOM kill.

The converters (TensorFlow, tf2onnx, onnx, OpenVINO) read a whole model into memory and hold its
converted copy beside it, and validation feeds a few samples of every input; a model whose file or
whose tensors need more than the memory available would otherwise end with the process killed by
the kernel, no message and no clean-up. A damaged file can claim such sizes too (a bit flip in a
tensor's shape). Setting ``EDGEPACK_NO_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgepack.artifact import TensorSpec
from edgepack.errors import ModelError

OVERRIDE_ENV = "EDGEPACK_NO_MEMORY_CHECK"
MODEL_COPIES = 2  # the model as loaded, and its converted copy
VALIDATION_SAMPLES = 8  # validation's random feeds (validate.random_samples' default count)
_CGROUP = Path("/sys/fs/cgroup")


def available_memory() -> int | None:
    """Bytes this process can still allocate: the system's available memory, capped by a cgroup limit.

    Returns None when it cannot be told (then nothing is refused).
    """
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_headroom()
    return available if limit is None else min(available, limit)


def _cgroup_headroom() -> int | None:
    """cgroup v2 ``memory.max - memory.current`` of this container, or None without a limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((_CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_bytes(path: Path) -> int:
    """Size of a model file, or of every file in a SavedModel folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def tensor_bytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes of one sample of each tensor (dynamic dims count 1; unknown dtypes 4 bytes an element)."""
    import numpy as np

    total = 0
    for spec in specs:
        try:
            itemsize = np.dtype(spec.dtype).itemsize
        except TypeError:
            itemsize = 4
        total += int(np.prod([d or 1 for d in spec.shape], dtype=object)) * itemsize
    return total


def check_fits(path: Path, needs: Mapping[str, int]) -> None:
    """Raise ModelError when ``needs`` (what -> bytes) add up to more than the memory available.

    Raises:
        ModelError: naming each need, the memory available, and what to do.
    """
    if overridden():
        return
    available = available_memory()
    total = sum(needs.values())
    if available is None or total <= available:
        return
    parts = ", ".join(f"{what} {_size(n)}" for what, n in needs.items() if n)
    raise ModelError(
        f"{path.name} needs about {_size(total)} of memory ({parts}), more than the {_size(available)} available.",
        hint=f"Free memory or use a machine with more, check the model's input shapes (a damaged file can claim "
        f"huge tensors), or set {OVERRIDE_ENV}=1 to try anyway.",
    )


def overridden() -> bool:
    """True when the user set ``EDGEPACK_NO_MEMORY_CHECK`` (to anything but 0)."""
    return os.environ.get(OVERRIDE_ENV, "") not in ("", "0")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
