"""The built-in targets/ and calibration/ data work from an installed wheel, not only from the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    target = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed: {build.stderr[-2000:]}")
    wheel = next(wheels.glob("edgepack-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return target


def test_wheel_ships_profiles_and_calibration(installed, tmp_path):
    code = (
        "import edgepack, edgepack.resources as r\n"
        "from edgepack.profiles import load_all\n"
        "import numpy as np\n"
        "assert '_data' in str(r.targets_dir()), r.targets_dir()\n"
        "names = [p.name for p in load_all()]\n"
        "data = np.load(r.calibration_dir() / 'digits' / 'digits.npz')\n"
        "print(edgepack.__file__, len(names), data['x'].shape)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert str(installed) in proc.stdout and "(300, 8, 8, 1)" in proc.stdout
    assert int(proc.stdout.split()[1]) >= 7
