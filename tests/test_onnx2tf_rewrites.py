"""Rewrites that prepare a graph for onnx2tf (``edgepack.convert.onnx2tf_rewrites``).

The fast tests build tiny seeded graphs with ``onnx.helper`` and check each rewrite in
onnxruntime against the original graph and against numpy. The slow ones run onnx2tf: on a
tiny Paddle-style graph (``@`` in node names, opset-11 Softmax over a non-last axis) and on
PaddleOCR's text-direction classifier from the zoo, and compare the .tflite in LiteRT.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert.onnx2tf_prep import prepare
from edgepack.convert.onnx2tf_rewrites import flatten_coercing_softmax, safe_output_names, scope_safe_names

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

TF_SCOPE = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")  # what TensorFlow accepts as a scope name


def _model(nodes, inputs, outputs, opset: int, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def test_output_names_tensorflow_refuses_are_renamed_where_used():
    """``torch.onnx``'s ``onnx::Shape_422`` output, also read by a later node: renamed in both places."""
    value = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Relu", ["x"], ["onnx::Shape_422"], name="relu"),
        helper.make_node("Neg", ["onnx::Shape_422"], ["pooled"], name="neg"),
    ]
    outputs = [value("onnx::Shape_422", 1, (2, 3)), value("pooled", 1, (2, 3))]
    model = _model(nodes, [value("x", 1, (2, 3))], outputs, 17)
    before = _copy(model)
    assert safe_output_names(model) == ["onnx::Shape_422"]
    assert [o.name for o in model.graph.output] == ["onnx__Shape_422", "pooled"]
    assert list(model.graph.node[1].input) == ["onnx__Shape_422"]
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    for got, want in zip(_run(model, {"x": x}), _run(before, {"x": x}), strict=True):
        np.testing.assert_array_equal(got, want)
    assert safe_output_names(model) == []  # nothing left to rename


def _coerced_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """ONNX Softmax before opset 13: softmax of x flattened to 2-D at ``axis``, over the second dim."""
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


def _softmax_model(op: str, axis: int, opset: int, shape=(2, 3, 4)):
    value = helper.make_tensor_value_info
    nodes = [helper.make_node(op, ["x"], ["y"], name=f"{op}@0", axis=axis)]
    return _model(nodes, [value("x", 1, shape)], [value("y", 1, shape)], opset)


def _paddle_like(opset: int = 11):
    """Conv -> Relu -> Softmax over channels (axis 1 of a 4-D tensor), Paddle2ONNX's ``Op@N`` node names."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="Conv@0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="Relu@0"),
        helper.make_node("Identity", ["r"], ["r2"], name="Relu_0"),  # the name "Relu@0" would become
        helper.make_node("Softmax", ["r2"], ["y"], name="Softmax@0", axis=1),
    ]
    value = helper.make_tensor_value_info
    return _model(nodes, [value("x", 1, [1, 3, 8, 8])], [value("y", 1, [1, 4, 8, 8])], opset, [weight, bias])


# ---------------------------------------------------------------- node names


def test_scope_safe_names_renames_only_bad_names_and_keeps_them_unique() -> None:
    model = _paddle_like()
    before = _run(model, {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)})

    renamed = scope_safe_names(model)

    names = [node.name for node in model.graph.node]
    assert renamed == ["Conv@0", "Relu@0", "Softmax@0"]
    assert names == ["Conv_0", "Relu_0_1", "Relu_0", "Softmax_0"]
    assert all(TF_SCOPE.match(name) for name in names)
    after = _run(model, {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)})
    np.testing.assert_array_equal(after[0], before[0])
    assert scope_safe_names(model) == []  # nothing left to rename


# ---------------------------------------------------------------- opset < 13 Softmax


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [0, 1, -2])
def test_old_opset_softmax_over_a_non_last_axis_is_spelled_out(op: str, axis: int) -> None:
    model = _softmax_model(op, axis, opset=11)
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    expected = _run(model, {"x": x})[0]

    rewritten = flatten_coercing_softmax(model)

    assert rewritten == [f"{op}@0"]
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["Flatten", op, "Shape", "Reshape"]
    assert next(n for n in model.graph.node if n.op_type == op).attribute[0].i == 1
    onnx.checker.check_model(model)
    got = _run(model, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    if op == "Softmax":  # the coerced meaning, not a softmax over ``axis`` alone
        np.testing.assert_allclose(got, _coerced_softmax(x, axis % 3), rtol=1e-5, atol=1e-7)
        assert not np.allclose(got.sum(axis=axis), 1.0)


@pytest.mark.parametrize(("axis", "opset"), [(-1, 11), (2, 11), (1, 13)])
def test_softmax_already_meaning_the_same_is_left_alone(axis: int, opset: int) -> None:
    model = _softmax_model("Softmax", axis, opset=opset)
    before = model.SerializeToString()

    assert flatten_coercing_softmax(model) == []
    assert model.SerializeToString() == before


# ---------------------------------------------------------------- prepare() uses both


def test_prepare_renames_and_spells_out_softmax_checked_in_onnxruntime() -> None:
    model = _paddle_like()
    inputs = [TensorSpec("x", (1, 3, 8, 8), "float32")]

    prepared, facts = prepare(_copy(model), inputs)

    assert facts["renamed_nodes"] == ["Conv@0", "Relu@0", "Softmax@0"]
    assert facts["coerced_softmax"] == ["Softmax_0"]  # after renaming, in the same round
    assert all(TF_SCOPE.match(node.name) for node in prepared.graph.node)
    assert "Softmax" in {node.op_type for node in prepared.graph.node}
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(prepared, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- slow: onnx2tf


def _convert_and_compare(path: Path, shape: tuple[int, ...], tmp_path: Path) -> Artifact:
    pytest.importorskip("onnx2tf")
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.convert import ConvertOptions, onnx_tflite

    model = onnx.load(path)
    name = model.graph.input[0].name
    outputs = tuple(TensorSpec(value.name, (), "float32") for value in model.graph.output)
    src = Artifact.from_file(path, ModelFormat.ONNX, (TensorSpec(name, shape, "float32"),), outputs)
    artifact = onnx_tflite.convert(src, tmp_path / "out", ConvertOptions())
    assert artifact.meta["prepare"]["renamed_nodes"]
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    interpreter = Interpreter(model_path=str(artifact.path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    if got.shape != reference.shape and reference.ndim == 4:
        got = np.moveaxis(got, -1, 1)  # 4-D outputs come out NHWC (meta["transposed_outputs"])
    np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-4)
    return artifact


@pytest.mark.slow
def test_paddle_like_graph_converts_and_agrees(tmp_path: Path) -> None:
    path = tmp_path / "paddle_like.onnx"
    onnx.save(_paddle_like(), path)

    artifact = _convert_and_compare(path, (1, 3, 8, 8), tmp_path)

    assert artifact.meta["prepare"]["coerced_softmax"] == ["Softmax_0"]


@pytest.mark.slow
def test_ppocr_text_direction_classifier_converts_and_agrees(tmp_path: Path) -> None:
    from tests.zoo import ZooError, fetch

    try:
        path = fetch("ppocr-cls")
    except ZooError as exc:  # offline and not cached
        pytest.skip(f"zoo model unavailable: {exc}")
    _convert_and_compare(Path(path), (1, 3, 48, 192), tmp_path)
