"""Running an emulator process: its output captured, its progress lines followed, and a way to stop it.

The bundle's ``run.py`` prints ``edgepack-progress DONE/TOTAL`` on stderr after each inference when
``EDGEPACK_PROGRESS=1``. :func:`run` takes those lines out of the captured stderr and reports them,
with the time left estimated from the inferences so far, through ``on_progress``.

Every process started here is registered until it ends, so that a run interrupted while device
checks run on worker threads can stop them all (:func:`stop_all`) instead of waiting for them.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from edgepack.errors import DeviceCheckError

PROGRESS_PREFIX = "edgepack-progress "
_LIVE: set[subprocess.Popen[str]] = set()
_LIVE_LOCK = threading.Lock()
_STOPPED = threading.Event()  # set by stop_all(): no new process starts until allow()


def run(
    cmd: list[str],
    *,
    cwd: Any,
    env: dict[str, str],
    timeout_s: float,
    preexec_fn: Callable[[], None] | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> tuple[int, str, str, float]:
    """Run ``cmd`` to the end; returns (exit code, stdout, stderr without progress lines, wall seconds).

    Args:
        on_progress: Called with (inferences done, expected, seconds since the start) for each
            progress line the process prints.

    Raises:
        DeviceCheckError: it ran longer than ``timeout_s`` (it is killed first).
    """
    start = time.perf_counter()
    with _LIVE_LOCK:  # started and registered at once: stop_all() sees every process or refuses it
        if _STOPPED.is_set():
            raise DeviceCheckError("the run was interrupted before this emulated run started.")
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only personality(2), no locks taken
        )
        _LIVE.add(proc)
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out, None, start), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err, on_progress, start), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise DeviceCheckError(
            f"the emulated run took over {timeout_s:.0f} s and was stopped.",
            hint="Emulated inference is 20-400x slower than the host: lower [emulation] samples/warmup, "
            "raise [emulation] timeout_s, or check on the device with --runner ssh://user@host.",
        ) from exc
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
        if proc.poll() is None:  # interrupted while waiting: do not leave the emulator running
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join()
    return proc.returncode, "".join(out), "".join(err), time.perf_counter() - start


def _drain(stream: Any, sink: list[str], on_progress: Callable[[int, int, float], None] | None, start: float) -> None:
    for line in stream:
        if line.startswith(PROGRESS_PREFIX):
            done, total = _progress(line)
            if on_progress is not None and total:
                with contextlib.suppress(Exception):  # a progress display never breaks the run
                    on_progress(done, total, time.perf_counter() - start)
            continue
        sink.append(line)
    stream.close()


def _progress(line: str) -> tuple[int, int]:
    try:
        done, total = line[len(PROGRESS_PREFIX) :].strip().split("/")
        return int(done), int(total)
    except ValueError:
        return 0, 0


ADDR_NO_RANDOMIZE = 0x0040000  # personality(2) flag, as ``setarch -R`` sets it


def no_aslr() -> None:
    """Run qemu without address randomisation: where qemu maps the guest's libraries and heap then repeats.

    Code whose path depends on addresses (hash tables seeded by an address, as Abseil's in ONNX
    Runtime are; alignment prologues) otherwise executes a different number of instructions each run.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(0xFFFFFFFF)
    if current != -1:
        libc.personality(current | ADDR_NO_RANDOMIZE)


def allow() -> None:
    """Let processes start again (a new run, after an interrupted one called :func:`stop_all`)."""
    _STOPPED.clear()


def stop_all() -> int:
    """Kill every emulator process still running and refuse new ones (a run was interrupted).

    Returns how many were running.
    """
    with _LIVE_LOCK:
        _STOPPED.set()
        live = list(_LIVE)
    for proc in live:
        if proc.poll() is None:
            proc.kill()
    return len(live)


def eta_message(name: str, done: int, total: int, elapsed_s: float) -> str:
    """``"rpi5-arm64: device check: inference 2/3, about 1 min left"`` (time left from the rate so far)."""
    left = elapsed_s / max(done, 1) * (total - done)
    when = f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"
    return f"{name}: device check: inference {done}/{total} done, {when} (from the emulated rate so far)"
