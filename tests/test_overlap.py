"""Device checks of several targets at once, while the next targets convert (issue 11).

The overlapped schedule must change nothing in what is written: the same bundles, byte for byte,
as one target after another; a failing check stays that target's failure; the emulator's progress
lines reach the progress callback and never the captured output.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import edgepack
from edgepack.emulator import process
from edgepack.errors import DeviceCheckError
from edgepack.pipeline import device_workers

ROOT = Path(__file__).resolve().parents[1]
DIGITS_ONNX = ROOT / "examples" / "digits_cnn.onnx"
OVERVIEW = ["index.html", "summary.csv", "summary.json"]  # the run's model x target overview
GOOD = ["rpi4-arm64-onnxruntime", "rpi5-arm64-onnxruntime", "intel-openvino-cpu"]


def test_device_workers_follow_the_request_the_cores_and_the_checks() -> None:
    assert device_workers(4, 2) == 2  # never more than there are checks
    assert device_workers(1, 5) == 1
    assert device_workers(0, 5) == 1
    assert device_workers(None, 0) == 1
    auto = device_workers(None, 64)
    assert 1 <= auto <= (os.cpu_count() or 1)
    assert device_workers(None, 64, model_bytes=2**50) == 1  # no memory for two such checks


def test_checked_targets_that_need_no_conversion_are_prepared_first(tmp_path: Path) -> None:
    from edgepack.pipeline import checks_first
    from edgepack.plans import Options, make_plan
    from edgepack.profiles import load_profile

    names = ["intel-openvino-cpu", "rpi4-arm64", "jetson-orin-trt", "rpi4-arm64-onnxruntime", "rpi-armv7"]
    plan = make_plan(DIGITS_ONNX, [load_profile(n) for n in names], tmp_path)
    order = [t.name for t in checks_first(list(plan.targets), Options(), plan.source_format)]
    # ONNX Runtime runs the ONNX source as it is: its emulator starts while the .tflite targets convert;
    # then the other checked targets in plan order (OpenVINO's check runs natively); Jetson has none.
    assert order == ["rpi4-arm64-onnxruntime", "intel-openvino-cpu", "rpi4-arm64", "rpi-armv7", "jetson-orin-trt"]


def test_progress_lines_are_reported_and_kept_out_of_stderr(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(3):\n    print(f'edgepack-progress {i + 1}/3', file=sys.stderr, flush=True)\n"
    script += "print('a real warning', file=sys.stderr)\nprint('out')\n"
    seen: list[tuple[int, int]] = []
    rc, out, err, _ = process.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ),
        timeout_s=60,
        on_progress=lambda done, total, _s: seen.append((done, total)),
    )
    assert rc == 0 and out == "out\n"
    assert err == "a real warning\n"
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert "inference 1/3 done, about 60 s left" in process.eta_message("t", 1, 3, 30.0)
    assert "about 2 min left" in process.eta_message("t", 1, 3, 60.0)


def test_a_run_past_its_limit_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(DeviceCheckError, match="over 1 s"):
        process.run([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, env={}, timeout_s=1)
    assert process.stop_all() == 0  # nothing left running
    with pytest.raises(DeviceCheckError, match="interrupted"):  # after an interruption nothing new starts
        process.run([sys.executable, "-c", "pass"], cwd=tmp_path, env={}, timeout_s=10)
    process.allow()
    assert process.run([sys.executable, "-c", "print(1)"], cwd=tmp_path, env={}, timeout_s=60)[:2] == (0, "1\n")


def _bad_cpu_profile(folder: Path) -> Path:
    """An emulated target whose device check fails on its own: qemu has no such ``-cpu``."""
    path = folder / "no-such-cpu.toml"
    path.write_text(
        'extends = "rpi4-arm64-onnxruntime"\nname = "no-such-cpu"\n[emulation]\nqemu_cpu = "no-such-cpu"\n'
    )
    return path


@pytest.mark.emulation
@pytest.mark.onnx
def test_overlapped_checks_write_what_one_after_another_writes(tmp_path: Path) -> None:
    seen: list[str] = []
    serial = edgepack.package(DIGITS_ONNX, targets=GOOD, out=tmp_path / "serial", device_workers=1)
    bad = _bad_cpu_profile(tmp_path)
    with pytest.raises(DeviceCheckError) as caught:
        edgepack.package(
            DIGITS_ONNX, targets=[bad, *GOOD], out=tmp_path / "overlap", device_workers=2, progress=seen.append
        )
    overlapped = caught.value.result
    assert any("up to 2 at a time" in line for line in seen)
    assert [t.target for t in overlapped.failures] == ["no-such-cpu"]
    for name in GOOD:
        archive = f"{name}.tar.gz"
        assert (tmp_path / "overlap" / archive).read_bytes() == (tmp_path / "serial" / archive).read_bytes(), name
    checked = {t.target: (t.manifest or {}).get("device_check", {}) for t in serial.targets}
    assert all(checked[name].get("ran") is True for name in GOOD), checked
    assert sorted(p.name for p in (tmp_path / "overlap").iterdir()) == sorted(
        [*GOOD, *(f"{n}.tar.gz" for n in GOOD), *OVERVIEW]
    )
    summary = json.loads((tmp_path / "overlap" / "summary.json").read_text())  # the run's overview
    assert summary["counts"] == {"cells": 4, "passed": 3, "cached": 0, "failed": 1}
    assert len(summary["failures"]) == 1 and "no-such-cpu" in summary["failures"][0]


@pytest.mark.emulation
@pytest.mark.onnx
def test_an_interrupt_during_overlapped_checks_stops_the_emulators_and_writes_nothing(tmp_path: Path) -> None:
    import signal
    import subprocess

    import numpy as np

    psutil = pytest.importorskip("psutil")
    out, data = tmp_path / "out", tmp_path / "fresh.npz"  # inputs no stored emulated run has seen
    np.savez(data, x=np.random.default_rng().random((40, 8, 8, 1)).astype(np.float32))
    cmd = [sys.executable, "-m", "edgepack", "package", str(DIGITS_ONNX), "--target", ",".join(GOOD[:2])]
    cmd += ["--out", str(out), "--device-workers", "2", "--data", str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "CI": "true"})
    emulators: list = []
    while proc.poll() is None and not emulators:  # until an emulated check is running
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        emulators = [c for c in children if "run.py" in " ".join(_cmdline(c))]
    assert emulators, "the run ended before any emulated check started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-800:])
    assert b"interrupted; no partial bundle" in err and b"Traceback" not in err
    gone, alive = psutil.wait_procs(emulators, timeout=30)
    assert not alive, [p.pid for p in alive]  # no emulator left running after the run stopped
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")], list(out.iterdir())


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # noqa: BLE001 - a process that just ended
        return []


def test_device_agreement_scales_with_the_outputs_magnitude() -> None:
    """Two runtimes' float rounding grows with the values: 1e-2 on pixel coordinates near 640 is agreement."""
    import numpy as np

    from edgepack.devicecheck import compare
    from edgepack.profiles import load_profile

    profile = load_profile("rpi-armv7")
    tol = profile.accuracy.max_abs_error
    boxes = np.array([[640.0, 320.5, 12.0]], dtype=np.float32)
    near = compare([boxes], {"y": boxes + np.float32(tol * 10)}, ["y"], profile)
    assert near["agree"] and near["outputs"][0]["scale"] == 640.0
    far = compare([boxes], {"y": boxes + np.float32(tol * 1000)}, ["y"], profile)
    assert not far["agree"] and "output's magnitude 640" in far["failures"][0]
    probs = np.array([[0.2, 0.8]], dtype=np.float32)  # within [-1, 1]: absolute, as before
    assert not compare([probs], {"y": probs + np.float32(tol * 2)}, ["y"], profile)["agree"]
    assert compare([probs], {"y": probs + np.float32(tol / 2)}, ["y"], profile)["agree"]
    nan = compare([probs], {"y": np.full_like(probs, np.nan)}, ["y"], profile)
    assert not nan["agree"]
