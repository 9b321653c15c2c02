"""Reading the user's model: detection from content, dynamic dims, refusal of code and pickles."""

from __future__ import annotations

import pickle
import shutil
import zipfile

import pytest

from edgepack.artifact import ModelFormat
from edgepack.errors import ModelError, UsageError
from edgepack.shapes import InputShape, ranges_from_meta
from edgepack.source import detect_format, open_source, parse_input_shapes, static_shapes


def test_format_is_detected_from_content_not_extension(tmp_path, tiny_onnx_path, tiny_tflite_path, tiny_keras_path):
    for src, fmt in (
        (tiny_onnx_path, ModelFormat.ONNX),
        (tiny_tflite_path, ModelFormat.TFLITE),
        (tiny_keras_path, ModelFormat.KERAS),
    ):
        renamed = tmp_path / f"model_{fmt.value}.bin"
        shutil.copyfile(src, renamed)
        assert detect_format(renamed) is fmt


def test_savedmodel_and_h5(tiny_savedmodel_path, tiny_h5_path):
    assert detect_format(tiny_savedmodel_path) is ModelFormat.SAVEDMODEL
    assert detect_format(tiny_h5_path) is ModelFormat.H5


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b"\x00" * 64])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        open_source(path)


def test_pickle_and_torch_checkpoints_are_refused(tmp_path):
    pkl = tmp_path / "model.pt"
    pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelError, match="never loads pickles"):
        detect_format(pkl)
    torch_like = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(torch_like, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(1))
    with pytest.raises(ModelError, match="PyTorch"):
        detect_format(torch_like)


def test_truncated_onnx(tmp_path, tiny_onnx_path):
    data = tiny_onnx_path.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        open_source(path)


def test_dynamic_dims_need_a_shape(tiny_onnx_dynamic_path):
    with pytest.raises(ModelError) as info:
        open_source(tiny_onnx_dynamic_path, batch=None)
    message = str(info.value)
    assert "input: [?, 3, 16, 16]" in message and "--input-shape input=1,3,16,16" in message
    fixed = open_source(tiny_onnx_dynamic_path, input_shapes={"": (2, 3, 16, 16)}, batch=None)
    assert fixed.inputs[0].shape == (2, 3, 16, 16)
    assert fixed.meta["shape_origin"][fixed.inputs[0].name] == "--input-shape"
    by_profile = open_source(tiny_onnx_dynamic_path, batch=1)
    assert by_profile.inputs[0].shape == (1, 3, 16, 16)
    assert "profile" in by_profile.meta["shape_origin"][by_profile.inputs[0].name]


def test_shape_that_does_not_fit(tiny_onnx_dynamic_path):
    name = open_source(tiny_onnx_dynamic_path).inputs[0].name
    with pytest.raises(ModelError, match="does not fit"):
        open_source(tiny_onnx_dynamic_path, input_shapes={name: (1, 4, 16, 16)})
    with pytest.raises(UsageError, match="does not have"):
        open_source(tiny_onnx_dynamic_path, input_shapes={"nope": (1, 3, 16, 16)})


@pytest.mark.parametrize("flag", ["x=", "x=1,a", "x=0,3", "", "x=1,[4:2:8]", "x=1,[2:8]"])
def test_bad_shape_flags(flag):
    with pytest.raises(UsageError):
        parse_input_shapes([flag])


def test_shape_flags():
    assert parse_input_shapes(["images=1,3,224,224", "1x8x8x1"]) == {"images": (1, 3, 224, 224), "": (1, 8, 8, 1)}
    ranged = parse_input_shapes(["x=[1:2:4],3,16,16"])["x"]
    assert isinstance(ranged, InputShape) and ranged.max() == (4, 3, 16, 16)


def test_ranges_in_every_api_form(tiny_onnx_dynamic_path):
    name = open_source(tiny_onnx_dynamic_path).inputs[0].name
    forms = (
        {"": InputShape.parse("[1:2:4],3,16,16")},  # a bare flag for the only input
        {name: ((1, 2, 4), 3, 16, 16)},  # (min, opt, max) triples
        [InputShape.parse(f"{name}=[1:2:4],3,16,16")],
    )
    for given in forms:
        src = open_source(tiny_onnx_dynamic_path, input_shapes=given, batch=None)
        assert src.inputs[0].shape == (2, 3, 16, 16)  # the opt shape: what fixed-shape targets get
        assert ranges_from_meta(src.meta) == (InputShape.parse(f"{name}=[1:2:4],3,16,16"),)
    assert open_source(tiny_onnx_dynamic_path).meta["shape_ranges"] == []


def test_memory_check_counts_a_range_at_its_max(tiny_onnx_dynamic_path, monkeypatch):
    from edgepack import memory

    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 8 << 30)
    name = open_source(tiny_onnx_dynamic_path).inputs[0].name
    open_source(tiny_onnx_dynamic_path, input_shapes={name: InputShape.parse("[1:1:64],3,16,16")})
    with pytest.raises(ModelError, match="validation inputs"):
        open_source(tiny_onnx_dynamic_path, input_shapes={name: InputShape.parse("[1:1:500000],3,16,16")})


def test_keras_io_with_batch_fixed(tiny_keras_path):
    source = open_source(tiny_keras_path)
    assert source.format is ModelFormat.KERAS
    assert source.inputs[0].shape == (1, 8, 8, 1)
    assert source.outputs[0].shape[0] == 1


def test_lambda_layer_is_refused_unless_trusted(tmp_path):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelError, match="Lambda"):
        open_source(path)
    trusted = open_source(path, trust_code=True)
    assert trusted.inputs[0].shape == (1, 4)


def test_static_shapes_for_single_shape_callers():
    given = parse_input_shapes(["x=1,3,48,[32:320:1024]", "mask=1,48"])
    assert static_shapes(given) == {"x": (1, 3, 48, 320), "mask": (1, 48)}
    assert static_shapes(None) == {}
