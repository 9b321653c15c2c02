"""PyTorch models packaged for every target: a digits CNN trained in a fixture, validated against PyTorch itself.

The fixture trains the CNN on 1000 of scikit-learn's digits (seeded, a few seconds) and keeps the other 797
apart: 297 to calibrate int8, 500 to gate it. ``edgepack package digits.pt2 --target all`` runs as a user
would, in fp32 (agreement with PyTorch) and int8 (held-out accuracy).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.errors import ConversionError

torch = pytest.importorskip("torch")
nets = pytest.importorskip("tests.torch_nets")

pytestmark = [pytest.mark.torch, pytest.mark.tflite, pytest.mark.onnx, pytest.mark.openvino]
ROOT = Path(__file__).resolve().parents[1]
INT8_MAX_DROP = 0.005  # the goal: int8 loses at most 0.5 points of held-out accuracy


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("torchdigits")
    torch.manual_seed(0)
    model, x, y = nets.train_digits(seed=0)
    program = torch.export.export(model, (torch.from_numpy(x[:1]),))
    torch.export.save(program, str(folder / "digits.pt2"))
    np.savez(folder / "calib.npz", x=x[:297], y=y[:297])
    np.savez(folder / "eval.npz", x=x[297:], y=y[297:])
    return {"folder": folder, "model": model, "x": x, "y": y, "accuracy": nets.accuracy(model, x[297:], y[297:])}


def _cli(digits: dict, out: Path, *extra: str, targets: str = "all") -> dict:
    """``edgepack package digits.pt2 --target all`` as a user runs it; every target's manifest by name."""
    folder = digits["folder"]
    cmd = [sys.executable, "-m", "edgepack", "package", str(folder / "digits.pt2"), "--target", targets, "-o", str(out)]
    cmd += ["--data", str(folder / "calib.npz"), "--eval", str(folder / "eval.npz"), "--no-device-check"]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.name: json.loads((p / "manifest.json").read_text()) for p in out.iterdir() if p.is_dir()}


@pytest.fixture(scope="module")
def fp32_out(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "out"
    _cli(digits, out, "--precision", "fp32")
    return out


@pytest.fixture(scope="module")
def fp32(fp32_out) -> dict:
    return {p.name: json.loads((p / "manifest.json").read_text()) for p in fp32_out.iterdir() if p.is_dir()}


INT8_ONE_PER_BACKEND = "android-arm64,rpi4-arm64-onnxruntime,intel-openvino-cpu"  # jetson: the same QDQ as ORT


@pytest.fixture(scope="module")
def int8(digits, tmp_path_factory) -> dict:
    """int8 for one target per quantization backend (LiteRT, ONNX Runtime QDQ, NNCF); all targets in the slow test."""
    out = tmp_path_factory.mktemp("int8") / "out"
    return _cli(digits, out, "--precision", "int8", targets=INT8_ONE_PER_BACKEND)


def _export_step(manifest: dict) -> dict:
    return next(s for s in manifest["steps"] if s.get("from") == "torch")


def test_the_trained_cnn_is_a_real_classifier(digits):
    assert digits["accuracy"] > 0.97


def test_every_target_agrees_with_pytorch_in_fp32(fp32):
    from edgepack.profiles import load_all

    assert sorted(fp32) == sorted(p.name for p in load_all())
    for name, manifest in fp32.items():
        validation = manifest["validation"]
        assert validation["passed"] and validation["reference_runtime"] == "pytorch", name
        assert validation["inputs"] == "given", name  # the eval digits, not random inputs
        tolerance = manifest["profile"]["accuracy"]["max_abs_error"]
        if manifest["model"]["precision"] == "fp32":
            assert validation["outputs"][0]["max_abs_error"] <= tolerance, name
        step = _export_step(manifest)
        assert step["exporter"] == "dynamo" and step["export_attempts"][0]["ok"], name
        assert manifest["source"]["format"] == "torch"


def _check_int8(manifests: dict, expected: int) -> None:
    quantized = [m for m in manifests.values() if m["model"]["precision"] == "int8"]
    assert len(quantized) == expected
    for manifest in quantized:
        gate = manifest["quantization"]["gate"]
        name = manifest["target"]["name"]
        assert gate["passed"] and gate["float_accuracy"] > 0.97, name
        assert gate["float_accuracy"] - gate["quantized_accuracy"] <= INT8_MAX_DROP + 1e-9, (name, gate)
        assert _export_step(manifest)["exporter"] == "dynamo", name


def test_int8_loses_at_most_half_a_point_on_held_out_digits(int8):
    _check_int8(int8, expected=3)


@pytest.mark.slow
def test_int8_for_every_target(digits, tmp_path):
    """``--target all --precision int8``: every target that accepts int8 (android-arm64-gpu stays fp16)."""
    _check_int8(_cli(digits, tmp_path / "out", "--precision", "int8"), expected=8)


def test_manifest_layouts_are_the_bundles_own(fp32, int8):
    from edgepack.artifact import Artifact, ModelFormat, TensorSpec
    from edgepack.torchio import input_layouts

    for manifest in [*fp32.values(), *int8.values()]:
        entry = manifest["inputs"][0]
        assert entry["shape"] == [1, 1, 8, 8] and entry["layout"] == "NCHW", manifest["target"]["name"]
    source = Artifact(Path("m.pt2"), ModelFormat.TORCH, "", (TensorSpec("x", (1, 16, 8, 8)),), ())
    nhwc = Artifact(Path("m.tflite"), ModelFormat.TFLITE, "", (TensorSpec("x", (1, 8, 8, 16)),), ())
    assert input_layouts(source, nhwc) == ["NHWC"] and input_layouts(source, source) == ["NCHW"]


def test_run_py_takes_the_bundles_layout_and_matches_pytorch(fp32_out, digits, tmp_path):
    x = digits["x"][:1]  # NCHW, as the manifests say every bundle takes it
    np.save(tmp_path / "x.npy", x)
    expected = digits["model"](torch.from_numpy(x)).detach().numpy()
    for target in ("rpi4-arm64", "rpi4-arm64-onnxruntime", "intel-openvino-cpu"):
        out = tmp_path / f"{target}.npz"
        run = fp32_out / target / "run.py"
        cmd = [sys.executable, str(run), "--input", str(tmp_path / "x.npy"), "--output", str(out), "--runs", "1"]
        cmd += ["--precision", "f32"] if target == "intel-openvino-cpu" else []  # OpenVINO may pick bf16 on this CPU
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = next(iter(np.load(out).values()))
        assert np.abs(got.reshape(expected.shape) - expected).max() < 1e-4, target


def test_a_dynamic_batch_stays_dynamic_where_the_runtime_runs_ranges(tmp_path):
    import edgepack

    torch.manual_seed(0)
    module = nets.SegmentationHead().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(module, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "seg.pt2"))
    result = edgepack.package(
        tmp_path / "seg.pt2",
        targets=["rpi4-arm64-onnxruntime"],
        out=tmp_path / "out",
        input_shapes=["x=[1:2:8],3,32,32"],
        device_check=False,
    )
    manifest = result.targets[0].manifest
    assert manifest["input_ranges"][0]["max"] == [8, 3, 32, 32]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "out" / "rpi4-arm64-onnxruntime" / "model.onnx"))
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert np.abs(session.run(None, {"x": x})[0] - expected).max() < 1e-4


def test_a_live_module_with_a_wrong_dynamo_export_ships_the_fallback(tmp_path):
    import edgepack

    torch.manual_seed(0)
    module, x = nets.ExportOnlyBranch(), torch.randn(1, 3, 16, 16)
    result = edgepack.package(
        module, example_inputs=(x,), targets=["rpi4-arm64-onnxruntime"], out=tmp_path, device_check=False
    )
    manifest = result.targets[0].manifest
    step = _export_step(manifest)
    assert step["exporter"] == "torchscript"
    dynamo, fallback = step["export_attempts"]
    assert (dynamo["exporter"], dynamo["ok"]) == ("dynamo", False) and dynamo["max_abs_error"] > 0.1
    assert (fallback["exporter"], fallback["ok"]) == ("torchscript", True)
    assert manifest["validation"]["passed"] and manifest["validation"]["reference_runtime"] == "pytorch"


def test_when_no_export_agrees_nothing_is_shipped(tmp_path):
    import edgepack

    module, x = nets.WrongWhenExported(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ConversionError) as caught:
        edgepack.package(module, example_inputs=(x,), targets=["rpi4-arm64-onnxruntime"], out=tmp_path)
    assert "reproduces PyTorch" in caught.value.one_line()
    assert not (tmp_path / "rpi4-arm64-onnxruntime").exists()
