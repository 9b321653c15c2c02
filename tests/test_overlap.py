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
