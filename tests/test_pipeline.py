"""End to end: package real and tiny models for every target; bundles are validated, sealed, atomic, reproducible."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edgepack
from edgepack.errors import AccuracyError, OutputExistsError, VerificationError
from edgepack.profiles import builtin_names

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
DIGITS_DATA = ROOT / "calibration" / "digits" / "digits.npz"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def all_targets(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("all")
    result = edgepack.package(DIGITS, targets=["all"], out=out, data=DIGITS_DATA, device_check=False)
    return out, result


def test_every_target_gets_a_validated_sealed_bundle(all_targets):
    out, result = all_targets
    assert result.ok and {t.target for t in result.targets} == set(builtin_names())
    for target in result.targets:
        manifest = json.loads((target.bundle / "manifest.json").read_text())
        assert manifest["validation"]["passed"] and manifest["validation"]["inputs"] == "given"
        assert manifest["validation"]["samples"] == 32
        assert manifest["source"]["sha256"] == _digest(DIGITS)
        assert manifest["input_shape_origin"]["image"].startswith("model, batch 1")
        assert (target.bundle / manifest["model"]["file"]).is_file()
        assert {"run.py", "requirements.txt"} <= set(manifest["files"])
        assert all(step.get("tool_version") for step in manifest["steps"] if step["name"] == "convert")
        report = edgepack.verify(target.archive)
        assert report.to_dict()["files_checked"] >= 3
        with tarfile.open(target.archive) as tar:
            assert not any("/report/" in name for name in tar.getnames())


def test_onnx_intermediate_is_made_once(tmp_path, monkeypatch):
    import edgepack.convert as convert

    calls: list[tuple[str, str]] = []
    real = convert.convert_once

    def counting(src, dst, workdir, options):
        calls.append((src.format.value, dst.value))
        return real(src, dst, workdir, options)

    monkeypatch.setattr(convert, "convert_once", counting)
    targets = ["intel-openvino-cpu", "jetson-orin-trt", "rpi4-arm64-onnxruntime", "rpi4-arm64", "rpi5-arm64"]
    edgepack.package(DIGITS, targets=targets, out=tmp_path, device_check=False)
    assert calls.count(("keras", "onnx")) == 1
    assert calls.count(("keras", "tflite")) == 1


def test_jetson_bundle_and_opset_follow_jetpack(all_targets, tmp_path):
    import onnx

    out, _ = all_targets
    bundle = out / "jetson-orin-trt"
    script = (bundle / "build_engine.sh").read_text()
    assert "trtexec" in script and "--onnx=" in script and "--fp16" in script
    assert (bundle / "build_engine.sh").stat().st_mode & 0o111
    old = edgepack.load_profile("jetson-orin-trt", overrides={"tensorrt": {"jetpack": "5.1"}})
    result = edgepack.package(DIGITS, targets=[old], out=tmp_path, device_check=False)
    manifest = result.targets[0].manifest
    model = onnx.load(str(result.targets[0].bundle / manifest["model"]["file"]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 17


def test_archives_are_byte_identical_across_runs(all_targets, tmp_path):
    out, first = all_targets
    edgepack.package(DIGITS, targets=["all"], out=tmp_path, data=DIGITS_DATA, device_check=False)
    for target in first.targets:
        assert _digest(target.archive) == _digest(tmp_path / target.archive.name), target.target


def test_no_overwrite_without_force(tmp_path):
    edgepack.package(DIGITS, targets=["rpi4-arm64-onnxruntime"], out=tmp_path, device_check=False)
    before = _digest(tmp_path / "rpi4-arm64-onnxruntime.tar.gz")
    (tmp_path / "rpi4-arm64-onnxruntime" / "marker").write_text("old")
    with pytest.raises(OutputExistsError):
        edgepack.package(DIGITS, targets=["rpi4-arm64-onnxruntime"], out=tmp_path, device_check=False)
    assert (tmp_path / "rpi4-arm64-onnxruntime" / "marker").exists()
    edgepack.package(DIGITS, targets=["rpi4-arm64-onnxruntime"], out=tmp_path, device_check=False, force=True)
    assert not (tmp_path / "rpi4-arm64-onnxruntime" / "marker").exists()
    assert _digest(tmp_path / "rpi4-arm64-onnxruntime.tar.gz") == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".trash" in p.name]


def test_accuracy_budget_failure_writes_nothing(tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text(
        'extends = "android-arm64-gpu"\nname = "strict-gpu"\n[accuracy]\nmax_abs_error = 1e-9\nmin_cosine = 1.0\n'
    )
    with pytest.raises(AccuracyError) as info:
        edgepack.package(DIGITS, targets=[strict], out=tmp_path / "out", data=DIGITS_DATA, device_check=False)
    assert "probs" in str(info.value)
    assert not (tmp_path / "out" / "strict-gpu").exists()
    assert not (tmp_path / "out" / "strict-gpu.tar.gz").exists()


def test_signed_bundle_verifies_only_with_its_key(tmp_path):
    from edgepack.signing import keygen

    keygen(tmp_path / "key.pem", tmp_path / "key.pub")
    keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    result = edgepack.package(
        DIGITS, targets=["intel-openvino-cpu"], out=tmp_path / "out", device_check=False, sign_key=tmp_path / "key.pem"
    )
    archive = result.targets[0].archive
    assert edgepack.verify(archive, public_key=tmp_path / "key.pub").to_dict()["signature"]
    with pytest.raises(VerificationError):
        edgepack.verify(archive, public_key=tmp_path / "other.pub")


def test_native_device_check_runs_the_bundles_runner(tmp_path):
    result = edgepack.package(DIGITS, targets=["intel-openvino-cpu"], out=tmp_path, data=DIGITS_DATA)
    bundle = result.targets[0].bundle
    check = json.loads((bundle / "manifest.json").read_text())["device_check"]
    assert check["ran"] and check["runner"] == "native" and check["precision"] == "f32"
    assert check["agreement"]["agree"]
    measured = json.loads((bundle / "report" / "measurements.json").read_text())
    assert measured["latency"]["median_ms"] > 0 and "natively" in measured["latency"]["label"]
    assert "latency" not in json.dumps(check)


def test_onnx_and_tflite_sources(tmp_path, tiny_onnx_path, tiny_tflite_path):
    from_onnx = edgepack.package(
        tiny_onnx_path, targets=["rpi4-arm64", "intel-openvino-cpu"], out=tmp_path / "a", device_check=False
    )
    steps = from_onnx.targets[0].manifest["steps"]
    assert [s.get("tool") for s in steps if s["name"] == "convert"][-1] == "onnx2tf"
    assert any(s["name"] == "simplify" for s in steps)
    from_tflite = edgepack.package(tiny_tflite_path, targets=["rpi4-arm64", "rpi4-arm64-onnxruntime"],
                                   out=tmp_path / "b", device_check=False)
    bundle = from_tflite.targets[0]
    assert _digest(bundle.bundle / bundle.manifest["model"]["file"]) == _digest(tiny_tflite_path)
    onnx_target = from_tflite.targets[1].manifest  # .tflite -> ONNX with tf2onnx; its dynamic batch fixed
    assert onnx_target["inputs"][0]["shape"][0] == 1 and onnx_target["validation"]["passed"]


def test_run_py_in_the_bundle_runs_natively(all_targets, tmp_path):
    import subprocess
    import sys

    out, _ = all_targets
    x = np.load(DIGITS_DATA)["x"][:1]
    np.save(tmp_path / "x.npy", x)
    for target in ("rpi4-arm64-onnxruntime", "android-arm64", "intel-openvino-cpu"):
        proc = subprocess.run(
            [
                sys.executable,
                str(out / target / "run.py"),
                "--input",
                str(tmp_path / "x.npy"),
                "--output",
                str(tmp_path / f"{target}.npz"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((out / target / "manifest.json").read_text())
        assert manifest["outputs"][0]["source_name"] == "probs"
        probs = np.load(tmp_path / f"{target}.npz")[manifest["outputs"][0]["name"]]
        assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) < 1e-4
