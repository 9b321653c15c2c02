"""ONNX simplification: a correct smaller result is kept; failures, wrong outputs and inflation keep the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack import simplify as simplify_module
from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.errors import DataError, ModelError, UsageError
from edgepack.simplify import simplify

SEED = 0


def _save(model, path: Path, inputs, outputs) -> Artifact:
    import onnx

    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return Artifact.from_file(path, ModelFormat.ONNX, inputs, outputs)


@pytest.fixture
def redundant(tmp_path) -> Artifact:
    """x (1, 64) -> Identity -> MatMul(W * 2) -> Reshape(to its own shape) -> y: foldable, 5 nodes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("MatMul", ["a", "w2"], ["m"]),
        helper.make_node("Shape", ["m"], ["s"]),
        helper.make_node("Reshape", ["m", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "redundant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializer=[w, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, tmp_path / "redundant.onnx", (TensorSpec("x", (1, 64)),), (TensorSpec("y", (1, 64)),))


@pytest.fixture
def inflating(tmp_path) -> Artifact:
    """y = x + Expand(0.5, [256, 256]): constant folding turns 4 bytes into a 256 KiB tensor."""
    from onnx import TensorProto, helper, numpy_helper

    half = numpy_helper.from_array(np.array([0.5], np.float32), "half")
    shape = numpy_helper.from_array(np.array([256, 256], np.int64), "shape")
    nodes = [helper.make_node("Expand", ["half", "shape"], ["e"]), helper.make_node("Add", ["x", "e"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "inflating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 256])],
        initializer=[half, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec = (TensorSpec("x", (1, 256, 256)),)
    return _save(model, tmp_path / "inflating.onnx", spec, (TensorSpec("y", (1, 256, 256)),))


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("tool", ["auto", "onnxsim", "onnxslim"])
def test_simplification_is_kept_when_correct_and_smaller(redundant, tool, tmp_path) -> None:
    out, report = simplify(redundant, tmp_path / "out", tool=tool)
    assert report.tool in (("onnxsim", "onnxslim") if tool == "auto" else (tool,))
    assert not report.kept_original and out.path == tmp_path / "out" / "model.onnx"
    assert report.nodes_after < report.nodes_before == 5
    assert report.bytes_after <= report.bytes_before + 4096  # shape annotations may add a little
    assert out.inputs == redundant.inputs and out.meta["tool"] == report.tool and out.meta["tool_version"]
    x = np.random.default_rng(SEED).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(_ort(out.path, x), _ort(redundant.path, x), rtol=1e-5, atol=1e-6)
    json.dumps(report.to_dict())


def test_inflating_model_keeps_the_original(inflating, tmp_path) -> None:
    out, report = simplify(inflating, tmp_path / "out")
    assert out is inflating and report.kept_original and report.tool is None
    assert set(report.rejected) == {"onnxsim", "onnxslim"}
    assert all("larger than the original" in why for why in report.rejected.values())
    assert report.bytes_after == report.bytes_before


def _perturbed(model):
    """A 'simplifier' that changes the weights: its outputs differ."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == "w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, "w"))
    model.graph.node.pop(0)  # and drops the Identity, so it looks like a gain
    model.graph.node[1].input[0] = "x"
    return model


def _broken(model):
    raise RuntimeError("simplifier crashed")


def _invalid(model):
    model.graph.node[0].op_type = "NoSuchOp"
    return model


@pytest.mark.parametrize(
    ("fake", "reason"),
    [(_perturbed, "outputs differ"), (_broken, "failed: simplifier crashed"), (_invalid, "onnx.checker")],
)
def test_bad_simplifier_keeps_the_original(redundant, monkeypatch, fake, reason, tmp_path) -> None:
    monkeypatch.setitem(simplify_module.TOOLS, "onnxsim", fake)
    out, report = simplify(redundant, tmp_path / "out", tool="onnxsim")
    assert out is redundant and report.kept_original
    assert reason in report.rejected["onnxsim"]


def test_auto_keeps_the_smallest_correct_result(redundant, monkeypatch, tmp_path) -> None:
    real = simplify_module.TOOLS["onnxsim"]

    def padded(model):
        result = real(model)
        result.doc_string = "x" * 200  # correct, fewer nodes, but bigger than onnxsim's result
        return result

    monkeypatch.setitem(simplify_module.TOOLS, "onnxslim", padded)
    _, report = simplify(redundant, tmp_path / "out", tool="auto")
    assert report.tool == "onnxsim"
    assert "not the smallest" in report.rejected["onnxslim"]


def test_samples_are_used_and_checked(redundant, tmp_path) -> None:
    rng = np.random.default_rng(1)
    samples = [[rng.standard_normal((1, 64)).astype(np.float32)] for _ in range(3)]
    _, report = simplify(redundant, tmp_path / "a", samples=samples)
    assert report.samples == 3
    _, report = simplify(redundant, tmp_path / "b", samples=[{"x": samples[0][0]}])
    assert report.samples == 1
    _, report = simplify(redundant, tmp_path / "d", samples=[[samples[0][0][0]]])  # no batch dim: added
    assert report.samples == 1
    with pytest.raises(DataError):
        simplify(redundant, tmp_path / "c", samples=[[np.zeros((2, 64), np.float32)]])


def test_bad_arguments_and_corrupt_model(redundant, tmp_path) -> None:
    with pytest.raises(UsageError):
        simplify(redundant, tmp_path, tool="onnxoptimizer")
    tflite = Artifact(redundant.path, ModelFormat.TFLITE, redundant.sha256, redundant.inputs, redundant.outputs)
    with pytest.raises(UsageError):
        simplify(tflite, tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 8)
    corrupt = Artifact.from_file(bad, ModelFormat.ONNX, redundant.inputs, redundant.outputs)
    with pytest.raises(ModelError):
        simplify(corrupt, tmp_path / "out")
