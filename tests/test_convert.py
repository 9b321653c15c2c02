"""Conversion hops on tiny seeded models: each result runs in its own runtime and matches its source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert import HOPS, ROUTES, ConvertOptions, convert, convert_once, route
from edgepack.errors import ConversionError, ModelError, UsageError
from edgepack.profiles import Precision

F = ModelFormat
SEED = 0
TOL = 1e-4


# --------------------------------------------------------------------------- fixtures


def _build_cnn():
    """Conv2D(8)+BN+ReLU -> Flatten -> Dense(32)+ReLU -> Dense(3) on (None, 8, 8, 1); seeded weights and BN stats."""
    import keras
    from keras import layers

    init = keras.initializers.GlorotUniform(seed=SEED)
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    h = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="conv")(inputs)
    bn = layers.BatchNormalization(name="bn")
    h = layers.ReLU(name="relu")(bn(h))
    h = layers.Flatten(name="flat")(h)
    h = layers.Dense(32, activation="relu", kernel_initializer=init, name="hidden")(h)
    outputs = layers.Dense(3, kernel_initializer=init, name="logits")(h)
    model = keras.Model(inputs, outputs, name="cnn")
    rng = np.random.default_rng(SEED)
    shapes = [w.shape for w in bn.get_weights()]
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, shapes[0]).astype(np.float32),
            rng.normal(0.0, 0.1, shapes[1]).astype(np.float32),
            rng.normal(0.0, 0.1, shapes[2]).astype(np.float32),
            rng.uniform(0.5, 1.5, shapes[3]).astype(np.float32),
        ]
    )
    return model


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The seeded Keras CNN (in memory) and its .keras, .h5 and SavedModel files."""
    import warnings

    model = _build_cnn()
    folder = tmp_path_factory.mktemp("cnn")
    model.save(folder / "cnn.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(folder / "cnn.h5")
    model.export(str(folder / "cnn_savedmodel"), verbose=False)
    return model, {F.KERAS: folder / "cnn.keras", F.H5: folder / "cnn.h5", F.SAVEDMODEL: folder / "cnn_savedmodel"}


@pytest.fixture(scope="module")
def x_image() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((1, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_src(cnn) -> Artifact:
    from edgepack.source import open_source

    return open_source(cnn[1][F.KERAS])


@pytest.fixture(scope="module")
def keras_tflite(keras_src, tmp_path_factory) -> Artifact:
    return convert_once(keras_src, F.TFLITE, tmp_path_factory.mktemp("k2t"), ConvertOptions())


def _nhwc_rgb_onnx(path: Path) -> Path:
    """A tiny ONNX model with an NHWC 3-channel image input (1, 8, 8, 3): onnx2tf's download trigger."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 2)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc_rgb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _opset17_layernorm(path: Path) -> Path:
    """A model using LayerNormalization, which only exists from opset 17 on."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y"], axis=-1)
    graph = helper.make_graph(
        [node],
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# --------------------------------------------------------------------------- runtimes


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_openvino(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled([x])[compiled.outputs[0]]


RUNNERS = {F.TFLITE: run_tflite, F.ONNX: run_onnx, F.OPENVINO: run_openvino}


def tflite_signature(path: Path) -> list[list[int]]:
    from ai_edge_litert.interpreter import Interpreter

    return [list(d["shape_signature"]) for d in Interpreter(model_path=str(path)).get_input_details()]


def onnx_input_dims(path: Path) -> list[list[int | str]]:
    import onnx

    model = onnx.load(str(path))
    return [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input]


def assert_tool(artifact: Artifact, tool: str) -> None:
    assert artifact.meta["tool"] == tool
    assert artifact.meta["tool_version"] not in ("", None, "unknown")


# --------------------------------------------------------------------------- routes and options


def test_routes_are_made_of_existing_hops() -> None:
    assert route(F.KERAS, F.OPENVINO) == [F.ONNX, F.OPENVINO]
    assert route(F.TFLITE, F.OPENVINO) == [F.OPENVINO]
    assert route(F.ONNX, F.ONNX) == [F.ONNX]
    assert route(F.TFLITE, F.TFLITE) == []
    for (src, _dst), chain in ROUTES.items():
        steps = [src, *chain]
        for a, b in zip(steps, steps[1:], strict=False):
            assert (a, b) in HOPS, f"route {src}->{_dst} needs a missing hop {a}->{b}"


def test_unknown_route_and_hop_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        route(F.OPENVINO, F.TFLITE)
    fake = Artifact(tmp_path / "m.xml", F.OPENVINO, "0", (), ())
    with pytest.raises(UsageError):
        convert_once(fake, F.TFLITE, tmp_path, ConvertOptions())


def test_options_are_validated_and_hashable() -> None:
    assert ConvertOptions(precision=Precision.FP16).precision == "fp16"
    assert hash(ConvertOptions(opset=13)) == hash(ConvertOptions(opset=13))
    with pytest.raises(UsageError):
        ConvertOptions(precision="int8")
    with pytest.raises(UsageError):
        ConvertOptions(opset=3)


def test_importing_the_converters_imports_no_framework() -> None:
    code = (
        "import sys, edgepack.convert, edgepack.simplify\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'onnx', 'onnxruntime', 'openvino', 'onnxsim', 'tf2onnx')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sys.getrecursionlimit() < 100000"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


# --------------------------------------------------------------------------- TensorFlow sources


@pytest.mark.parametrize("fmt", [F.KERAS, F.H5, F.SAVEDMODEL])
def test_tensorflow_sources_to_tflite_are_static_and_match(cnn, x_image, fmt, tmp_path) -> None:
    from edgepack.source import open_source

    model, paths = cnn
    src = open_source(paths[fmt])
    out = convert_once(src, F.TFLITE, tmp_path, ConvertOptions())
    assert out.path == tmp_path / "model.tflite" and out.format is F.TFLITE
    assert tflite_signature(out.path) == [[1, 8, 8, 1]]  # batch None became 1, not -1
    assert [i.shape for i in out.inputs] == [(1, 8, 8, 1)]
    assert out.outputs[0].shape == (1, 3)
    np.testing.assert_allclose(run_tflite(out.path, x_image), model(x_image).numpy(), atol=TOL, rtol=TOL)
    assert_tool(out, "tflite-converter")
    assert out.meta["precision"] == "fp32" and out.meta["source_sha256"] == src.sha256


def test_fp16_tflite_is_about_half_the_size(keras_src, keras_tflite, cnn, x_image, tmp_path) -> None:
    half = convert_once(keras_src, F.TFLITE, tmp_path, ConvertOptions(precision="fp16"))
    ratio = half.size_bytes() / keras_tflite.size_bytes()
    assert 0.4 < ratio < 0.65, ratio
    assert half.meta["precision"] == "fp16"
    np.testing.assert_allclose(run_tflite(half.path, x_image), cnn[0](x_image).numpy(), atol=2e-2)


def test_tflite_converter_hook_is_called_before_convert(keras_src, tmp_path) -> None:
    from edgepack.convert import keras_tflite

    seen = []
    keras_tflite.convert(keras_src, tmp_path, ConvertOptions(), configure=lambda c: seen.append(type(c).__name__))
    assert seen and "Converter" in seen[0]


@pytest.mark.parametrize("fmt", [F.KERAS, F.H5, F.SAVEDMODEL])
def test_tensorflow_sources_to_onnx_are_static_and_match(cnn, x_image, fmt, tmp_path) -> None:
    from edgepack.source import open_source

    model, paths = cnn
    out = convert_once(open_source(paths[fmt]), F.ONNX, tmp_path, ConvertOptions(opset=17))
    assert onnx_input_dims(out.path) == [[1, 8, 8, 1]]
    assert out.inputs[0].name == "image" and out.inputs[0].shape == (1, 8, 8, 1)
    np.testing.assert_allclose(run_onnx(out.path, x_image), model(x_image).numpy(), atol=TOL, rtol=TOL)
    assert_tool(out, "tf2onnx")
    assert out.meta["opset"] == 17


def test_tf2onnx_opset_is_capped(keras_src, tmp_path) -> None:
    import onnx

    out = convert_once(keras_src, F.ONNX, tmp_path, ConvertOptions(opset=21))
    assert out.meta["opset"] == 18 and out.meta["opset_requested"] == 21
    assert {o.version for o in onnx.load(str(out.path)).opset_import if o.domain in ("", "ai.onnx")} == {18}


def test_tflite_to_onnx_and_openvino_match(keras_tflite, x_image, tmp_path) -> None:
    expected = run_tflite(keras_tflite.path, x_image)
    for fmt in (F.ONNX, F.OPENVINO):
        out = convert_once(keras_tflite, fmt, tmp_path / fmt.value, ConvertOptions(opset=17))
        assert [i.shape for i in out.inputs] == [(1, 8, 8, 1)]
        assert out.meta["source_names"][out.inputs[0].name] == keras_tflite.inputs[0].name
        np.testing.assert_allclose(RUNNERS[fmt](out.path, x_image), expected, atol=TOL, rtol=TOL)


def test_keras_to_openvino_goes_through_onnx(keras_src, cnn, x_image, tmp_path) -> None:
    out = convert(keras_src, F.OPENVINO, tmp_path, ConvertOptions(opset=17))
    assert out.format is F.OPENVINO and out.path.suffix == ".xml"
    assert [f.suffix for f in out.files] == [".xml", ".bin"] and all(f.is_file() for f in out.files)
    assert out.meta["source_format"] == "onnx" and (tmp_path / "00-onnx" / "model.onnx").is_file()
    assert [i.shape for i in out.inputs] == [(1, 8, 8, 1)]
    np.testing.assert_allclose(run_openvino(out.path, x_image), cnn[0](x_image).numpy(), atol=TOL, rtol=TOL)
    assert_tool(out, "openvino")
    onnx_src = Artifact.from_file(tmp_path / "00-onnx" / "model.onnx", F.ONNX, out.inputs, out.outputs)
    small = convert_once(onnx_src, F.OPENVINO, tmp_path / "fp16", ConvertOptions(compress_to_fp16=True))
    assert small.files[1].stat().st_size < 0.6 * out.files[1].stat().st_size


# --------------------------------------------------------------------------- ONNX sources


def test_onnx_dynamic_batch_is_fixed(tiny_onnx_dynamic_path, tmp_path) -> None:
    from edgepack.source import open_source

    src = open_source(tiny_onnx_dynamic_path)
    out = convert_once(src, F.ONNX, tmp_path, ConvertOptions())
    assert onnx_input_dims(out.path) == [[1, 3, 16, 16]]
    assert out.outputs[0].shape == (1, 4) and out.meta["fixed_inputs"] == ["input"]
    x = np.random.default_rng(SEED).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out.path, x), run_onnx(src.path, x), atol=1e-6)
    assert_tool(out, "onnx")


def test_onnx_unchanged_is_a_byte_copy(tiny_onnx_path, tmp_path) -> None:
    from edgepack.source import open_source

    src = open_source(tiny_onnx_path)
    out = convert_once(src, F.ONNX, tmp_path, ConvertOptions(opset=17))
    assert out.sha256 == src.sha256 and out.path != src.path


def test_onnx_opset_is_brought_down(tiny_onnx_dynamic_path, tmp_path) -> None:
    import onnx

    from edgepack.source import open_source

    src = open_source(tiny_onnx_dynamic_path)
    out = convert_once(src, F.ONNX, tmp_path, ConvertOptions(opset=13))
    model = onnx.load(str(out.path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert model.ir_version == 7  # what opset 13 needs; older TensorRT parsers refuse newer IRs
    assert out.meta["opset"] == 13 and out.meta["opset_from"] == 17
    x = np.random.default_rng(SEED).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out.path, x), run_onnx(src.path, x), atol=1e-6)


def test_onnx_opset_that_cannot_be_lowered_is_a_conversion_error(tmp_path) -> None:
    from edgepack.source import open_source

    src = open_source(_opset17_layernorm(tmp_path / "ln.onnx"))
    with pytest.raises(ConversionError, match="opset 17 down to 13"):
        convert_once(src, F.ONNX, tmp_path / "out", ConvertOptions(opset=13))


def test_onnx_to_openvino_is_static_and_matches(tiny_onnx_dynamic_path, tmp_path) -> None:
    from edgepack.source import open_source

    src = open_source(tiny_onnx_dynamic_path)
    out = convert_once(src, F.OPENVINO, tmp_path, ConvertOptions())
    assert [i.shape for i in out.inputs] == [(1, 3, 16, 16)] and out.outputs[0].shape == (1, 4)
    x = np.random.default_rng(SEED).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_openvino(out.path, x), run_onnx(src.path, x), atol=TOL, rtol=TOL)


def test_onnx2tf_runs_offline_and_keeps_the_onnx_layout(tmp_path) -> None:
    """An NHWC RGB input with a static batch makes onnx2tf download sample images; it must not."""
    from edgepack.source import open_source

    src = open_source(_nhwc_rgb_onnx(tmp_path / "rgb.onnx"))
    before = src.path.read_bytes()
    out = convert_once(src, F.TFLITE, tmp_path / "out", ConvertOptions())
    assert src.path.read_bytes() == before  # onnx2tf rewrote a copy, not the source
    assert tflite_signature(out.path) == [[1, 8, 8, 3]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.tflite", "saved_model"]
    assert (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()  # int8 quantization starts from it
    assert not list((tmp_path / "out" / "saved_model").glob("*.tflite"))
    x = np.random.default_rng(SEED).standard_normal((1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(out.path, x), run_onnx(src.path, x), atol=TOL, rtol=TOL)
    assert_tool(out, "onnx2tf")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx2tf_nchw_dynamic_batch(tiny_onnx_dynamic_path, precision, tmp_path) -> None:
    from edgepack.source import open_source

    src = open_source(tiny_onnx_dynamic_path)
    out = convert_once(src, F.TFLITE, tmp_path, ConvertOptions(precision=precision))
    assert tflite_signature(out.path) == [[1, 3, 16, 16]]  # NCHW kept, batch fixed
    x = np.random.default_rng(SEED).standard_normal((1, 3, 16, 16)).astype(np.float32)
    tol = TOL if precision == "fp32" else 2e-2
    np.testing.assert_allclose(run_tflite(out.path, x), run_onnx(src.path, x), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("dst", [F.ONNX, F.OPENVINO, F.TFLITE])
def test_corrupt_onnx_is_our_error(dst, tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    spec = TensorSpec("input", (1, 3, 16, 16))
    src = Artifact.from_file(bad, F.ONNX, (spec,), (TensorSpec("logits", (1, 4)),))
    with pytest.raises((ConversionError, ModelError)):
        convert_once(src, dst, tmp_path / "out", ConvertOptions())
