"""Quantized .tflite sources get the int8 yardstick; SavedModels with captured constants convert to ONNX.

Fast tests build tiny models here (a Keras CNN converted to float, dynamic-range and full-integer
.tflite; a tf.Module SavedModel whose function captures a constant); the real-model ones (fer's
dynamic-range .tflite, Spotify's basic-pitch SavedModel) are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import ModelFormat
from edgepack.convert import ConvertOptions
from edgepack.errors import AccuracyError, ConversionError
from edgepack.profiles import Accuracy
from edgepack.source_kind import DYNAMIC_RANGE, FLOAT, FULL_INTEGER, source_kind, yardstick
from edgepack.validate import check_metrics, validate

# Tighter than any quantization noise: a float source held to it must fail against a quantized artifact.
STRICT = Accuracy(max_abs_error=1e-6, min_cosine=0.99999999)


def _cnn(seed: int):
    """Input ``x`` (1, 16, 16, 3) -> 2 x Conv 3x3x16 -> mean -> logits (1, 10).

    The conv kernels are big enough (>= 1024 elements) for TFLite's dynamic-range quantization to quantize
    them, and LiteRT runs them with hybrid kernels (int8 activations on the fly), like fer's.
    """
    import keras
    from keras import layers

    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(batch_shape=(1, 16, 16, 3), name="x")
    h = layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init)(inputs)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init)(h)
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(10, kernel_initializer=init, name="logits")(h))


def _tflite(model, path: Path, mode: str = "float") -> Path:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        rng = np.random.default_rng(1)
        converter.representative_dataset = lambda: ([rng.random((1, 16, 16, 3), dtype=np.float32)] for _ in range(16))
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def cnns(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cnns")
    model, other = _cnn(seed=3), _cnn(seed=4)
    return {
        "float": _tflite(model, folder / "float.tflite"),
        "dynamic": _tflite(model, folder / "dynamic.tflite", "dynamic"),
        "int8": _tflite(model, folder / "int8.tflite", "int8"),
        "other": _tflite(other, folder / "other.tflite"),
    }


def _open(path: Path):
    from edgepack.source import open_source

    return open_source(path)


def _onnx(path: Path, workdir: Path):
    from edgepack.convert import tf_onnx

    return tf_onnx.convert(_open(path), workdir, ConvertOptions())


def test_tflite_kinds_are_read_from_tensors_and_ops(cnns) -> None:
    assert source_kind(_open(cnns["float"])).kind == FLOAT
    dynamic = source_kind(_open(cnns["dynamic"]))
    assert dynamic.kind == DYNAMIC_RANGE and dynamic.quantized and "CONV_2D" in dynamic.evidence
    assert source_kind(_open(cnns["int8"])).kind == FULL_INTEGER


def test_yardstick_is_int8_only_for_a_quantized_source_against_a_float_artifact(cnns, tmp_path) -> None:
    dynamic, onnx = _open(cnns["dynamic"]), _onnx(cnns["dynamic"], tmp_path)
    assert yardstick(dynamic, onnx).name == "int8"
    assert yardstick(dynamic, dynamic).name == "float"  # LiteRT runs both with the same hybrid kernels
    assert yardstick(dynamic, _open(cnns["float"])).name == "int8"
    assert yardstick(_open(cnns["float"]), onnx).name == "float"


def test_dynamic_range_source_is_judged_by_int8_agreement(cnns, tmp_path) -> None:
    source, artifact = _open(cnns["dynamic"]), _onnx(cnns["dynamic"], tmp_path)
    report = validate(source, artifact, None, STRICT)
    assert report.passed, report.failures
    assert check_metrics(report.outputs, STRICT)  # the float tolerances would have failed it: the yardstick matters
    recorded = report.to_dict()["yardstick"]
    assert recorded["name"] == "int8" and "dynamic-range" in recorded["reason"]
    assert report.outputs[0].top1_agreement == 1.0


def test_float_source_is_never_loosened(cnns, tmp_path) -> None:
    """The same quantization noise, but the source is float: the float tolerances apply and fail."""
    report = validate(_open(cnns["float"]), _onnx(cnns["dynamic"], tmp_path), None, STRICT)
    assert not report.passed and report.to_dict()["yardstick"]["name"] == "float"
    assert "max_abs_error" in report.failures[0]


def test_int8_yardstick_still_fails_a_different_model(cnns, tmp_path) -> None:
    report = validate(_open(cnns["dynamic"]), _onnx(cnns["other"], tmp_path), None, Accuracy())
    assert not report.passed and "top-1 agreement" in report.failures[0] and "SQNR" in report.failures[0]
    with pytest.raises(AccuracyError, match="int8_min_top1_agreement"):
        report.raise_if_failed()


# --------------------------------------------------------------------------- SavedModel with captured constants


@pytest.fixture(scope="module")
def captured_savedmodel(tmp_path_factory) -> Path:
    """A SavedModel whose serving function captures a constant tensor (not a variable), like basic-pitch's CQT."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(16, 8)).astype(np.float32))  # captured by value, not a resource

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = tf.Variable(rng.normal(size=(8,)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((1, 16), tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, kernel) + self.bias), "z": tf.reduce_sum(x, axis=1)}

    module = Model()
    path = tmp_path_factory.mktemp("captured") / "savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})
    return path


def test_captured_constants_do_not_become_onnx_inputs(captured_savedmodel, tmp_path) -> None:
    import tensorflow as tf

    from edgepack.convert import tf_onnx
    from edgepack.convert.keras_tflite import savedmodel_function

    src = _open(captured_savedmodel)
    function, signature, _loaded = savedmodel_function(src)
    concrete = function.get_concrete_function(*signature)
    assert len([t for t in concrete.inputs if t.dtype != tf.resource]) > 1  # tf2onnx's from_function takes these
    onnx = tf_onnx.convert(src, tmp_path, ConvertOptions())
    assert [spec.name for spec in onnx.inputs] == ["x"] and "route" not in onnx.meta
    assert sorted(onnx.meta["source_names"].values()) == ["x", "y", "z"]
    report = validate(src, onnx, None, Accuracy())
    assert report.passed and report.to_dict()["yardstick"]["name"] == "float"


def test_savedmodel_tflite_route_converts_and_validates(captured_savedmodel, tmp_path) -> None:
    from edgepack.convert import tf_onnx
    from edgepack.modelio import describe, read_specs

    src = _open(captured_savedmodel)
    path = tmp_path / "model.onnx"
    tf_onnx._via_tflite(src, 13, path, ConvertOptions())  # noqa: SLF001 - the fallback route itself
    tf_onnx._check_inputs(src, path, "via tflite")  # noqa: SLF001
    onnx = describe(src, path, ModelFormat.ONNX, read_specs(path, ModelFormat.ONNX), meta={"tool": "tf2onnx"})
    assert [s.name for s in onnx.inputs] == ["x"] and sorted(s.name for s in onnx.outputs) == ["y", "z"]
    assert validate(src, onnx, None, Accuracy()).passed


def test_stray_onnx_input_is_named_precisely(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgepack.convert import tf_onnx

    def model(inputs: list[tuple[str, list[int]]], path: Path) -> Path:
        graph = helper.make_graph(
            [helper.make_node("Identity", [inputs[0][0]], ["y"])],
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        return path

    src = _open(model([("x", [1, 4])], tmp_path / "src.onnx"))
    stray = model([("x", [1, 4]), ("56072:0", [36, 1, 256])], tmp_path / "stray.onnx")
    with pytest.raises(ConversionError, match=r"56072:0 \[36, 1, 256\] instead of the signature's x \[1, 4\]"):
        tf_onnx._check_inputs(src, stray, "tf2onnx")  # noqa: SLF001
    tf_onnx._check_inputs(src, src.path, "tf2onnx")  # noqa: SLF001 - the source's own inputs pass


# --------------------------------------------------------------------------- real models (zoo)


@pytest.mark.slow
def test_fer_dynamic_range_tflite_validates_by_int8_agreement(tmp_path) -> None:
    from tests.zoo import fetch

    src = _open(fetch("fer-tflite"))
    assert source_kind(src).kind == DYNAMIC_RANGE
    report = validate(src, _onnx(src.path, tmp_path), None, Accuracy(min_cosine=0.9999))
    assert report.passed and report.to_dict()["yardstick"]["name"] == "int8"


@pytest.mark.slow
def test_basic_pitch_savedmodel_converts_with_its_signature_input(tmp_path) -> None:
    from edgepack.convert import tf_onnx
    from edgepack.source import open_source
    from tests.zoo import fetch

    src = open_source(fetch("basic-pitch-savedmodel"), input_shapes={"input_2": [1, 43844, 1]})
    onnx = tf_onnx.convert(src, tmp_path, ConvertOptions())
    assert [spec.name for spec in onnx.inputs] == ["input_2"]
    assert validate(src, onnx, None, Accuracy(), count=2).passed


@pytest.mark.slow
def test_basic_pitch_tflite_route_pairs_outputs_by_name(tmp_path) -> None:
    """The fallback route on the real model: note and onset share a shape, so only their names pair them."""
    from edgepack.convert import tf_onnx
    from edgepack.modelio import describe, read_specs
    from edgepack.source import open_source
    from tests.zoo import fetch

    src = open_source(fetch("basic-pitch-savedmodel"), input_shapes={"input_2": [1, 43844, 1]})
    path = tmp_path / "model.onnx"
    tf_onnx._via_tflite(src, 17, path, ConvertOptions())  # noqa: SLF001 - the fallback route itself
    onnx = describe(src, path, ModelFormat.ONNX, read_specs(path, ModelFormat.ONNX), meta={"tool": "tf2onnx"})
    assert sorted(s.name for s in onnx.outputs) == ["contour", "note", "onset"]
    assert validate(src, onnx, None, Accuracy(), count=2).passed
