"""The CLI: fast help without heavy imports, one-line errors with their exit codes, dry-run plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.cli import main
from edgepack.errors import MissingDependencyError, ModelError, ProfileError, UsageError

HEAVY = ("tensorflow", "keras", "openvino", "onnxruntime", "onnxsim", "onnx", "nncf", "tf2onnx", "torch")


def test_help_imports_no_heavy_framework():
    code = (
        "import sys\n"
        "from edgepack.cli import main\n"
        "rc = main(['--help'])\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr
    assert "package" in proc.stdout


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepack", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "CI": "true"},
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("edgepack: error [")
    return lines[0]


def test_unknown_target(tmp_path, tiny_onnx_path):
    proc = run_cli(["package", str(tiny_onnx_path), "--target", "nokia-3310", "--out", str(tmp_path / "out")])
    assert proc.returncode == ProfileError.exit_code
    assert "nokia-3310" in _one_line_error(proc)
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_models(tmp_path):
    proc = run_cli(["inspect", str(tmp_path / "nope.onnx")])
    assert proc.returncode == ModelError.exit_code
    assert "does not exist" in _one_line_error(proc)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 40)
    proc = run_cli(["package", str(bad), "-t", "rpi4-arm64", "--out", str(tmp_path / "out")])
    assert proc.returncode == ModelError.exit_code, proc.stderr
    _one_line_error(proc)
    assert not (tmp_path / "out" / "rpi4-arm64").exists()


def test_bad_input_shape_flag(tmp_path, tiny_onnx_dynamic_path):
    proc = run_cli(
        [
            "package",
            str(tiny_onnx_dynamic_path),
            "-t",
            "rpi4-arm64",
            "--input-shape",
            "x=1,a",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert proc.returncode == UsageError.exit_code
    assert "--input-shape" in _one_line_error(proc)


def test_dry_run_json_plan(tmp_path, tiny_onnx_path):
    proc = run_cli(["package", str(tiny_onnx_path), "-t", "all", "--dry-run", "--json", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    targets = {t["target"]: t for t in plan["targets"]}
    assert targets["intel-openvino-cpu"]["route"] == ["openvino"]
    assert targets["rpi4-arm64"]["route"] == ["tflite"]
    assert "simplify" in targets["jetson-orin-trt"]["steps"]
    assert plan["onnx_opset"] <= 17
    assert not any(Path(tmp_path).iterdir())


def test_targets_listing_and_show():
    assert main(["targets"]) == 0
    proc = run_cli(["targets", "show", "rpi5-arm64"])
    shown = json.loads(proc.stdout)
    assert shown["emulation"]["qemu_cpu"] == "cortex-a76" and shown["format"] == "tflite"


def test_rpi_board_without_profile(tmp_path, tiny_onnx_path):
    assert main(["rpi", str(tiny_onnx_path), "--board", "armv7", "--runtime", "onnxruntime", "--dry-run"]) == 2


def test_missing_dependency_names_the_extra(monkeypatch):
    from edgepack.deps import require

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgepack\[openvino\]'"):
        require("openvino")
