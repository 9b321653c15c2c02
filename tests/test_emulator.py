"""The QEMU user-mode emulator backend: rootless setup, cache, emulated runs, instruction counts.

One guest environment per architecture is built once per session (into
``$EDGEPACK_CACHE`` when set, else a session temporary folder) and reused by
every test here. Cold, the whole file takes about a minute; warm, about 30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.emulator import LocalRunner, RunResult, cache, get_runner, guest, plugin, qemu, runs_from_args
from edgepack.errors import DeviceCheckError, UsageError
from edgepack.profiles import load_profile

RUN_PY = Path(__file__).resolve().parent.parent / "edgepack" / "templates" / "run.py"
needs_apt = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="the qemu backend fetches Debian packages with apt-get and dpkg-deb",
)
emulation = [pytest.mark.emulation, needs_apt]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def emu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("EDGEPACK_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("edgepack-cache")


def _setup(name: str, root: Path) -> tuple:
    profile = load_profile(name)
    start = time.perf_counter()
    env = qemu.setup(profile, root=root)
    return profile, env, time.perf_counter() - start


@pytest.fixture(scope="session")
def arm64(emu_root: Path) -> tuple:
    return _setup("rpi4-arm64", emu_root)


@pytest.fixture(scope="session")
def armv7(emu_root: Path) -> tuple:
    return _setup("rpi-armv7", emu_root)


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded MatMul + Add + ReLU model, (1, 32) -> (1, 64), made with TFLiteConverter."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 32], tf.float32, name="x")])
    def model(x):
        return {"y": tf.nn.relu(tf.matmul(x, weight) + bias)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path = tmp_path_factory.mktemp("tiny") / "model.tflite"
    path.write_bytes(converter.convert())
    return path


def _bundle(folder: Path, model: Path, runtime: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    shutil.copy(RUN_PY, folder / "run.py")
    manifest = {
        "model": {"file": model.name},
        "runtime": {"name": runtime},
        "inputs": [{"name": "x", "shape": [1, 32], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 64], "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _run(runner, bundle: Path, tmp: Path, tag: str, runs: int = 5) -> tuple[RunResult, dict, np.ndarray]:
    args = ["--input", str(tmp / "x.npy"), "--output", str(tmp / f"{tag}.npz"), "--report", str(tmp / f"{tag}.json")]
    result = runner.run(bundle, [*args, "--runs", str(runs), "--warmup", "1"], env={})
    assert result.ok, result.stderr[-2000:]
    with np.load(tmp / f"{tag}.npz") as data:
        return result, json.loads((tmp / f"{tag}.json").read_text()), data["y"]


# --------------------------------------------------------------------------- emulated


@pytest.mark.parametrize(
    ("fixture", "runtime", "machine"),
    [("arm64", "litert", "aarch64"), ("armv7", "tflite-runtime", "armv7l")],
)
@pytest.mark.emulation
@needs_apt
def test_tiny_tflite_runs_emulated_like_the_host(request, fixture, runtime, machine, tiny_tflite, tmp_path):
    profile, env, _ = request.getfixturevalue(fixture)
    bundle = _bundle(tmp_path / "bundle", tiny_tflite, runtime)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32))
    pytest.importorskip("ai_edge_litert")
    _, _, host = _run(LocalRunner(), bundle, tmp_path, "host")

    runner = get_runner(profile, root=env.path.parent.parent)  # the session's cache: a hit
    first, report, device = _run(runner, bundle, tmp_path, "qemu")
    second, _, _ = _run(runner, bundle, tmp_path, "qemu2")

    assert report["machine"] == machine
    assert report["python"].startswith(profile.emulation.python)
    np.testing.assert_allclose(device, host, rtol=1e-4, atol=1e-5)
    if env.qemu.plugin is None:
        assert first.instructions is None and first.note
        pytest.skip(f"no instruction counts: {first.note}")
    assert first.instructions and first.instructions == round(first.instructions_total / 5)
    if machine == "aarch64" and env.stamp["precompiled"]:
        assert first.instructions_total == second.instructions_total
    else:  # 32-bit ARM divides 64-bit integers in a loop whose length depends on the clock's value
        # (measured: 0.03% idle, 0.15% on a loaded host); without precompiled .pyc files the first run
        # compiles them, which shifts its count a little more.
        assert abs(first.instructions_total - second.instructions_total) <= 1e-2 * first.instructions_total


@pytest.mark.emulation
@needs_apt
@pytest.mark.parametrize("fixture", ["arm64", "armv7"])
def test_setup_is_cached(request, fixture, emu_root, monkeypatch):
    profile, env, _ = request.getfixturevalue(fixture)
    assert (env.sysroot / env.stamp["python"].lstrip("/")).is_file()
    assert env.stamp["wheels"], "the profile's wheels were not installed"
    if profile.emulation.debs:
        assert any(d.startswith("python3-numpy_") for d in env.stamp["debs"])

    def no_downloads(*_args, **_kwargs):
        raise AssertionError("a cached setup must not download anything")

    monkeypatch.setattr(qemu.debian, "AptState", no_downloads)
    monkeypatch.setattr(guest, "download_wheels", no_downloads)
    start = time.perf_counter()
    again = qemu.setup(profile, root=emu_root)
    assert again.cache_hit and again.path == env.path
    assert time.perf_counter() - start < 2.0
    names = {e["name"] for e in cache.list_envs(emu_root)}
    assert env.path.name in names and env.qemu.path.name in names


@pytest.mark.emulation
@needs_apt
def test_onnxruntime_imports_under_qemu_aarch64(emu_root, tmp_path):
    profile, env, _ = _setup("rpi4-arm64-onnxruntime", emu_root)
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, platform, numpy, onnxruntime\n"
        "print(json.dumps([platform.machine(), onnxruntime.__version__, onnxruntime.get_available_providers()]))\n"
    )
    result = qemu.run(env, profile, script, [])
    assert result.ok, result.stderr[-2000:]
    machine, version, providers = json.loads(result.stdout.strip().splitlines()[-1])
    assert machine == "aarch64" and version == "1.32.0" and "CPUExecutionProvider" in providers


@pytest.mark.emulation
@needs_apt
def test_missing_debian_package_is_a_clear_error(emu_root, arm64):
    profile = load_profile("rpi4-arm64")
    emulation = profile.emulation.model_copy(update={"debs": ("edgepack-no-such-package",)})
    broken = profile.model_copy(update={"emulation": emulation})
    with pytest.raises(DeviceCheckError, match=r"no package 'edgepack-no-such-package'") as info:
        qemu.setup(broken, root=emu_root)
    assert "emulation.debs" in str(info.value)
    assert not list((emu_root / "envs").glob(".*.tmp")), "a failed build left its temporary folder"


@pytest.mark.emulation
def test_missing_wheel_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceCheckError, match=r"no armv7l wheel for Python 3\.11 of onnxruntime"):
        guest.download_wheels(["onnxruntime"], tmp_path, arch="armhf", release="bookworm", python="3.11", no_deps=True)


# --------------------------------------------------------------------------- no emulation needed


def test_cache_builds_once_under_the_lock(tmp_path):
    calls = []

    def builder(folder: Path) -> dict:
        calls.append(folder)
        time.sleep(0.3)
        (folder / "payload").write_text("x")
        return {"what": "test"}

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.build_entry("envs", "e1", builder, root=tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(hit for _, _, hit in results) == [False, True, True]
    assert (tmp_path / "envs" / "e1" / "payload").is_file()
    assert [e["name"] for e in cache.list_envs(tmp_path)] == ["e1"]
    assert cache.remove_env("e1", tmp_path) and not cache.list_envs(tmp_path)


def test_failed_build_leaves_no_entry(tmp_path):
    def builder(folder: Path) -> dict:
        (folder / "half").write_text("x")
        raise DeviceCheckError("boom")

    with pytest.raises(DeviceCheckError):
        cache.build_entry("envs", "e2", builder, root=tmp_path)
    assert not any((tmp_path / "envs").iterdir())


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("EDGEPACK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_root() == tmp_path / "x" / "edgepack"


def test_env_key_ignores_the_cpu_and_the_order():
    a = load_profile("rpi4-arm64").emulation
    b = load_profile("rpi5-arm64").emulation
    assert a.qemu_cpu != b.qemu_cpu
    key = {k: getattr(a, k) for k in ("debian_arch", "debian_release", "python")}
    assert cache.env_key(**key, wheels=list(a.wheels), debs=[]) == cache.env_key(
        **key, wheels=list(reversed(b.wheels)), debs=[]
    )


def test_runs_from_args():
    assert runs_from_args([]) == 1
    assert runs_from_args(["--input", "x.npy", "--runs", "20"]) == 20
    assert runs_from_args(["--runs=7"]) == 7


def test_plugin_degrades_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(plugin.shutil, "which", lambda _name: None)
    library, reason = plugin.build(tmp_path, qemu_version="qemu-aarch64 version 7.2.22", apt=None)
    assert library is None and "no C compiler" in reason
    assert plugin.upstream_version("qemu_7.2+dfsg.orig.tar.xz") == "7.2"


def test_cpuinfo_describes_the_emulated_cpu():
    text = guest.cpuinfo("aarch64", "cortex-a76", 2)
    assert text.count("processor\t:") == 2 and "CPU part\t: 0xd0b" in text
    assert "(v7l)" in guest.cpuinfo("arm", "cortex-a7", 1)


def test_unknown_emulator_is_a_usage_error():
    with pytest.raises(UsageError, match="Known emulators"):
        get_runner(load_profile("rpi4-arm64"), "nope")
    with pytest.raises(DeviceCheckError, match="cannot be emulated"):
        get_runner(load_profile("jetson-orin-trt"))
