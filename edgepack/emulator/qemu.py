"""QEMU user-mode emulation: build a Debian guest environment rootlessly, run bundle scripts in it.

:func:`setup` gets a qemu (from PATH, else Debian's ``qemu-user`` fetched into
the cache), builds the counting plugin if it can, and builds the guest: the
profile's Debian release/architecture with Python and ``emulation.debs``
unpacked into a sysroot, plus ``emulation.wheels`` from PyPI unzipped into its
``/opt/site``. :func:`run` runs a script under ``qemu-<arch> -cpu <qemu_cpu>
-L <sysroot>``. No ARM code runs at setup, and nothing needs root.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack.emulator import cache, debian, guest
from edgepack.emulator import plugin as edgecount
from edgepack.emulator.base import RunResult, int_arg, runs_from_args
from edgepack.errors import DeviceCheckError, EdgepackError, UsageError

TOOLS_RELEASE = "bookworm"  # qemu 7.2: its dynamic qemu-user loads plugins
QEMU_ARCHES = ("aarch64", "arm")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class QemuTool:
    """A qemu-user installation: binaries per guest arch, how to launch them, the plugin."""

    path: Path
    stamp: dict[str, Any]
    cache_hit: bool = True

    def command(self, qemu_arch: str) -> list[str]:
        """The argv prefix that starts ``qemu-<qemu_arch>``."""
        binary = self._abs(self.stamp["binaries"][qemu_arch])
        loader = self.stamp.get("loader")
        if loader:  # a fetched binary whose libraries the host lacks: Debian's own ld.so loads them
            return [self._abs(loader), "--library-path", self._abs(self.stamp["library_path"]), binary]
        return [binary]

    @property
    def plugin(self) -> Path | None:
        return Path(self._abs(self.stamp["plugin"])) if self.stamp.get("plugin") else None

    def _abs(self, value: str) -> str:
        return str(self.path / value) if not os.path.isabs(value) else value


@dataclass(frozen=True)
class EmuEnv:
    """A ready guest environment (see :func:`setup`)."""

    path: Path
    stamp: dict[str, Any]
    qemu: QemuTool
    cache_hit: bool
    setup_s: float

    @property
    def sysroot(self) -> Path:
        return self.path / "sysroot"


def env_name(profile: Any) -> tuple[str, dict[str, Any]]:
    """The cache entry name and key of the guest environment a profile needs."""
    em = profile.emulation
    key = cache.env_key(
        debian_arch=em.debian_arch,
        debian_release=em.debian_release,
        python=em.python,
        wheels=list(em.wheels),
        debs=list(em.debs),
    )
    return cache.entry_name(f"{em.debian_arch}-{em.debian_release}-py{em.python}", key), key


def setup(profile: Any, *, progress: Progress | None = None, root: Path | None = None) -> EmuEnv:
    """Build (or find in the cache) the qemu and guest environment for ``profile``.

    Args:
        profile: An ``edgepack.profiles.Profile`` with ``emulation.mode = "qemu-user"``.
        progress: Called with one-line messages about slow steps.
        root: Cache root (default :func:`edgepack.emulator.cache.cache_root`).

    Returns:
        The environment; ``cache_hit`` says whether everything was already built.

    Raises:
        DeviceCheckError: a package or wheel does not exist for the target, or the download failed.
        MissingDependencyError: apt-get, dpkg-deb, pip or the Debian keyring is missing on the host.
    """
    em = profile.emulation
    if em.mode != "qemu-user":
        raise UsageError(f"profile {profile.name} is not emulated with qemu-user (emulation.mode = {em.mode!r}).")
    say = progress or (lambda _msg: None)
    root = root or cache.cache_root()
    start = time.perf_counter()
    tools = _tools(em.qemu_arch, say, root)
    name, key = env_name(profile)
    path, stamp, hit = cache.build_entry(
        "envs", name, lambda tmp: guest.build(tmp, key, root=root, progress=say), root=root, on_wait=say
    )
    guest.cpu_view(path, em.qemu_arch, em.qemu_cpu)  # now, so that runs need not write into the cache
    return EmuEnv(path, stamp, tools, hit and tools.cache_hit, time.perf_counter() - start)


# --------------------------------------------------------------------------- qemu and the plugin


def _host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(machine, machine)


def _on_path(qemu_arch: str) -> tuple[str, str, bool] | None:
    """The best qemu for ``qemu_arch`` on PATH: (path, version line, loads plugins), dynamic first."""
    for name in (f"qemu-{qemu_arch}", f"qemu-{qemu_arch}-static"):
        binary = shutil.which(name)
        if binary is None:
            continue
        version = _probe([binary, "--version"])
        if version:
            return binary, version, "-plugin" in (_probe([binary, "-h"]) or "")
    return None


def _probe(cmd: list[str]) -> str | None:
    """Output of a quick host (x86) command, or None if it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def _tools(qemu_arch: str, say: Progress, root: Path) -> QemuTool:
    found = _on_path(qemu_arch)
    host = _host_arch()
    if found:
        key = {"origin": "path", "arch": qemu_arch, "binary": found[0], "version": found[1], "plugin": found[2]}
    else:
        key = {"origin": "debian", "release": TOOLS_RELEASE, "host": host, "packages": ["qemu-user"]}
    key["plugin_source"] = edgecount.source_digest()
    name = cache.entry_name(f"qemu-{key['origin']}", key)

    def build(tmp: Path) -> dict[str, Any]:
        apt, problem = _tools_apt(root, host, say)
        stamp = _use_path_qemu(qemu_arch, found) if found else _fetch_qemu(tmp, apt, problem, say)
        if stamp.pop("plugin_capable"):
            say("building the instruction-counting qemu plugin")
            library, reason = edgecount.build(tmp / "plugin", qemu_version=stamp["version"], apt=apt)
            stamp["plugin"] = str(library.relative_to(tmp)) if library else None
            stamp["plugin_reason"] = reason or ("" if apt else problem)
        return {**stamp, "key": key}

    path, stamp, hit = cache.build_entry("tools", name, build, root=root, on_wait=say)
    return QemuTool(path, stamp, hit)


def _tools_apt(root: Path, host: str, say: Progress) -> tuple[debian.AptState | None, str]:
    """The host-architecture apt state (binaries and sources) that qemu and the plugin header come from."""
    try:
        apt = debian.AptState(
            root / "apt" / f"{TOOLS_RELEASE}-{host}-src", arch=host, release=TOOLS_RELEASE, with_sources=True
        )
        say(f"fetching Debian {TOOLS_RELEASE} package lists ({host})")
        apt.update()
        return apt, ""
    except EdgepackError as exc:
        return None, exc.one_line()


def _use_path_qemu(qemu_arch: str, found: tuple[str, str, bool]) -> dict[str, Any]:
    binary, version, capable = found
    reason = "" if capable else f"{binary} cannot load plugins (a static build); install the dynamic qemu-user"
    return {
        "origin": "path",
        "binaries": {qemu_arch: binary},
        "version": version.splitlines()[0],
        "plugin_capable": capable,
        "plugin": None,
        "plugin_reason": reason,
    }


def _fetch_qemu(tmp: Path, apt: debian.AptState | None, problem: str, say: Progress) -> dict[str, Any]:
    """Fetch Debian's dynamic ``qemu-user`` and the libraries it needs; fall back to ``qemu-user-static``."""
    if apt is None:
        raise DeviceCheckError(
            f"no qemu-aarch64/qemu-arm on PATH, and Debian {TOOLS_RELEASE}'s qemu-user could not be fetched: {problem}",
            hint="Install qemu-user (or qemu-user-static), or fix the problem above, then retry.",
        )
    for package in ("qemu-user", "qemu-user-static"):
        say(f"fetching Debian's {package} into the edgepack cache")
        files = tmp / "qemu"
        debs = apt.download([package], tmp / "debs", what="the qemu emulator")
        debian.extract(debs, files)
        shutil.rmtree(tmp / "debs")
        debian.fix_sysroot(files, apt.arch)
        _prune_qemu(files)
        stamp = _launchable(files, package)
        if stamp is not None:
            return stamp
        shutil.rmtree(files)
    raise DeviceCheckError(
        f"Debian {TOOLS_RELEASE}'s qemu-user does not start on this host.",
        hint="Install qemu-user (or qemu-user-static) with the system package manager.",
    )


def _prune_qemu(files: Path) -> None:
    keep = {f"qemu-{a}{s}" for a in QEMU_ARCHES for s in ("", "-static")}
    for binary in (files / "usr" / "bin").iterdir():
        if binary.name not in keep:
            binary.unlink()
    for unused in ("usr/share", "usr/lib/binfmt.d", "usr/libexec", "etc", "usr/sbin"):
        shutil.rmtree(files / unused, ignore_errors=True)


def _launchable(files: Path, package: str) -> dict[str, Any] | None:
    """How to start the fetched binaries on this host: directly, or through Debian's own loader."""
    suffix = "-static" if package.endswith("-static") else ""
    binaries = {a: f"qemu/usr/bin/qemu-{a}{suffix}" for a in QEMU_ARCHES}
    libdir = files / "usr" / "lib" / debian.TRIPLETS.get(_host_arch(), "")
    loaders = sorted(libdir.glob("ld-linux*.so*"))
    base = files.parent
    for loader in [None, *loaders]:
        prefix = [str(loader), "--library-path", str(libdir)] if loader else []
        version = _probe([*prefix, str(base / binaries["aarch64"]), "--version"])
        if not version:
            continue
        capable = "-plugin" in (_probe([*prefix, str(base / binaries["aarch64"]), "-h"]) or "")
        return {
            "origin": "debian",
            "package": package,
            "binaries": binaries,
            "loader": str(loader.relative_to(base)) if loader else None,
            "library_path": str(libdir.relative_to(base)),
            "version": version.splitlines()[0],
            "plugin_capable": capable,
            "plugin": None,
            "plugin_reason": "" if capable else f"Debian's {package} cannot load plugins",
        }
    return None


# --------------------------------------------------------------------------- running


def run(
    env: EmuEnv,
    profile: Any,
    script: Path,
    args: list[str],
    *,
    count_instructions: bool = False,
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 600,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """Run a Python ``script`` (a host path) in the guest, with ``args``.

    Args:
        env: From :func:`setup`.
        profile: The profile (``emulation.qemu_arch`` and ``qemu_cpu`` are used).
        script: The script. Its folder is copied (hard links where possible) into a fresh
            ``/tmp/edgepack-qemu-XXXXXXXX`` folder and run there, with ``--input/--output/--report``
            files staged beside it and ``HOME``/``TMPDIR`` pointing there: every run sees paths and an
            environment of the same length, whatever the caller's folders are called.
        args: Its arguments; other host paths work in the guest (qemu falls back to the host filesystem).
        count_instructions: Count guest instructions between the script's ROI markers
            (``EDGEPACK_COUNT=1`` is set for it). ``instructions`` is per inference of the ``--count``
            block in ``args`` (see :func:`counted_total`).
        extra_env: More environment variables for the guest.
        timeout_s: Kill the run after this long.
        on_progress: Called with (inferences done, expected, seconds so far) as run.py reports them.

    Raises:
        DeviceCheckError: the run took longer than ``timeout_s``.
    """
    em = profile.emulation
    view = guest.cpu_view(env.path, em.qemu_arch, em.qemu_cpu)
    note = ""
    with tempfile.TemporaryDirectory(prefix="edgepack-qemu-", dir=_run_parent()) as tmp:
        work = Path(tmp)
        staged, script = _stage(work, script, args)
        # The guest's layout (environment, paths) is the same for every run: the count depends on it.
        fixed = {"HOME": str(work), "TMPDIR": str(work), "TZ": "UTC", "EDGEPACK_PROGRESS": "1"}
        guest_env = guest.environment(view, {**(extra_env or {}), **fixed})
        counts = work / "counts.json"
        plugin_args: list[str] = []
        if count_instructions:
            note = _plugin_problem(env.qemu, counts)
            if not note:
                mode = ",mode=inline" if _one_busy_thread(profile, args) else ""
                plugin_args = ["-plugin", f"{env.qemu.plugin},out={counts}{mode}"]
                guest_env["EDGEPACK_COUNT"] = "1"
        base = [*env.qemu.command(em.qemu_arch), "-cpu", em.qemu_cpu, "-L", str(view)]
        tail = [str(view / env.stamp["python"].lstrip("/")), str(script), *staged.args]
        rc, out, err, wall = _exec([*base, *plugin_args, *tail], script.parent, guest_env, timeout_s, on_progress)
        if plugin_args and rc != 0 and "plugin" in err.lower():
            note = "qemu could not load the counting plugin: " + " ".join(err.split())[-200:]
            rc, out, err, wall = _exec([*base, *tail], script.parent, guest_env, timeout_s, on_progress)
        regions, more = _read_counts(counts) if plugin_args and not note else (None, "")
        for name, host in staged.downloads:
            if (work / "io" / name).is_file():
                shutil.copyfile(work / "io" / name, host)
    note = note or more
    total, inferences = counted_total(regions, args)
    per_run = round(total / inferences) if total is not None else None
    return RunResult(rc, out, err, wall, per_run, instructions_total=total, note=note, runner="qemu-user")


ONE_THREAD_RUNTIMES = ("litert", "tflite-runtime")  # no helper threads run during a 1-thread inference


def _one_busy_thread(profile: Any, args: list[str]) -> bool:
    """Whether the counted region runs on one guest thread only, so the plugin's cheap inline count is exact.

    ONNX Runtime keeps helper threads that wake at random times: it is counted per thread.
    """
    runtime = str(getattr(profile.runtime, "value", profile.runtime))
    return runtime in ONE_THREAD_RUNTIMES and int_arg(args, "--threads", 1) == 1


def _run_parent() -> str | None:
    """``/tmp`` where it is writable, so that the guest's paths have the same length on every machine."""
    return "/tmp" if os.access("/tmp", os.W_OK) else None


def _stage(work: Path, script: Path, args: list[str]) -> tuple[Any, Path]:
    """Copy the script's folder (hard links where possible) and its I/O files into ``work``."""
    from edgepack.emulator.docker import stage_io

    staged = stage_io(args, str(work / "io"))
    (work / "io").mkdir()
    for host, name in staged.uploads:
        shutil.copyfile(host, work / "io" / name)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(script.parent, work / "b", copy_function=link, ignore=shutil.ignore_patterns("__pycache__"))
    return staged, work / "b" / script.name


def counted_total(regions: list[int] | None, args: list[str]) -> tuple[int | None, int]:
    """Instructions of the counted inferences and how many there were, from the plugin's per-region counts.

    run.py given ``--count N`` marks an empty region (the markers' own cost) and then the block of N
    invoke calls: the count is their difference. An older run.py marks one region around ``--runs``.
    """
    count = int_arg(args, "--count", 0)
    if regions is None:
        return None, max(1, count or runs_from_args(args))
    if count > 0 and len(regions) >= 2:
        return regions[-1] - regions[0], count
    return sum(regions), runs_from_args(args)


def _plugin_problem(tool: QemuTool, counts: Path) -> str:
    if tool.plugin is None:
        return tool.stamp.get("plugin_reason") or "no instruction-counting plugin"
    if "," in str(tool.plugin) or "," in str(counts):
        return "the plugin's path contains a comma, which qemu's -plugin option cannot take"
    return ""


def _exec(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> tuple[int, str, str, float]:
    from edgepack.emulator import process

    no_aslr = process.no_aslr if platform.system() == "Linux" else None
    return process.run(cmd, cwd=cwd, env=env, timeout_s=timeout_s, preexec_fn=no_aslr, on_progress=on_progress)


def _read_counts(path: Path) -> tuple[list[int] | None, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "the counting plugin wrote no result (did the guest exit normally?)"
    if not data.get("regions"):
        return None, "the script marked no region of interest (syscalls 0x4ED0/0x4ED1)"
    return [int(n) for n in data.get("region_insns") or [data["roi_insns"]]], ""
