"""Scalar (shape ``[]``) inputs of a .tflite that declares them as ``[-1]``, as onnx2tf does (silero-vad's ``sr``).

run.py used to resize such an input to ``[]`` before ``allocate_tensors``. ai-edge-litert 2.3.0's aarch64
build segfaults inside ``ResizeInputTensor`` with an empty shape under qemu-aarch64 (any ``-cpu``, with or
without XNNPACK; its x86 build and tflite-runtime 2.14 aarch64 do not), so run.py now keeps the tensor at
``[1]``, feeds the scalar reshaped, and gives a ``[]`` output back as a scalar.

The emulated tests build the arm64 guest once (into ``$EDGEPACK_CACHE`` when set, else a temporary folder:
about a minute cold) and run a two-op model in it (about 10 s each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.emulator import LocalRunner, get_runner, qemu
from edgepack.profiles import load_profile

RUN_PY = Path(__file__).resolve().parent.parent / "edgepack" / "templates" / "run.py"
needs_apt = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="the qemu backend fetches Debian packages with apt-get and dpkg-deb",
)


@pytest.fixture(scope="module")
def scalar_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``y = x * float(sr)`` and ``s = sr * 3``; ``sr`` is an int64 the file declares as ``[-1]``."""
    tf = pytest.importorskip("tensorflow")

    @tf.function(
        input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x"), tf.TensorSpec([None], tf.int64, name="sr")]
    )
    def model(x, sr):
        return {"y": x * tf.cast(sr, tf.float32), "s": sr * tf.constant(3, tf.int64)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path = tmp_path_factory.mktemp("scalar") / "model.tflite"
    path.write_bytes(converter.convert())
    return path


def _bundle(folder: Path, model: Path) -> Path:
    """A bundle whose manifest says what the ONNX source said: ``sr`` and ``s`` are scalars."""
    from ai_edge_litert.interpreter import Interpreter

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    shutil.copy(RUN_PY, folder / "run.py")
    file_inputs = [d["name"] for d in Interpreter(model_path=str(model)).get_input_details()]
    shapes = {"x": ([1, 4], "float32"), "sr": ([], "int64")}
    inputs = [{"name": n, "shape": shapes[n][0], "dtype": shapes[n][1]} for n in file_inputs]
    outputs = Interpreter(model_path=str(model)).get_output_details()
    out_shapes = {(1, 4): [1, 4], (1,): []}  # the file's [1] for ``s`` is the source's scalar
    manifest = {
        "model": {"file": model.name, "files": [model.name], "format": "tflite"},
        "runtime": {"name": "litert"},
        "inputs": inputs,
        "outputs": [
            {"name": d["name"], "shape": out_shapes[tuple(d["shape"])], "dtype": np.dtype(d["dtype"]).name}
            for d in outputs
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _run(runner, bundle: Path, tmp: Path, tag: str) -> dict[str, np.ndarray]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    feeds = {"x": np.arange(1, 5, dtype=np.float32).reshape(1, 4), "sr": np.array(16000, np.int64)}
    np.savez(tmp / "in.npz", **{i["name"]: feeds[i["name"]] for i in manifest["inputs"]})
    out = tmp / f"{tag}.npz"
    result = runner.run(bundle, ["--input", str(tmp / "in.npz"), "--output", str(out)], env={})
    assert result.ok, (result.stderr or result.stdout)[-2000:]
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _by_shape(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    y = next(v for v in outputs.values() if v.ndim == 2)
    s = next(v for v in outputs.values() if v.ndim != 2)
    return y, s


def test_scalar_input_runs_on_the_host(scalar_tflite, tmp_path):
    pytest.importorskip("ai_edge_litert")
    bundle = _bundle(tmp_path / "bundle", scalar_tflite)
    y, s = _by_shape(_run(LocalRunner(), bundle, tmp_path, "host"))
    np.testing.assert_array_equal(y, 16000 * np.arange(1, 5, dtype=np.float32).reshape(1, 4))
    assert s.shape == () and s.dtype == np.int64 and int(s) == 48000  # the manifest's scalar, not the file's [1]


# --------------------------------------------------------------------------- emulated


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    env_root = os.environ.get("EDGEPACK_CACHE")
    root = Path(env_root) if env_root else tmp_path_factory.mktemp("edgepack-cache")
    profile = load_profile("rpi4-arm64")
    return profile, qemu.setup(profile, root=root)


@pytest.mark.emulation
@needs_apt
def test_scalar_input_runs_emulated_like_the_host(arm64, scalar_tflite, tmp_path):
    pytest.importorskip("ai_edge_litert")
    profile, env = arm64
    bundle = _bundle(tmp_path / "bundle", scalar_tflite)
    host = _run(LocalRunner(), bundle, tmp_path, "host")
    device = _run(get_runner(profile, root=env.path.parent.parent), bundle, tmp_path, "qemu")
    assert host.keys() == device.keys()
    for name in host:
        assert device[name].shape == host[name].shape and device[name].dtype == host[name].dtype, name
        np.testing.assert_array_equal(device[name], host[name])


RESIZE_PROBE = """
import sys
from ai_edge_litert.interpreter import Interpreter
interp = Interpreter(model_path=sys.argv[1])
sr = next(d for d in interp.get_input_details() if d["name"] == "sr")
print("resizing", flush=True)
interp.resize_tensor_input(sr["index"], {shape}, strict=False)
interp.allocate_tensors()
print("allocated", [list(d["shape"]) for d in interp.get_input_details()], flush=True)
"""


@pytest.mark.emulation
@needs_apt
def test_litert_resize_to_a_scalar_still_crashes_emulated(arm64, scalar_tflite, tmp_path):
    """The runtime behaviour run.py works around; when this fails, the workaround in ``_resize_to`` can go.

    The same resize to ``[1]`` runs, so the crash is the empty shape, not the model or the guest.
    """
    profile, env = arm64
    assert profile.emulation.wheels and "ai-edge-litert==2.3.0" in profile.emulation.wheels
    results = {}
    for shape in ("[]", "[1]"):
        script = tmp_path / f"probe{len(shape)}.py"
        script.write_text(RESIZE_PROBE.format(shape=shape))
        shutil.copy(scalar_tflite, tmp_path / "model.tflite")
        results[shape] = qemu.run(env, profile, script, [str(tmp_path / "model.tflite")])
    assert results["[1]"].ok and "allocated" in results["[1]"].stdout, results["[1]"].stderr[-1000:]
    crashed = results["[]"]
    assert not crashed.ok and "resizing" in crashed.stdout and "allocated" not in crashed.stdout
    assert "signal 11" in crashed.stderr, crashed.stderr[-1000:]


# --------------------------------------------------------------------------- the real model


SILERO = Path.home() / ".cache/edgepack/zoo/models/silero-vad-if/silero_vad_16k_op15.onnx"


@pytest.fixture(scope="module")
def silero(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """silero-vad's 16 kHz ONNX (int64 scalar ``sr``), from the zoo cache or the silero-vad 6.2.3 wheel."""
    if SILERO.is_file():
        return SILERO
    import zipfile

    folder = tmp_path_factory.mktemp("silero")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "silero-vad==6.2.3", "-d", str(folder)],
        capture_output=True,
        text=True,
    )
    wheels = list(folder.glob("silero_vad-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"silero-vad 6.2.3 could not be downloaded: {proc.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as whl:
        whl.extract("silero_vad/data/silero_vad_16k_op15.onnx", folder)
    return folder / "silero_vad/data/silero_vad_16k_op15.onnx"


@pytest.mark.slow
@pytest.mark.emulation
@needs_apt
def test_silero_vad_bundle_passes_the_emulated_device_check(silero, tmp_path):
    edgepack = Path(sys.executable).with_name("edgepack")
    out = tmp_path / "vad"
    shapes = ["--input-shape", "input=1,512", "--input-shape", "state=2,1,128"]
    package = [str(edgepack), "package", str(silero), "-t", "rpi4-arm64", *shapes, "-o", str(out), "--force"]
    proc = subprocess.run([*package, "--no-device-check"], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    proc = subprocess.run([str(edgepack), "check", str(out / "rpi4-arm64.tar.gz")], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "Segmentation fault" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the device check


@pytest.mark.emulation
@needs_apt
def test_device_check_passes_for_a_scalar_input(arm64, scalar_tflite, tmp_path):
    from edgepack.devicecheck import check_bundle

    pytest.importorskip("ai_edge_litert")
    profile, env = arm64
    bundle = _bundle(tmp_path / "bundle", scalar_tflite)
    result = check_bundle(bundle, profile, runner_options={"root": env.path.parent.parent})
    assert result.facts["ran"] is True


CRASHING_RUN_PY = """
import os, platform, runpy, signal
if platform.machine() == "aarch64":  # a native crash in the guest only, as the resize to [] was
    os.kill(os.getpid(), signal.SIGSEGV)
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_run.py"), run_name="__main__")
"""


@pytest.mark.emulation
@needs_apt
def test_a_crash_only_under_the_emulator_is_named_as_the_emulators(arm64, scalar_tflite, tmp_path):
    from edgepack.devicecheck import check_bundle
    from edgepack.errors import DeviceCheckError

    pytest.importorskip("ai_edge_litert")
    profile, env = arm64
    bundle = _bundle(tmp_path / "bundle", scalar_tflite)
    (bundle / "run.py").rename(bundle / "real_run.py")
    (bundle / "run.py").write_text(CRASHING_RUN_PY + "# --count\n")  # run.py takes --count: one counted block
    with pytest.raises(DeviceCheckError) as info:
        check_bundle(bundle, profile, runner_options={"root": env.path.parent.parent})
    message = str(info.value)
    assert "crashed with SIGSEGV" in message and "qemu-aarch64 -cpu cortex-a72" in message, message
    assert "ai-edge-litert==2.3.0" in message and "not the bundle" in message, message
