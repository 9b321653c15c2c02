"""The pipeline with int8, fp16, compression and emulated device checks, on the trained digits CNN."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgepack
from edgepack.errors import DataError, LatencyBudgetError, UsageError, VerificationError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
DATA = ROOT / "calibration" / "digits" / "digits.npz"


@pytest.fixture(scope="module")
def int8(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("int8")
    targets = ["android-arm64", "rpi4-arm64", "rpi4-arm64-onnxruntime", "intel-openvino-cpu", "jetson-orin-trt"]
    result = edgepack.package(DIGITS, targets=targets, out=out, data=DATA, precision="int8", device_check=False)
    return {t.target: {"manifest": t.manifest, "bundle": t.bundle, "archive": t.archive} for t in result.targets}


def test_int8_archives_are_byte_identical_across_runs(int8, tmp_path):
    again = edgepack.package(DIGITS, targets=list(int8), out=tmp_path, data=DATA, precision="int8", device_check=False)
    for target in again.targets:
        first = int8[target.target]["archive"].read_bytes()
        assert hashlib.sha256(first).digest() == hashlib.sha256(target.archive.read_bytes()).digest(), target.target


def test_every_backend_passes_the_gate_with_labels(int8):
    for name, item in int8.items():
        manifest = item["manifest"]
        assert manifest["model"]["precision"] == "int8", name
        gate = manifest["quantization"]["gate"]
        assert gate["passed"] and manifest["validation"]["passed"], name
        assert gate["float_accuracy"] > 0.95 and gate["quantized_accuracy"] >= 0.97 * gate["float_accuracy"], name
        assert manifest["quantization"]["settings"]["method"] in ("minmax", "entropy"), name
        assert "latency" not in manifest["quantization"], name  # wall-clock figures stay out of the manifest
        assert [s["name"] for s in manifest["steps"]].count("quantize") == 1


def test_int8_io_follows_the_profile(int8):
    android = int8["android-arm64"]["manifest"]
    assert android["inputs"][0]["dtype"] == "int8"
    params = android["quantization"]["io"][android["inputs"][0]["name"]]
    assert params["scale"] > 0 and params["dtype"] == "int8"
    assert int8["rpi4-arm64"]["manifest"]["inputs"][0]["dtype"] == "float32"


def test_jetson_int8_is_explicit_qdq_for_tensorrt(int8):
    import onnx

    bundle = int8["jetson-orin-trt"]["bundle"]
    script = (bundle / "build_engine.sh").read_text()
    assert "--stronglyTyped" in script and "--fp16" not in script
    model = onnx.load(str(bundle / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_run_py_dequantizes_like_the_host(int8, tmp_path):
    import numpy as np

    bundle = int8["android-arm64"]["bundle"]
    x = np.load(DATA)["x"][:1]
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [
            sys.executable,
            str(bundle / "run.py"),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "y.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    name = int8["android-arm64"]["manifest"]["outputs"][0]["name"]
    probs = np.load(tmp_path / "y.npz")[name]
    assert probs.dtype == np.float32 and abs(float(probs.sum()) - 1.0) < 0.05


def test_int8_without_data_is_refused(tmp_path):
    with pytest.raises(DataError, match="--data"):
        edgepack.package(DIGITS, targets=["rpi4-arm64"], out=tmp_path / "o", precision="int8", device_check=False)
    assert not (tmp_path / "o" / "rpi4-arm64").exists()


def test_precision_applies_where_accepted(tmp_path):
    plan = edgepack.plan(DIGITS, targets=["all"], out=tmp_path, precision="fp16")
    precisions = {t.profile.name: t.profile.precision.value for t in plan.targets}
    assert precisions["rpi4-arm64"] == "fp16" and precisions["jetson-orin-trt"] == "fp16"
    assert precisions["intel-openvino-cpu"] == "fp32"
    with pytest.raises(UsageError):
        edgepack.plan(DIGITS, targets=["all"], out=tmp_path, precision="int4")


def test_structured_pruning_before_conversion(tmp_path):
    result = edgepack.package(
        DIGITS,
        targets=["rpi4-arm64-onnxruntime"],
        out=tmp_path,
        data=DATA,
        device_check=False,
        compress={"prune": {"sparsity": 0.5, "structured": True}},
    )
    manifest = result.targets[0].manifest
    step = manifest["compression"][0]
    assert step["method"].startswith("prune") and step["settings"]["structured"]
    assert step["after"]["macs"] < 0.5 * step["before"]["macs"]
    assert manifest["source"]["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()  # the user's model
    measured = json.loads((result.targets[0].bundle / "report" / "measurements.json").read_text())
    assert measured["compression"][0]["method"].startswith("prune")


@pytest.mark.emulation
def test_emulated_int8_device_check_and_check_command(int8, tmp_path):
    result = edgepack.package(DIGITS, targets=["rpi4-arm64"], out=tmp_path, data=DATA, precision="int8")
    target = result.targets[0]
    check = target.manifest["device_check"]
    assert check["ran"] and check["runner"] == "qemu-user" and check["machine"] == "aarch64"
    assert check["cpu"] == "cortex-a72" and check["agreement"]["agree"]
    figures = json.loads((target.bundle / "report" / "measurements.json").read_text())["figures"]
    assert figures["emulated"]["label"].startswith("emulated") and figures["estimate"]["label"].startswith("estimate")
    assert figures["instructions"]["per_inference"] > 0
    again = edgepack.check(target.archive)
    assert again.facts["agreement"]["agree"] and again.measurements["instructions"]["per_inference"] > 0
    # A bundle that does not match its manifest is never run.
    model = target.bundle / target.manifest["model"]["file"]
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(VerificationError):
        edgepack.check(target.bundle)


@pytest.mark.emulation
def test_latency_budget_fails_the_run_with_its_exit_code(tmp_path):
    tight = tmp_path / "tight.toml"
    tight.write_text('extends = "rpi4-arm64"\nname = "tight-pi"\n[latency]\nbudget_ms = 0.000001\n')
    with pytest.raises(LatencyBudgetError) as info:
        edgepack.package(DIGITS, targets=[tight], out=tmp_path / "out")
    assert info.value.exit_code == 9 and "budget" in str(info.value)
    assert not (tmp_path / "out" / "tight-pi").exists()


def test_image_folder_with_preprocessing_drives_int8(tmp_path):
    """Digits saved as PNGs in class folders: --preprocess turns them into the model's [0, 1] NHWC input."""
    import numpy as np
    from PIL import Image

    data = np.load(DATA)
    for i, (x, y) in enumerate(zip(data["x"][:120], data["y"][:120])):
        folder = tmp_path / "images" / str(int(y))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[..., 0] * 255).round().astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    result = edgepack.package(
        DIGITS,
        targets=["rpi4-arm64-onnxruntime"],
        out=tmp_path / "out",
        data=tmp_path / "images",
        precision="int8",
        device_check=False,
        preprocess={"size": "8x8", "channel_order": "L", "scale": "1/255"},
        timestamp=True,
    )
    manifest = result.targets[0].manifest
    assert manifest["data"]["kind"] == "image-folder" and manifest["data"]["preprocess_applied"]
    assert manifest["quantization"]["gate"]["float_accuracy"] > 0.9  # labels came from the folder names
    assert manifest["created"].endswith("+00:00")


def test_eval_set_is_used_for_the_gate(tmp_path):
    import numpy as np

    data = np.load(DATA)
    np.savez(tmp_path / "calib.npz", x=data["x"][:100])
    np.savez(tmp_path / "eval.npz", x=data["x"][100:], y=data["y"][100:])
    result = edgepack.package(
        DIGITS,
        targets=["intel-openvino-cpu"],
        out=tmp_path / "out",
        data=tmp_path / "calib.npz",
        eval_data=tmp_path / "eval.npz",
        precision="int8",
        device_check=False,
        quantize={"method": "percentile", "samples": 50},
    )
    manifest = result.targets[0].manifest
    assert manifest["quantization"]["gate"]["samples"] == 200
    assert manifest["quantization"]["gate"]["float_accuracy"] > 0.95
    assert manifest["quantization"]["settings"]["calibration_samples"] == 50
    with pytest.raises(UsageError):
        edgepack.package(
            DIGITS,
            targets=["intel-openvino-cpu"],
            out=tmp_path / "o2",
            data=tmp_path / "calib.npz",
            precision="int8",
            device_check=False,
            quantize={"method": "kl-magic"},
        )


@pytest.mark.emulation
def test_structured_pruning_is_judged_on_the_emulated_device(tmp_path):
    """Structured pruning must cut executed instructions on the device, not only bytes."""
    result = edgepack.package(
        DIGITS,
        targets=["rpi4-arm64"],
        out=tmp_path,
        data=DATA,
        compress={"prune": {"sparsity": 0.5, "structured": True}},
    )
    measured = json.loads((result.targets[0].bundle / "report" / "measurements.json").read_text())
    device = measured["compression_device"]
    before, after = device["before"]["instructions_per_inference"], device["after"]["instructions_per_inference"]
    assert before and after and after < 0.8 * before
    assert device["after"]["size_bytes"] < device["before"]["size_bytes"]
    report = (result.targets[0].bundle / "report" / "report.md").read_text()
    assert "Compression on the emulated device" in report and "EMULATED" in report
