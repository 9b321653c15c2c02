"""``edgepack inspect`` and the MACs/params/bytes estimates, on tiny seeded models with hand-computed costs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.artifact import Layout, ModelFormat
from edgepack.inspection import InspectReport, inspect_model, render
from edgepack.macs import estimate_onnx, estimate_tflite
from edgepack.profiles import load_profile

SEED = 0


def _onnx_model(nodes, inputs, outputs, weights, opset=17, domains=()):
    """A checked-free ONNX model: ``inputs``/``outputs`` are (name, shape) pairs, ``weights`` name -> shape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in weights.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports)


@pytest.fixture(scope="module")
def conv_relu_gemm():
    """x (N, 3, 8, 8) -> Conv 4x3x3x3 (no pad) -> Relu -> Flatten -> Gemm (144 -> 10); batch N is dynamic."""
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"]),
    ]
    weights = {"w": (4, 3, 3, 3), "b": (4,), "g": (144, 10), "gb": (10,)}
    return _onnx_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 10])], weights, opset=19)


@pytest.fixture(scope="module")
def conv_relu_gemm_path(conv_relu_gemm, tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("inspect") / "crg.onnx"
    onnx.save(conv_relu_gemm, path)
    return path


# --------------------------------------------------------------------------- MACs by hand


def test_conv_relu_gemm_costs_match_hand_counts(conv_relu_gemm) -> None:
    cost = estimate_onnx(conv_relu_gemm)
    conv = 1 * 4 * 6 * 6 * (3 * 3 * 3)  # output elements x (C_in/group * kh * kw)
    gemm = 1 * 10 * 144
    assert cost.macs_by_op == {"Conv": conv, "Gemm": gemm}
    assert cost.macs == conv + gemm == 5328
    assert cost.params == 4 * 3 * 3 * 3 + 4 + 144 * 10 + 10 == 1562
    assert cost.weight_bytes == 1562 * 4
    assert cost.activation_bytes == (3 * 8 * 8 + 3 * 144 + 10) * 4  # x, c, r, f, y in float32
    assert "input x: dynamic batch counted as 1" in cost.notes
    assert estimate_onnx(conv_relu_gemm, input_shapes={"x": (2, 3, 8, 8)}).macs == 2 * 5328


@pytest.mark.parametrize(
    ("node", "x", "w", "y", "macs"),
    [
        # depthwise: group = C = 4, W (4, 1, 3, 3), pad 1 -> 4*8*8 outputs x 9
        (dict(op_type="Conv", group=4, pads=[1, 1, 1, 1]), (1, 4, 8, 8), (4, 1, 3, 3), (1, 4, 8, 8), 256 * 9),
        # grouped: group 2, W (6, 2, 3, 3) -> 6*6*6 outputs x (2*3*3)
        (dict(op_type="Conv", group=2), (1, 4, 8, 8), (6, 2, 3, 3), (1, 6, 6, 6), 216 * 18),
        # transposed: W (C_in 4, C_out 2, 2, 2), stride 2 -> each of 64 inputs scatters into 2*2*2 outputs
        (dict(op_type="ConvTranspose", strides=[2, 2]), (1, 4, 4, 4), (4, 2, 2, 2), (1, 2, 8, 8), 64 * 8),
        # batched MatMul (2, 3, 5) x (5, 7) -> 2*3*7 outputs x K 5
        (dict(op_type="MatMul"), (2, 3, 5), (5, 7), (2, 3, 7), 42 * 5),
        # Gemm with transA: A (5, 3) -> M 3, K 5; B (5, 4)
        (dict(op_type="Gemm", transA=1), (5, 3), (5, 4), (3, 4), 12 * 5),
    ],
)
def test_layer_macs(node, x, w, y, macs) -> None:
    from onnx import helper

    attrs = dict(node)
    op = helper.make_node(attrs.pop("op_type"), ["x", "w"], ["y"], **attrs)
    model = _onnx_model([op], [("x", list(x))], [("y", list(y))], {"w": w})
    assert estimate_onnx(model).macs == macs


def test_unknown_shapes_are_named_not_guessed() -> None:
    from onnx import helper

    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = _onnx_model([node], [("x", [1, "T", 5]), ("w", [5, "K"])], [("y", None)], {})
    cost = estimate_onnx(model)
    assert cost.macs == 0
    assert "MACs of MatMul (1 node) unknown: dynamic shapes" in cost.notes


# --------------------------------------------------------------------------- inspect: ONNX


def test_inspect_onnx_report(conv_relu_gemm_path) -> None:
    report = inspect_model(conv_relu_gemm_path)
    assert isinstance(report, InspectReport)
    assert (report.format, report.op_kind, report.opset) == (ModelFormat.ONNX, "onnx", 19)
    assert report.ops == {"Conv": 1, "Relu": 1, "Flatten": 1, "Gemm": 1}
    assert report.cost.macs == 5328 and report.cost.params == 1562
    assert report.inputs[0].shape == (None, 3, 8, 8) and report.inputs[0].layout is Layout.NCHW
    assert report.shapes == {"x": (1, 3, 8, 8)}
    assert report.file_bytes == conv_relu_gemm_path.stat().st_size and len(report.sha256) == 64
    targets = {v.target: v for v in report.compat}
    assert {p.name for p in _builtin()} == set(targets)
    assert targets["jetson-orin-trt"].ok and targets["intel-openvino-cpu"].ok
    assert any("opset 19 > the profile max 17" in n for n in targets["rpi4-arm64-onnxruntime"].notes)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["macs"] == 5328 and data["compat"][0]["verdict"] in ("compatible", "incompatible", "unknown")


def test_jetson_opset_note_and_custom_op(tmp_path) -> None:
    import onnx
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MyOp", ["r"], ["y"], domain="com.example")]
    model = _onnx_model(nodes, [("x", [1, 4])], [("y", [1, 4])], {}, opset=19, domains=("com.example",))
    onnx.save(model, tmp_path / "custom.onnx")
    (tmp_path / "jp51.toml").write_text('extends = "jetson-orin-trt"\nname = "jp51"\n[tensorrt]\njetpack = "5.1"\n')
    (verdict,) = inspect_model(tmp_path / "custom.onnx", profiles=[load_profile(tmp_path / "jp51.toml")]).compat
    assert verdict.unsupported == ("com.example.MyOp",)
    assert "opset 19 > TensorRT 8.5 max 17; edgepack will convert it down" in verdict.notes


def test_render_shows_every_section(conv_relu_gemm_path) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render(inspect_model(conv_relu_gemm_path)))
    text = console.export_text()
    for part in ("crg.onnx (onnx)", "5.33 K", "Inputs and outputs", "Operators (onnx)", "Compatibility"):
        assert part in text
    assert "jetson-orin-trt" in text and "compatible" in text


# --------------------------------------------------------------------------- inspect: TFLite and Keras


def test_inspect_tflite_from_tiny_keras(tiny_tflite_path) -> None:
    report = inspect_model(tiny_tflite_path)
    assert report.op_kind == "tflite" and report.format is ModelFormat.TFLITE
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(report.ops)
    assert report.tflite_ops == report.ops and report.tflite_op_versions["CONV_2D"] >= 1
    # Conv2D(4, 3x3, same) on 8x8x1 -> 8*8*4 outputs x 9; Dense 4 -> 3 (BatchNorm folded, GAP not counted)
    assert report.cost.macs_by_op == {"CONV_2D": 256 * 9, "FULLY_CONNECTED": 12}
    assert estimate_tflite(tiny_tflite_path) == report.cost
    verdicts = {v.target: v for v in report.compat}
    assert verdicts["rpi4-arm64"].ok and verdicts["rpi-armv7"].ok
    assert verdicts["jetson-orin-trt"].verdict == "unknown"


def test_inspect_keras_converts_to_both_graphs(tiny_keras_path) -> None:
    report = inspect_model(tiny_keras_path)
    assert report.format is ModelFormat.KERAS and report.op_kind == "onnx" and report.opset is None
    assert {"Conv2D", "BatchNormalization", "Dense"} <= set(report.layers)
    assert "Conv" in report.ops and {"CONV_2D", "FULLY_CONNECTED"} <= set(report.tflite_ops)
    assert report.cost.macs == 256 * 9 + 12
    assert report.inputs[0].shape == (None, 8, 8, 1) and report.shapes == {"image": (1, 8, 8, 1)}
    assert any("tf2onnx conversion (opset 17)" in n for n in report.notes)
    verdicts = {v.target: v for v in report.compat}
    assert all(v.ok for v in verdicts.values()), [v for v in verdicts.values() if not v.ok]


def _builtin():
    from edgepack.profiles import load_all

    return load_all()
