"""Dims stay dynamic where the runtime runs them (ONNX Runtime, OpenVINO, TensorRT) and are fixed elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgepack
from tests.test_shapes import paddle_cls_like

TARGETS = ["rpi4-arm64-onnxruntime", "intel-openvino-cpu", "jetson-orin-trt", "rpi4-arm64"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dynamic")
    model = paddle_cls_like(folder / "cls.onnx")  # [?, 3, ?, ?] with stale intermediate shapes
    out = folder / "out"
    result = edgepack.package(
        model, targets=TARGETS, out=out, input_shapes=["x=1,3,48,[32:192:320]"], device_check=False
    )
    assert result.ok, [t.error for t in result.targets]
    return out


def _manifest(out: Path, target: str) -> dict:
    return json.loads((out / target / "manifest.json").read_text())


def test_onnxruntime_keeps_the_width_dynamic_and_validates_min_opt_max(packaged: Path) -> None:
    import onnx

    model = onnx.load(str(packaged / "rpi4-arm64-onnxruntime" / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:3]] == [1, 3, 48] and dims[3].dim_param and not dims[3].dim_value
    manifest = _manifest(packaged, "rpi4-arm64-onnxruntime")
    expected = {"name": "x", "min": [1, 3, 48, 32], "opt": [1, 3, 48, 192], "max": [1, 3, 48, 320]}
    assert manifest["input_ranges"] == [expected]
    corners = manifest["validation"]["shape_corners"]
    assert [c["inputs"]["x"] for c in corners] == [[1, 3, 48, 32], [1, 3, 48, 320]]
    assert all(c["passed"] for c in corners) and manifest["validation"]["passed"]


def test_openvino_ir_keeps_the_range(packaged: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(packaged / "intel-openvino-cpu" / "model.xml"))
    width = model.inputs[0].get_partial_shape()[3]
    assert width.is_dynamic and width.get_min_length() == 32 and width.get_max_length() == 320
    assert len(_manifest(packaged, "intel-openvino-cpu")["validation"]["shape_corners"]) == 2


def test_tensorrt_gets_an_optimisation_profile(packaged: Path) -> None:
    script = (packaged / "jetson-orin-trt" / "build_engine.sh").read_text()
    for flag in ("--minShapes=x:1x3x48x32", "--optShapes=x:1x3x48x192", "--maxShapes=x:1x3x48x320"):
        assert flag in script


def test_litert_is_fixed_at_the_opt_shape(packaged: Path) -> None:
    manifest = _manifest(packaged, "rpi4-arm64")
    assert "input_ranges" not in manifest and "shape_corners" not in manifest["validation"]
    assert manifest["inputs"][0]["shape"][1:3] in ([48, 192], [3, 48])  # NHWC or NCHW, at 48x192
    assert 192 in manifest["inputs"][0]["shape"]


def test_a_profile_can_give_the_range(tmp_path: Path) -> None:
    model = paddle_cls_like(tmp_path / "cls.onnx")
    profile = tmp_path / "ocr-ort.toml"
    profile.write_text(
        'extends = "rpi4-arm64-onnxruntime"\nname = "ocr-ort"\n[inputs]\nshapes = { x = "1,3,48,[32:192:320]" }\n'
    )
    result = edgepack.package(model, targets=[profile], out=tmp_path / "out", device_check=False)
    manifest = result.targets[0].manifest
    assert manifest["input_ranges"][0]["max"] == [1, 3, 48, 320]
    assert manifest["input_shape_origin"]["x"] == "profile [inputs] shapes, range"  # where the shape came from
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "rpi4-arm64-onnxruntime"\nname = "bad"\n[inputs]\nshapes = { x = "1,3,48,[320:32:9]" }\n')
    with pytest.raises(edgepack.errors.ProfileError, match=r"bad\.toml.*inputs\.shapes"):
        edgepack.load_profile(bad)
