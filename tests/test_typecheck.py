"""The package type-checks with mypy (the ``[tool.mypy]`` settings in pyproject.toml), and the API's results are typed.

mypy is in the ``dev`` extra, so these tests never skip: a missing mypy is a broken dev install.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_mypy_is_clean():
    proc = _mypy("edgepack")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_api_results_are_typed_not_any(tmp_path):
    """``inspect``, ``verify``, ``check`` and ``emulator_setup`` return their result classes, not ``Any``."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            from edgepack import api

            reveal_type(api.inspect("m.onnx"))
            reveal_type(api.verify("bundle"))
            reveal_type(api.check("bundle"))
            reveal_type(api.emulator_setup("rpi4-arm64"))
            reveal_type(api.package("m.onnx", targets=["all"]))
            """
        )
    )
    proc = _mypy("--no-error-summary", str(probe))
    revealed = re.findall(r'Revealed type is "([^"]+)"', proc.stdout)
    assert revealed == [
        "edgepack.inspection.InspectReport",
        "edgepack.integrity.VerifyReport",
        "edgepack.devicecheck.CheckResult",
        "edgepack.emulator.qemu.EmuEnv",
        "edgepack.plans.PackageResult",
    ], proc.stdout[-6000:]
