"""Input shapes: the flag syntax with ranges, fixing dims on graphs with stale shapes, dynamic dims, trtexec flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import TensorSpec
from edgepack.convert import ConvertOptions, onnx_fix
from edgepack.errors import ConversionError, ModelError, UsageError
from edgepack.shapes import (
    DimRange,
    InputShape,
    corner_specs,
    fill_example,
    openvino_shape,
    ranges_from_meta,
    runs_dynamic,
    trtexec_flags,
)
from edgepack.source import open_source, parse_input_shapes

# --------------------------------------------------------------------------- test graphs


def paddle_cls_like(path: Path, *, stale: bool = True, fixed_reshape: bool = False) -> Path:
    """A PaddleOCR-style text-direction classifier as paddle2onnx writes it, saved to ``path``.

    Input ``x`` ``[-1, 3, "?", "?"]`` (height and width share the ``dim_param`` "?", batch is -1),
    Conv(8, 3x3, stride 2) -> Relu -> Reshape to ``[N, 8, H*W]`` through Shape/Slice/Concat -> ReduceMean
    -> Gemm(2) -> Softmax. With ``stale`` the file carries the intermediate shapes of a 48x48 export
    (``value_info`` pinning 24 in the width dim) and a stale output shape ``[?, 3]``. With
    ``fixed_reshape`` the Reshape target is a constant that only fits 48x192 inputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 2)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "fc_b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([1, 8, 24 * 96], np.int64), "const_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Shape", ["relu"], ["relu_shape"]),
        helper.make_node("Slice", ["relu_shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "minus_one"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["relu", "const_shape" if fixed_reshape else "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["?", 3] if stale else ["?", 2])
    stale_info = [
        helper.make_tensor_value_info("conv", TensorProto.FLOAT, ["?", 8, 24, 24]),
        helper.make_tensor_value_info("relu", TensorProto.FLOAT, [1, 8, 24, 24]),
        helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 8, 576]),
    ]
    graph = helper.make_graph(nodes, "cls", [x], [probs], inits, value_info=stale_info if stale else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="paddle2onnx")
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _dims(value) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------- the typed shape and its flag


def test_parser_fixed_ranges_and_separators():
    shape = InputShape.parse("x=1,3,48,[32:320:1024]")
    assert shape.name == "x" and shape.is_dynamic
    assert shape.min() == (1, 3, 48, 32) and shape.opt() == (1, 3, 48, 320) and shape.max() == (1, 3, 48, 1024)
    assert shape.static() == shape.opt()
    assert shape.flag() == "x=1,3,48,[32:320:1024]"
    assert InputShape.parse("1x3x48x[32:320:1024]") == shape.named("")
    assert InputShape.parse("input:0=1,3,48,192") == InputShape("input:0", (1, 3, 48, 192))
    fixed = InputShape.parse("img=1 , 3, 224, 224")
    assert not fixed.is_dynamic and fixed.corners() == ((1, 3, 224, 224),)
    assert InputShape.parse("x=1,[48:48:48]").dims == (1, 48)  # a range of one size is a fixed dim


@pytest.mark.parametrize(
    "flag",
    ["x=", "", "x=1,a", "x=0,3", "x=-1,3", "x=1,[32:320]", "x=1,[320:32:1024]", "x=1,[32:320:1024", "x=1,[a:b:c]"],
)
def test_parser_refuses_bad_values_naming_the_flag(flag):
    with pytest.raises(UsageError, match="--input-shape") as info:
        InputShape.parse(flag)
    assert "[32:320:1024]" in str(info.value)  # the hint shows the range syntax


def test_manifest_record_round_trips():
    shape = InputShape.parse("x=[1:2:4],3,48,[32:320:1024]")
    record = shape.to_dict()
    assert record == {"name": "x", "min": [1, 3, 48, 32], "opt": [2, 3, 48, 320], "max": [4, 3, 48, 1024]}
    assert InputShape.from_dict(record) == shape
    assert ranges_from_meta({"shape_ranges": [record]}) == (shape,)
    assert ranges_from_meta({}) == ()
    with pytest.raises(UsageError, match="not valid"):
        InputShape.from_dict({"name": "x", "min": [1, 3], "opt": [1], "max": [1, 3]})


def test_values_from_api_and_profiles():
    assert InputShape.from_value("x", (1, 3, 48, (32, 320, 1024))) == InputShape.parse("x=1,3,48,[32:320:1024]")
    assert InputShape.from_value("x", "1,3,48,[32:320:1024]").name == "x"
    with pytest.raises(UsageError, match="not a shape"):
        InputShape.from_value("x", (1, 3, "48"))
    with pytest.raises(UsageError, match="not a shape"):
        InputShape.from_value("x", (1, (32, 1024)))


def test_trtexec_flags():
    shapes = [InputShape.parse(v) for v in ("x=1,3,48,[32:320:1024]", "mask=1,48", "ids=1,[1:64:128]")]
    assert trtexec_flags(shapes) == [
        "--minShapes=x:1x3x48x32,ids:1x1",
        "--optShapes=x:1x3x48x320,ids:1x64",
        "--maxShapes=x:1x3x48x1024,ids:1x128",
    ]
    assert trtexec_flags([InputShape.parse("x=1,3,48,192")]) == []  # no profile for static shapes
    special = trtexec_flags([InputShape.parse("input:0=1,[1:8:16]")])
    assert special[0] == "--minShapes='input:0':1x1"
    # In build_engine.sh the quotes must reach trtexec: each flag is shell-quoted.
    line = " ".join(trtexec_flags([InputShape.parse("input:0=1,[1:8:16]")], shell=True))
    assert shlex.split(line)[0] == "--minShapes='input:0':1x1"
    with pytest.raises(UsageError, match="quote or a comma"):
        trtexec_flags([InputShape.parse("a,b=1,[1:8:16]")])


def test_runtimes_that_run_dynamic_shapes():
    from edgepack.profiles import Runtime

    assert runs_dynamic(Runtime.ONNXRUNTIME) and runs_dynamic(Runtime.OPENVINO) and runs_dynamic(Runtime.TENSORRT)
    assert not runs_dynamic(Runtime.LITERT) and not runs_dynamic("tflite-runtime")


def test_parse_input_shapes_keeps_static_tuples():
    parsed = parse_input_shapes(["images=1,3,224,224", "x=1,3,48,[32:320:1024]"])
    assert parsed["images"] == (1, 3, 224, 224)
    assert parsed["x"] == InputShape.parse("x=1,3,48,[32:320:1024]")


# --------------------------------------------------------------------------- the source


def test_missing_shape_names_every_input_and_builds_the_flag(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceSum", ["img"], ["s"], keepdims=0), helper.make_node("Add", ["s", "bias"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 48, "W"]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    with pytest.raises(ModelError) as info:
        open_source(path, batch=None)
    message = info.value.one_line()
    assert "img: [?, 3, 48, ?]; bias: [1]" in message
    assert "--input-shape img=1,3,48,320" in message
    assert "img=1,3,48,[32:320:1024]" in message
    assert "\n" not in str(info.value)
    src = open_source(path, input_shapes={"img": InputShape.parse("img=1,3,48,[32:320:1024]")}, batch=None)
    assert src.inputs[0].shape == (1, 3, 48, 320)
    record = {"name": "img", "min": [1, 3, 48, 32], "opt": [1, 3, 48, 320], "max": [1, 3, 48, 1024]}
    assert src.meta["shape_ranges"] == [record]
    assert src.meta["shape_origin"]["img"] == "--input-shape, range"


def test_example_flag_quotes_odd_names():
    assert fill_example("input image", (None, 3, None, None)) == "--input-shape 'input image=1,3,320,320'"


def test_a_range_on_a_fixed_dim_does_not_fit(tmp_path):
    path = paddle_cls_like(tmp_path / "cls.onnx")
    with pytest.raises(ModelError, match="does not fit"):
        open_source(path, input_shapes={"x": InputShape.parse("x=1,[1:3:4],48,192")})


# --------------------------------------------------------------------------- fixing dims on real graphs


def test_old_patching_fails_on_the_paddle_graph(tmp_path):
    """The failure of issue 9: patching dim_params through the graph instead of re-inferring."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    model = onnx.load(str(paddle_cls_like(tmp_path / "cls.onnx")))
    with pytest.raises(ValueError, match="Can't replace existing fixed size of 48 with 192 for dimension 4"):
        make_input_shape_fixed(model.graph, "x", [1, 3, 48, 192])


def test_fixing_dims_reinfers_stale_shapes_and_runs(tmp_path):
    path = paddle_cls_like(tmp_path / "cls.onnx")
    src = open_source(path, input_shapes=parse_input_shapes(["x=1,3,48,192"]))
    assert src.inputs[0].shape == (1, 3, 48, 192)
    out = onnx_fix.convert(src, tmp_path / "fixed", ConvertOptions())
    assert out.meta["fixed_inputs"] == ["x"] and out.meta["run_check"].startswith("ran in onnxruntime")
    assert out.outputs[0].shape == (1, 2)  # the stale [?, 3] was re-inferred

    import onnx

    model = onnx.load(str(out.path))
    infos = {v.name: _dims(v) for v in model.graph.value_info}
    assert infos["relu"] == [1, 8, 24, 96]
    assert infos.get("flat", []) in ([], [1, 8, 2304])  # onnx infers no Slice data at opset 11: unknown, not stale
    assert _dims(model.graph.input[0]) == [1, 3, 48, 192]
    probs = _run(out.path, {"x": np.ones((1, 3, 48, 192), np.float32)})[0]
    assert probs.shape == (1, 2) and np.isclose(probs.sum(), 1.0)


def test_stale_value_info_is_replaced_not_kept(tmp_path):
    """With the input fixed but the 48x48 export's intermediate shapes kept, the graph contradicts itself."""
    import onnx

    model = onnx.load(str(paddle_cls_like(tmp_path / "cls.onnx")))
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, 48, 192)):
        dim.Clear()
        dim.dim_value = size
    with pytest.raises(onnx.shape_inference.InferenceError, match="differ in dimension 3: \\(96\\) vs \\(24\\)"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    onnx_fix.reinfer_shapes(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)


def test_a_shape_the_model_cannot_run_is_refused_naming_the_input(tmp_path):
    import onnx

    model = onnx.load(str(paddle_cls_like(tmp_path / "cls.onnx", fixed_reshape=True)))
    spec = TensorSpec("x", (1, 3, 48, 100))
    with pytest.raises(ConversionError, match=r"does not run in ONNX Runtime with inputs x=1,3,48,100"):
        onnx_fix.fix_input_shapes(model, [spec])


def test_rank_and_fixed_dims_must_match(tmp_path):
    import onnx

    model = onnx.load(str(paddle_cls_like(tmp_path / "cls.onnx")))
    with pytest.raises(ConversionError, match=r"of shape \[\?,3,\?,\?\] the shape \[1,4,48,192\]"):
        onnx_fix.fix_input_shapes(model, [TensorSpec("x", (1, 4, 48, 192))])
    with pytest.raises(ConversionError, match="rank|shape"):
        onnx_fix.fix_input_shapes(model, [TensorSpec("x", (1, 3, 48))])


def test_a_range_for_an_input_the_graph_lacks(tmp_path):
    import onnx

    model = onnx.load(str(paddle_cls_like(tmp_path / "cls.onnx")))
    with pytest.raises(ConversionError, match="no input image"):
        onnx_fix.keep_dynamic(model, [TensorSpec("x", (1, 3, 48, 192))], [InputShape.parse("image=1,[32:192:320]")])


def test_dims_stay_dynamic_for_dynamic_runtimes(tmp_path):
    path = paddle_cls_like(tmp_path / "cls.onnx")
    width = InputShape.parse("x=1,3,48,[32:192:320]")
    src = open_source(path, input_shapes={"x": width})
    out = onnx_fix.convert(src, tmp_path / "dyn", ConvertOptions(), ranges=ranges_from_meta(src.meta))
    assert out.inputs[0].shape == (1, 3, 48, 192)  # the specs stay the opt shape validation runs at
    assert out.meta["shape_ranges"] == [width.to_dict()]
    assert out.meta["run_check"] == "ran in onnxruntime at 3 shape set(s)"

    import onnx

    model = onnx.load(str(out.path))
    assert _dims(model.graph.input[0]) == [1, 3, 48, "x_dim3"]
    assert _dims(model.graph.output[0])[1] == 2
    for w in (32, 100, 320):  # any width in the range runs
        assert _run(out.path, {"x": np.ones((1, 3, 48, w), np.float32)})[0].shape == (1, 2)


# --------------------------------------------------------------------------- a real PP-OCR model


def _rapidocr_model(name: str) -> Path:
    """The model from the zoo's pinned rapidocr-onnxruntime wheel (downloaded and unpacked at test time)."""
    from tests.zoo import fetch

    zoo_name = {"ch_ppocr_mobile_v2.0_cls_infer.onnx": "ppocr-cls", "ch_PP-OCRv4_rec_infer.onnx": "ppocr-rec"}[name]
    return fetch(zoo_name)


def test_real_ppocr_classifier_fixes_to_48x192(tmp_path):
    """PP-OCR mobile v2 direction classifier: input x [-1, 3, ?, ?] whose H and W share the dim_param "?"."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

    path = _rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    with pytest.raises(ValueError, match="Can't replace existing fixed size of 48 with 192 for dimension 4"):
        make_input_shape_fixed(onnx.load(str(path)).graph, "x", [1, 3, 48, 192])  # issue 9's failure
    src = open_source(path, input_shapes=parse_input_shapes(["x=1,3,48,192"]))
    out = onnx_fix.convert(src, tmp_path / "cls", ConvertOptions())
    assert out.outputs[0].shape == (1, 2)
    image = np.random.default_rng(0).random((1, 3, 48, 192), np.float32)
    probs = _run(out.path, {"x": image})[0]
    reference = _run(path, {"x": image})[0]
    np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1e-6)


def test_real_ppocr_recognizer_keeps_a_width_range(tmp_path):
    """PP-OCRv4 recognizer (11 MB): the text width stays dynamic from 32 to 1024 and runs at each corner."""
    path = _rapidocr_model("ch_PP-OCRv4_rec_infer.onnx")
    src = open_source(path, input_shapes=parse_input_shapes(["x=1,3,48,[32:320:1024]"]))
    out = onnx_fix.convert(src, tmp_path / "rec", ConvertOptions(), ranges=ranges_from_meta(src.meta))
    assert out.meta["run_check"] == "ran in onnxruntime at 3 shape set(s)"
    for width, steps in ((32, 4), (320, 40), (1024, 128)):  # one step per 8 pixels of width
        assert _run(out.path, {"x": np.zeros((1, 3, 48, width), np.float32)})[0].shape == (1, steps, 6625)
    line = np.random.default_rng(0).random((1, 3, 48, 320), np.float32)
    np.testing.assert_allclose(_run(out.path, {"x": line})[0], _run(path, {"x": line})[0], rtol=1e-4, atol=1e-5)
    assert isinstance(InputShape.from_dict(out.meta["shape_ranges"][0]).dims[3], DimRange)


def test_corner_specs_for_validation():
    inputs = [TensorSpec("x", (1, 3, 48, 320)), TensorSpec("mask", (1, 48))]
    sets = corner_specs(inputs, [InputShape.parse("x=1,3,48,[32:320:1024]")])
    assert [[s.shape for s in specs] for specs in sets] == [
        [(1, 3, 48, 32), (1, 48)],
        [(1, 3, 48, 320), (1, 48)],
        [(1, 3, 48, 1024), (1, 48)],
    ]
    assert corner_specs(inputs, []) == [inputs]
    assert len(corner_specs(inputs, [InputShape.parse("x=1,3,48,[320:320:1024]")])) == 2  # min == opt: once


def test_openvino_keeps_the_range(tmp_path):
    """The partial-shape string for ov.convert_model: the converted model runs across the range."""
    import openvino as ov

    shape = InputShape.parse("x=1,3,48,[32:192:320]")
    assert openvino_shape(shape) == "[1,3,48,32..320]"
    path = paddle_cls_like(tmp_path / "cls.onnx")
    model = ov.convert_model(str(path), input=[("x", ov.PartialShape(openvino_shape(shape)))])
    compiled = ov.Core().compile_model(model, "CPU")
    for width in (32, 320):
        assert compiled(np.ones((1, 3, 48, width), np.float32))[0].shape == (1, 2)
