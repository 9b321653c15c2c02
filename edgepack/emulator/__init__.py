"""Emulator backends: run a bundle's ``run.py`` where the device's code can run.

Each backend is a :class:`Runner`; :func:`get_runner` looks the backend up in
:data:`RUNNERS` by name (a profile's ``emulation.mode`` by default). ``native``
runs on this host; ``qemu-user`` runs ARM bundles under QEMU user-mode
emulation in a cached Debian guest (see :mod:`edgepack.emulator.qemu`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.emulator.base import RUN_SCRIPT, Runner, RunResult, int_arg, runs_from_args
from edgepack.errors import DeviceCheckError, UsageError

__all__ = [
    "RUN_SCRIPT",
    "RUNNERS",
    "LocalRunner",
    "QemuRunner",
    "RunResult",
    "Runner",
    "get_runner",
    "int_arg",
    "parse_runner",
    "runs_from_args",
]


class LocalRunner:
    """Runs the bundle natively with this Python (profiles whose device is the host's architecture)."""

    name = "native"

    def __init__(self, profile: Any = None, *, timeout_s: float = 600, **_options: Any) -> None:
        self.timeout_s = timeout_s

    def run(self, bundle_dir: Path, args: list[str], *, env: dict[str, str]) -> RunResult:
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(bundle_dir) / RUN_SCRIPT), *args],
                cwd=bundle_dir,
                env={**os.environ, "PYTHONHASHSEED": "0", **env},
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceCheckError(f"the native run took over {self.timeout_s:.0f} s and was stopped.") from exc
        wall = time.perf_counter() - start
        return RunResult(proc.returncode, proc.stdout, proc.stderr, wall, note="not counted natively", runner=self.name)


class QemuRunner:
    """Runs the bundle under QEMU user-mode emulation; the guest is set up (or found cached) on first use.

    Args:
        profile: The target profile (``emulation.mode = "qemu-user"``).
        progress: Called with one-line messages while the guest is being built.
        count_instructions: Count guest instructions per inference when the plugin is available.
        timeout_s: Kill a run after this long (default: the profile's ``[emulation] timeout_s``).
        root: Cache root (default: ``$EDGEPACK_CACHE``, see :func:`edgepack.emulator.cache.cache_root`).
    """

    name = "qemu-user"

    def __init__(
        self,
        profile: Any,
        *,
        progress: Callable[[str], None] | None = None,
        count_instructions: bool = True,
        timeout_s: float | None = None,
        root: Path | None = None,
    ) -> None:
        self.profile, self.progress, self.root = profile, progress, root
        self.count_instructions = count_instructions
        self.timeout_s = timeout_s or profile.emulation.timeout_s
        self._env: Any = None
        self._last_progress = 0.0

    def setup(self) -> Any:
        """Build or find the guest environment (:class:`edgepack.emulator.qemu.EmuEnv`)."""
        from edgepack.emulator import qemu

        if self._env is None:
            self._env = qemu.setup(self.profile, progress=self.progress, root=self.root)
        return self._env

    def identity(self) -> dict[str, Any]:
        """What decides this runner's results besides the bundle and inputs: guest, qemu, plugin and ``-cpu``."""
        from edgepack.emulator import plugin

        env = self.setup()
        return {
            "env": env.path.name,
            "qemu": env.qemu.path.name,
            "plugin": plugin.source_digest() if self.count_instructions else None,
            "cpu": self.profile.emulation.qemu_cpu,
            "arch": self.profile.emulation.qemu_arch,
            "cores": os.cpu_count(),  # the guest sees them (see guest.cpu_view)
        }

    def run(self, bundle_dir: Path, args: list[str], *, env: dict[str, str]) -> RunResult:
        from edgepack.emulator import qemu

        self._last_progress = time.monotonic()
        return qemu.run(
            self.setup(),
            self.profile,
            Path(bundle_dir) / RUN_SCRIPT,
            list(args),
            count_instructions=self.count_instructions,
            extra_env=env,
            timeout_s=self.timeout_s,
            on_progress=self._on_progress if self.progress is not None else None,
        )

    def _on_progress(self, done: int, total: int, elapsed_s: float) -> None:
        """A line per inference still to come, at most every 10 s, with the time left from the rate so far."""
        from edgepack.emulator.process import eta_message

        now = time.monotonic()
        if done >= total or now - self._last_progress < 10:
            return
        self._last_progress = now
        assert self.progress is not None
        self.progress(eta_message(self.profile.name, done, total, elapsed_s))


# Backend name -> factory(profile, **options). docker and ssh register here too.
RUNNERS: dict[str, Callable[..., Runner]] = {
    "native": LocalRunner,
    "qemu-user": QemuRunner,
    "docker": lambda profile, **options: _docker().DockerRunner.for_profile(profile, **options),
    "ssh": lambda profile, **options: _ssh().SshRunner.for_profile(profile, **options),
}


def _docker() -> Any:
    from edgepack.emulator import docker

    return docker


def _ssh() -> Any:
    from edgepack.emulator import ssh

    return ssh


def parse_runner(spec: str | None) -> tuple[str | None, dict[str, Any]]:
    """``--runner`` value -> (backend name, options): ``qemu``, ``native``, ``docker`` or ``ssh://user@host``."""
    if spec is None:
        return None, {}
    if spec.startswith("ssh://"):
        return "ssh", {"url": spec}
    return {"qemu": "qemu-user"}.get(spec, spec), {}


def get_runner(profile: Any, kind: str | None = None, **options: Any) -> Runner:
    """The runner for ``profile``: the backend ``kind``, or the one its ``emulation.mode`` names.

    Raises:
        DeviceCheckError: the profile cannot be emulated (``emulation.mode = "none"``).
        UsageError: no backend is called ``kind``.
    """
    kind = kind or profile.emulation.mode
    if kind == "none":
        raise DeviceCheckError(f"profile {profile.name} cannot be emulated: {profile.emulation.reason}")
    factory = RUNNERS.get(kind)
    if factory is None:
        raise UsageError(f"unknown emulator {kind!r}.", hint=f"Known emulators: {', '.join(sorted(RUNNERS))}.")
    return factory(profile, **options)
