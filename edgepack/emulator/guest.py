"""The guest filesystem: a Debian sysroot with Python, wheels unzipped into ``/opt/site``, per-CPU views.

A view is a tiny folder of symlinks into the sysroot plus a ``proc/cpuinfo``
that describes the emulated CPU; qemu's ``-L`` points at it. qemu 7.2 shows the
guest the host's x86 ``/proc/cpuinfo``, on which ONNX Runtime's cpuinfo
crashes, and ``-L`` lookups come first. The sysroot itself stays CPU-independent
so that profiles that differ only in ``qemu_cpu`` share one environment.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.emulator import debian
from edgepack.errors import DeviceCheckError, MissingDependencyError

# What a Python runtime with numpy, LiteRT or ONNX Runtime needs beside python3.X itself.
BASE_DEBS = (
    "libstdc++6",
    "libgcc-s1",
    "libgomp1",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "ca-certificates",
)
WHEEL_ARCH = {"arm64": "aarch64", "armhf": "armv7l", "amd64": "x86_64"}
GLIBC = {"bullseye": 31, "bookworm": 36, "trixie": 41}  # the manylinux_2_N tags a release can load
SITE = "/opt/site"
_NO_DIST = re.compile(r"No matching distribution found for (\S+)")


def build(tmp: Path, key: dict[str, Any], *, root: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Build a guest environment into ``tmp`` (a cache builder: returns the stamp).

    When ``debs`` holds Debian Python packages (``python3-numpy`` on armhf, where PyPI has no
    numpy wheel), the wheels are fetched without their dependencies: Debian provides those.
    """
    arch, release, python = key["debian_arch"], key["debian_release"], key["python"]
    start = time.perf_counter()
    apt = debian.AptState(root / "apt" / f"{release}-{arch}", arch=arch, release=release)
    progress(f"fetching Debian {release} package lists ({arch})")
    warnings = apt.update()
    packages = [f"python{python}", *BASE_DEBS, *key["debs"]]
    progress(f"downloading python{python} and {len(packages) - 1} more Debian packages ({arch}) with dependencies")
    debs = apt.download(packages, tmp / "debs", what=f"the {arch} guest")
    sysroot = tmp / "sysroot"
    debian.extract(debs, sysroot)
    debian.fix_sysroot(sysroot, arch)
    shutil.rmtree(tmp / "debs")
    if not (sysroot / "usr" / "bin" / f"python{python}").is_file():
        raise DeviceCheckError(f"python{python} from Debian {release} ({arch}) has no usr/bin/python{python}.")
    wheels: list[str] = []
    if key["wheels"]:
        progress(f"downloading {len(key['wheels'])} wheel(s) for {WHEEL_ARCH[arch]} (Python {python})")
        no_deps = any(d.startswith("python3-") for d in key["debs"])
        files = download_wheels(
            key["wheels"], tmp / "wheels", arch=arch, release=release, python=python, no_deps=no_deps
        )
        for wheel in files:
            unzip_wheel(wheel, sysroot / SITE.lstrip("/"))
        wheels = [w.name for w in files]
        shutil.rmtree(tmp / "wheels")
    precompiled = precompile(sysroot, python)
    return {
        "key": key,
        "python": f"/usr/bin/python{python}",
        "precompiled": precompiled,
        "debs": [d.name for d in debs],
        "wheels": wheels,
        "apt_warnings": warnings,
        "build_s": round(time.perf_counter() - start, 2),
    }


def precompile(sysroot: Path, python: str) -> str:
    """Write the guest's ``.pyc`` files with this (host) Python when it has the guest's ``major.minor``.

    Bytecode does not depend on the CPU (and a minor release keeps its format), and without this
    the first emulated run compiles every module it imports: it is slower, and its instruction
    count differs a little (about 0.02%) from later runs'.

    Returns:
        The host Python version that compiled them, or "" (another minor version: the guest
        compiles its own files on first use).
    """
    if python != "{}.{}".format(*sys.version_info[:2]):
        return ""
    folders = [sysroot / "usr" / "lib" / f"python{python}", sysroot / "usr" / "lib" / "python3", sysroot / SITE[1:]]
    cmd = [sys.executable, "-m", "compileall", "-q", "-q", "-j0", *(str(f) for f in folders if f.is_dir())]
    try:  # some files (tests, Python 2 leftovers) do not compile: that is fine
        subprocess.run(cmd, capture_output=True, timeout=600, env={**os.environ, "PYTHONHASHSEED": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return platform.python_version()


def download_wheels(specs: list[str], dest: Path, *, arch: str, release: str, python: str, no_deps: bool) -> list[Path]:
    """``pip download`` binary wheels for the guest's platform and Python.

    Args:
        specs: Requirement strings (``"numpy==2.4.6"``).
        dest: Download folder.
        arch: Debian architecture of the guest.
        release: Debian release (decides the newest manylinux tag).
        python: Guest Python version (``"3.11"``).
        no_deps: Skip dependencies (Debian's ``python3-*`` packages provide them).

    Raises:
        DeviceCheckError: PyPI has no wheel of a requirement for this platform.
    """
    machine = WHEEL_ARCH[arch]
    platforms = [f"manylinux_2_{n}_{machine}" for n in range(17, GLIBC.get(release, 36) + 1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    nodot = python.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--abi",
        f"cp{nodot}",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(dest),
    ]
    cmd += [arg for p in platforms for arg in ("--platform", p)]
    cmd += ["--no-deps"] if no_deps else []
    try:
        proc = subprocess.run([*cmd, *specs], capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise MissingDependencyError(
            "pip is not available to download the guest's wheels.", hint="Install pip in edgepack's environment."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise DeviceCheckError("pip download of the guest's wheels took over 15 minutes.") from exc
    if proc.returncode != 0:
        if "No module named pip" in proc.stderr:
            raise MissingDependencyError(
                "pip is not available to download the guest's wheels.", hint="Install pip in edgepack's environment."
            )
        missing = _NO_DIST.findall(proc.stderr)
        what = (
            f"no {machine} wheel for Python {python} of {', '.join(missing)}"
            if missing
            else ("pip download failed: " + " ".join(proc.stderr.split())[-300:])
        )
        raise DeviceCheckError(
            f"PyPI has {what}." if missing else what + ".",
            hint="Fix emulation.wheels (or emulation.python) in the profile.",
        )
    return sorted(dest.glob("*.whl"))


def unzip_wheel(wheel: Path, site: Path) -> None:
    """Install a wheel by unzipping it: ``*.data/purelib|platlib`` go to the top, scripts and headers are skipped."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if info.is_dir() or ".." in parts:
                continue
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)


# --------------------------------------------------------------------------- per-CPU views

# qemu -cpu name -> (MIDR part, variant, revision, extra Features) as Linux would show them.
_A64_BASE = "fp asimd evtstrm crc32 cpuid"
_A64_V82 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
_AARCH64 = {
    "cortex-a53": ("0xd03", "0x0", 4, _A64_BASE),
    "cortex-a55": ("0xd05", "0x2", 0, _A64_V82),
    "cortex-a57": ("0xd07", "0x1", 1, _A64_BASE),
    "cortex-a72": ("0xd08", "0x0", 3, _A64_BASE),
    "cortex-a76": ("0xd0b", "0x4", 1, _A64_V82),
    "neoverse-n1": ("0xd0c", "0x3", 1, _A64_V82),
}
_ARM32 = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm"
_ARM = {
    "cortex-a7": ("0xc07", "0x0", 5, _ARM32),
    "cortex-a15": ("0xc0f", "0x2", 3, _ARM32),
    "cortex-a9": ("0xc09", "0x3", 0, "half thumb fastmult vfp edsp neon vfpv3 tls vfpd32"),
}


def cpuinfo(qemu_arch: str, cpu: str, count: int) -> str:
    """A Linux ``/proc/cpuinfo`` for ``count`` cores of the emulated ``cpu`` (Cortex-A72/A7 if unknown)."""
    if qemu_arch == "aarch64":
        part, variant, revision, features = _AARCH64.get(cpu, _AARCH64["cortex-a72"])
        head, arch_line = "", "8"
    else:
        part, variant, revision, features = _ARM.get(cpu, _ARM["cortex-a7"])
        head, arch_line = f"model name\t: ARMv7 Processor rev {revision} (v7l)\n", "7"
    block = (
        f"{head}BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: {arch_line}\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
    )
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(count))


def cpu_view(env_path: Path, qemu_arch: str, cpu: str) -> Path:
    """The ``-L`` folder for ``cpu``: links to the sysroot plus a matching ``proc/cpuinfo``. Made once, atomically."""
    count = os.cpu_count() or 1  # the guest sees the host's /sys/devices/system/cpu: same number of cores
    view = env_path / "views" / f"{cpu}-{count}"
    if (view / "proc" / "cpuinfo").is_file():
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = view.parent / f".{view.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for entry in (env_path / "sysroot").iterdir():
        if entry.name != "proc":
            (tmp / entry.name).symlink_to(os.path.relpath(entry, view))
    (tmp / "proc").mkdir()
    (tmp / "proc" / "cpuinfo").write_text(cpuinfo(qemu_arch, cpu, count))
    try:
        os.rename(tmp, view)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def environment(view: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The guest's environment: built from scratch (a host PYTHONPATH or venv must not leak in).

    ``PYTHONPATH`` is the site folder's host path: qemu 7.2's ``statx`` (what 32-bit guests call)
    does not look inside ``-L``, so guest paths like ``/opt/site`` would not be found there.
    """
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(view / SITE.lstrip("/")),
        "PYTHONHASHSEED": "0",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    for name in ("TMPDIR", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env
