"""Interrupting `edgepack package` at random points never leaves a partial bundle (SIGINT and SIGTERM)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = "intel-openvino-cpu"


def _package(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgepack",
            "package",
            str(ROOT / "examples" / "digits_cnn.keras"),
            "-t",
            TARGET,
            "--out",
            str(out),
            "--force",
            "--no-device-check",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CI": "true"},
    )


def _state(out: Path) -> str:
    """'absent' or 'complete' (verified); anything else fails the test."""
    from edgepack.integrity import verify_bundle

    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name or ".trash-" in p.name] if out.exists() else []
    assert not leftovers, leftovers
    bundle, archive = out / TARGET, out / f"{TARGET}.tar.gz"
    if not bundle.exists():
        return "absent"
    verify_bundle(bundle)
    verify_bundle(archive)
    return "complete"


def test_twenty_interrupted_runs_leave_no_partial_bundle(tmp_path):
    out = tmp_path / "out"
    started = time.perf_counter()
    baseline = _package(out)
    assert baseline.wait(timeout=600) == 0, baseline.stderr.read().decode()[-2000:]
    duration = time.perf_counter() - started
    assert _state(out) == "complete"
    rng = random.Random(20261124)
    codes = []
    for attempt in range(20):
        proc = _package(out)
        time.sleep(rng.uniform(0.1, 1.1) * duration)  # anywhere in a run, from start-up to the final rename
        proc.send_signal(rng.choice([signal.SIGINT, signal.SIGTERM]))
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"run {attempt} did not stop after the signal")
        assert b"Traceback" not in err, err.decode()[-2000:]
        assert proc.returncode in (0, 130, 143, -signal.SIGINT, -signal.SIGTERM), (proc.returncode, err[-500:])
        # --force replaces the bundle only at the very end: the previous one (or the new one) is always whole.
        assert _state(out) == "complete", attempt
        codes.append(proc.returncode)
    assert any(code != 0 for code in codes), codes
