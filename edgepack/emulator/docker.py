"""Docker backend: run a bundle's ``run.py`` in a device image with ``docker run --platform``.

One image per device family, built from ``docker/<family>.Dockerfile`` (package data) the first
time it is needed. Nothing model-specific is in an image: the bundle is mounted read-only at
``/bundle`` and run.py's outputs go to a mounted ``/out``. An ARM platform on an x86_64 host runs
through the host's qemu binfmt handlers (see ``docker/README.md``), so its wall times are emulated.

:func:`stage_io` (also used by the ssh backend) rewrites run.py's host-path arguments to paths in
the place where run.py runs, and copies the results back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform as host_platform
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.emulator.base import RunResult
from edgepack.errors import DeviceCheckError, UsageError

NO_ENGINE = "no Docker engine is running; use --runner qemu (default) or start Docker"
BINFMT_HINT = (
    "Register qemu's binfmt handlers on the host: `apt-get install qemu-user-static binfmt-support`, "
    "or `docker run --privileged --rm tonistiigi/binfmt --install arm64,arm`."
)
_PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Family:
    """A device image: its Dockerfile, default platform, and how a run starts in it.

    Attributes:
        dockerfile: File name under the ``docker`` data folder.
        platform: Default ``--platform``.
        command: argv that starts run.py in the container; run.py's arguments follow it.
        docker_args: Extra ``docker run`` options the family needs.
        as_caller: Run as the caller's uid:gid, so files in ``/out`` are theirs.
    """

    dockerfile: str
    platform: str
    command: tuple[str, ...] = ("python3", "/bundle/run.py")
    docker_args: tuple[str, ...] = ()
    as_caller: bool = True


FAMILIES: dict[str, Family] = {
    "arm64": Family("arm64.Dockerfile", "linux/arm64"),
    "armv7": Family("armv7.Dockerfile", "linux/arm/v7"),
    "openvino": Family("openvino.Dockerfile", "linux/amd64"),
    # A real Jetson: the GPU comes in through NVIDIA's container runtime, which needs root in the container.
    "jetson": Family(
        "jetson.Dockerfile", "linux/arm64", ("/usr/local/bin/edgepack-run-jetson",), ("--runtime", "nvidia"), False
    ),
}

# Profile runtime -> family; any other runtime by the profile's arch -> (family, platform).
RUNTIME_FAMILY = {"tensorrt": "jetson", "openvino": "openvino"}
ARCH_FAMILY = {
    "aarch64": ("arm64", "linux/arm64"),
    "armv7l": ("armv7", "linux/arm/v7"),
    "x86_64": ("arm64", "linux/amd64"),  # the same LiteRT + ONNX Runtime image, built for x86_64
}
_HOST_PLATFORM = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}
_QEMU_ARCH = {"linux/arm64": "aarch64", "linux/arm/v7": "arm"}


class DockerRunner:
    """Runs a bundle's run.py in a Docker image, building the image from its family's Dockerfile if missing.

    Args:
        image: Image tag to run (built as this tag when missing and ``family`` is given).
        platform: ``docker --platform`` value, e.g. ``linux/arm64``.
        family: Key of :data:`FAMILIES`: its Dockerfile builds the image and its command starts run.py.
        qemu_cpu: CPU model for qemu when ``platform`` is emulated (passed as ``QEMU_CPU``).
        timeout_s: Kill a run after this long.
        build_timeout_s: Give up building the image after this long.
        progress: Called with one-line messages about slow steps (the image build).
        docker: The docker client executable.
    """

    name = "docker"

    def __init__(
        self,
        image: str,
        platform: str,
        *,
        family: str | None = None,
        qemu_cpu: str | None = None,
        timeout_s: float = 600,
        build_timeout_s: float = 3600,
        progress: Callable[[str], None] | None = None,
        docker: str = "docker",
    ) -> None:
        if family is not None and family not in FAMILIES:
            raise UsageError(f"unknown docker image family {family!r}.", hint=f"Known: {', '.join(sorted(FAMILIES))}.")
        self.image, self.platform, self.family = image, platform, family
        self.qemu_cpu, self.timeout_s, self.build_timeout_s = qemu_cpu, timeout_s, build_timeout_s
        self.progress = progress or (lambda _msg: None)
        self.docker = docker
        self._ready = False

    @classmethod
    def for_profile(cls, profile: Any, *, image: str | None = None, **options: Any) -> DockerRunner:
        """The runner for a target profile: its family's image, platform and emulated CPU."""
        family, platform = family_for(profile)
        options.setdefault("qemu_cpu", profile.emulation.qemu_cpu)
        return cls(image or default_tag(family, platform), platform, family=family, **options)

    @property
    def emulated(self) -> bool:
        """Whether the platform is not the host's, so qemu (binfmt) runs the container."""
        return self.platform != _HOST_PLATFORM.get(host_platform.machine().lower(), "")

    @property
    def latency_label(self) -> str:
        if self.emulated:
            return f"emulated: docker --platform {self.platform} under qemu on this host; not a device latency"
        return f"measured in a Docker container on this host ({host_platform.machine()})"

    def run(self, bundle_dir: Path, args: list[str], *, env: dict[str, str]) -> RunResult:
        """Run ``bundle_dir/run.py`` with ``args`` (host paths) in the image; outputs come back to the host paths.

        Raises:
            DeviceCheckError: no engine runs, the image cannot be built, binfmt is missing, or the run timed out.
        """
        self.ensure_ready()
        family = FAMILIES[self.family] if self.family else Family("", self.platform)
        with tempfile.TemporaryDirectory(prefix="edgepack-docker-") as tmp:
            out_dir = Path(tmp) / "out"
            out_dir.mkdir()
            staged = stage_io(args, "/out")
            staged.upload(out_dir)
            name = f"edgepack-{uuid.uuid4().hex[:12]}"
            cmd = self._command(name, family, Path(bundle_dir).resolve(), out_dir, Path(tmp), env) + staged.args
            rc, out, err, wall = self._exec(cmd, name)
            if rc != 0 and "exec format error" in err.lower():
                raise DeviceCheckError(f"{self.image} ({self.platform}) cannot start on this host.", hint=BINFMT_HINT)
            staged.download(out_dir, label=self.latency_label)
        note = "not counted in docker; " + self.latency_label
        return RunResult(rc, out, err, wall, note=note, runner=self.name)

    # ------------------------------------------------------------------ engine and image

    def ensure_ready(self) -> None:
        """Check the engine runs and the image exists (building it if needed)."""
        if self._ready:
            return
        check_engine(self.docker)
        if self.family == "jetson" and self.emulated:
            raise DeviceCheckError(
                "the jetson image needs a Jetson's GPU and cannot run on this host.",
                hint="Run the docker check on the Jetson itself, or use --runner ssh://user@jetson.",
            )
        if not self._image_exists():
            if self.family is None:
                raise DeviceCheckError(
                    f"docker image {self.image} is not on this host.", hint=f"docker pull {self.image}, or build it."
                )
            self.build()
        self._ready = True

    def build(self) -> None:
        """Build and tag the image from ``docker/<family>.Dockerfile`` (nothing else goes into the context)."""
        dockerfile = dockerfile_path(self.family or "")
        self.progress(f"building docker image {self.image} ({self.platform}) from {dockerfile.name}")
        with tempfile.TemporaryDirectory(prefix="edgepack-docker-context-") as context:
            cmd = [self.docker, "build", "--platform", self.platform, "-t", self.image, "-f", str(dockerfile), context]
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=self.build_timeout_s, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired as exc:
                raise DeviceCheckError(
                    f"building docker image {self.image} took over {self.build_timeout_s:.0f} s."
                ) from exc
        if proc.returncode != 0:
            hint = BINFMT_HINT if "exec format error" in proc.stderr.lower() else f"Run: {' '.join(cmd[:-1])} DIR"
            raise DeviceCheckError(f"building docker image {self.image} failed: {_tail(proc.stderr)}", hint=hint)

    def _image_exists(self) -> bool:
        return _call([self.docker, "image", "inspect", "--format", "{{.Id}}", self.image]) is not None

    # ------------------------------------------------------------------ running

    def _command(
        self, name: str, family: Family, bundle: Path, out_dir: Path, tmp: Path, env: dict[str, str]
    ) -> list[str]:
        cmd = [self.docker, "run", "--rm", "--name", name, "--platform", self.platform, "--network", "none"]
        cmd += ["--mount", _mount(bundle, "/bundle", readonly=True), "--mount", _mount(out_dir, "/out")]
        cmd += ["--workdir", "/out"]
        if family.as_caller and hasattr(os, "getuid"):
            cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
        environment = {"PYTHONHASHSEED": "0", **env}
        if self.emulated and self.qemu_cpu and self.platform in _QEMU_ARCH:
            environment["QEMU_CPU"] = self.qemu_cpu
            cmd += ["--mount", _mount(self._cpuinfo(tmp), "/proc/cpuinfo", readonly=True)]
        for key, value in environment.items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, *family.docker_args, self.image, *family.command]

    def _cpuinfo(self, tmp: Path) -> Path:
        """An ARM ``/proc/cpuinfo``: with qemu < 8 the guest sees the host's x86 one and ONNX Runtime crashes."""
        from edgepack.emulator import guest

        path = tmp / "cpuinfo"
        path.write_text(guest.cpuinfo(_QEMU_ARCH[self.platform], self.qemu_cpu or "", os.cpu_count() or 1))
        return path

    def _exec(self, cmd: list[str], name: str) -> tuple[int, str, str, float]:
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            _call([self.docker, "kill", name])  # the client is gone; the container would run on
            raise DeviceCheckError(
                f"the docker run ({self.platform}) took over {self.timeout_s:.0f} s and was stopped.",
                hint="An emulated platform is 20-400x slower than the host: use fewer --runs or a smaller model.",
            ) from exc
        return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def check_engine(docker: str = "docker") -> str:
    """The engine's version; raises the one-line :data:`NO_ENGINE` error when no engine answers.

    Raises:
        DeviceCheckError: the client is missing or ``docker info`` fails.
    """
    version = _call([docker, "info", "--format", "{{.ServerVersion}}"])
    if not version:
        raise DeviceCheckError(NO_ENGINE)
    return version.strip()


def family_for(profile: Any) -> tuple[str, str]:
    """``(family, platform)`` for a profile: by its runtime, else by its architecture."""
    runtime, arch = profile.runtime.value, profile.arch.value
    if runtime in RUNTIME_FAMILY:
        family = RUNTIME_FAMILY[runtime]
        return family, FAMILIES[family].platform
    if arch not in ARCH_FAMILY:
        raise DeviceCheckError(f"profile {profile.name}: no docker image for arch {arch!r}.")
    return ARCH_FAMILY[arch]


def dockerfile_path(family: str) -> Path:
    """``docker/<family>.Dockerfile`` from edgepack's data (the repository's docker/ in a checkout)."""
    from edgepack.resources import data_dir

    try:
        path = data_dir("docker") / FAMILIES[family].dockerfile
    except FileNotFoundError as exc:
        raise DeviceCheckError(str(exc)) from exc
    if not path.is_file():
        raise DeviceCheckError(f"{path} is missing; reinstall edgepack.")
    return path


def default_tag(family: str, platform: str) -> str:
    """``edgepack/<family>:<platform>-<digest>``: a changed Dockerfile gets a new tag, so it is rebuilt."""
    from edgepack.version import __version__

    digest = hashlib.sha256(dockerfile_path(family).read_bytes()).hexdigest()[:12]
    return f"edgepack/{family}:{__version__}-{platform.replace('/', '-')}-{digest}"


def _mount(source: Path, target: str, *, readonly: bool = False) -> str:
    fields = ["type=bind", f"source={source}", f"target={target}"] + (["readonly"] if readonly else [])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)  # quotes a path with a comma or a quote
    return buffer.getvalue()


def _call(cmd: list[str]) -> str | None:
    """stdout of a quick docker command, or None when it fails, is missing or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else "no output"


# --------------------------------------------------------------------------- run.py's file arguments

# run.py flag -> whether it names an input (copied in) rather than an output (copied back).
IO_FLAGS = {"--input": True, "--output": False, "--report": False}
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass
class StagedIO:
    """run.py's arguments with file paths moved into a staging folder, and the files to move.

    Attributes:
        args: The arguments, file paths replaced by ``<remote_dir>/<n><suffix>``.
        uploads: (host file, staged name) for each input.
        downloads: (staged name, host file) for each output.
        report: The host path of ``--report``, if given.
    """

    args: list[str]
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    downloads: list[tuple[str, Path]] = field(default_factory=list)
    report: Path | None = None

    def upload(self, staging: Path) -> None:
        """Copy the inputs into the local ``staging`` folder under their staged names."""
        for host, name in self.uploads:
            shutil.copyfile(host, staging / name)

    def download(self, staging: Path, *, label: str) -> None:
        """Copy the outputs found in ``staging`` to their host paths; label the latency in the report."""
        for name, host in self.downloads:
            source, dest = staging / name, host
            if not source.is_file() and (staging / f"{name}.npz").is_file():  # np.savez adds .npz
                source, dest = staging / f"{name}.npz", host.with_name(host.name + ".npz")
            if source.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
        if self.report is not None and self.report.is_file():
            label_report(self.report, label)


def stage_io(args: Sequence[str], remote_dir: str) -> StagedIO:
    """Rewrite run.py's ``--input/--output/--report`` host paths to short names in ``remote_dir``."""
    staged = StagedIO(args=[])
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag not in IO_FLAGS or not (eq or rest):
            staged.args.append(arg)
            continue
        value = value if eq else rest.pop(0)
        suffix = Path(value).suffix if _SAFE_SUFFIX.match(Path(value).suffix) else ""
        name = f"{len(staged.uploads) + len(staged.downloads)}{suffix}"
        if IO_FLAGS[flag]:
            staged.uploads.append((Path(value), name))
        else:
            staged.downloads.append((name, Path(value)))
            staged.report = Path(value) if flag == "--report" else staged.report
        staged.args += [flag, f"{remote_dir}/{name}"]
    return staged


def label_report(path: Path, label: str) -> None:
    """Add ``latency_label`` (where the latencies were taken) to a run.py report."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        data["latency_label"] = label
        path.write_text(json.dumps(data, indent=2))
