"""Calibration data: loading, checks against the model's inputs, splits, and the three quantizer adapters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import TensorSpec
from edgepack.calibration import (
    Preprocess,
    dataset_from_arrays,
    load_dataset,
    nncf_dataset,
    ort_reader,
    representative_dataset,
)
from edgepack.errors import DataError, UsageError

IMG = TensorSpec("image", (1, 4, 4, 3))


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def _error(path: Path, inputs: list[TensorSpec], **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, inputs, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- formats


def test_npz_named_keys_multi_input_with_labels(tmp_path: Path) -> None:
    a = _rng().random((10, 4), dtype=np.float32)
    b = _rng().random((10, 2)).astype(np.float64)  # float64 is cast to the input's float32
    np.savez(tmp_path / "d.npz", a=a, b=b, y=np.arange(10))
    ds = load_dataset(tmp_path / "d.npz", [TensorSpec("a", (1, 4)), TensorSpec("b", (1, 2))])
    assert len(ds) == 10 and ds.input_names == ("a", "b")
    feeds = list(ds)
    assert feeds[3]["a"].shape == (1, 4) and feeds[3]["b"].dtype == np.float32
    np.testing.assert_array_equal(feeds[3]["a"][0], a[3])
    np.testing.assert_array_equal(ds.labels, np.arange(10))
    assert ds.describe()["inputs"][1]["data_dtype"] == "float64"


def test_npz_x_y_single_input(tmp_path: Path) -> None:
    x = _rng().random((12, 4, 4, 3), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 3)
    ds = load_dataset(tmp_path / "d.npz", [IMG], max_samples=9)
    assert len(ds) == 9
    np.testing.assert_array_equal(ds[8]["image"], x[8:9])
    np.testing.assert_array_equal(ds.labels, (np.arange(12) % 3)[:9])


def test_npy_file_is_memory_mapped_and_batch_split(tmp_path: Path) -> None:
    x = _rng().random((16, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "x.npy", [TensorSpec("v", (4, 3))], min_samples=4)  # batch 4: 4 rows a feed
    assert len(ds) == 4 and ds.labels is None
    feed = ds[1]["v"]
    assert type(feed) is np.ndarray and feed.flags.c_contiguous and feed.flags.writeable
    np.testing.assert_array_equal(feed, x[4:8])


def test_npy_folder_sorted_mixed_batch_and_single_files(tmp_path: Path) -> None:
    x = _rng().random((10, 2, 2), dtype=np.float32)
    folder = tmp_path / "npys"
    folder.mkdir()
    np.save(folder / "a.npy", x[:4])  # a batch
    np.save(folder / "b.npy", x[4])  # one sample, no batch dim
    np.save(folder / "c.npy", x[5:6])  # one sample with batch dim
    np.save(folder / "d.npy", x[6:])
    (folder / "notes.txt").write_text("ignored")
    ds = load_dataset(folder, [TensorSpec("t", (1, 2, 2))])
    np.testing.assert_array_equal(np.concatenate([f["t"] for f in ds]), x)
    assert ds.describe()["files"] == 4 and ds.describe()["kind"] == "npy-folder"


def test_image_folder_class_subfolders_give_sorted_labels(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for cls, value in (("zebra", 200), ("ant", 10), ("cat", 100)):
        for i in range(3):
            _write_png(root / cls / f"{i}.png", np.full((6, 6, 3), value))
    (root / "preprocess.toml").write_text('size = [4, 4]\nscale = "1/255"\nchannel_order = "RGB"\n')
    ds = load_dataset(root, [IMG])
    assert ds.classes == ("ant", "cat", "zebra")
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert ds[0]["image"].shape == (1, 4, 4, 3)
    np.testing.assert_allclose(ds[8]["image"], 200 / 255, rtol=1e-6)
    assert ds.describe()["preprocess_applied"] is True


def test_image_preprocess_bgr_nchw_scale_mean_std_numerically(tmp_path: Path) -> None:
    pixels = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)
    for i in range(8):
        _write_png(tmp_path / "imgs" / f"{i:02d}.png", pixels)
    pre = Preprocess(layout="NCHW", channel_order="BGR", scale=0.5, mean=(1, 2, 3), std=(2, 4, 8))
    ds = load_dataset(tmp_path / "imgs", [TensorSpec("x", (1, 3, 2, 2))], preprocess=pre)
    got = ds[0]["x"]
    bgr = pixels[:, :, ::-1].astype(np.float32)
    want = ((bgr * 0.5 - [1, 2, 3]) / [2, 4, 8]).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 0, 0, 0] == (30 * 0.5 - 1) / 2  # channel 0 is blue after BGR


def test_image_resize_averages_a_2x2_image(tmp_path: Path) -> None:
    pixels = np.array([[0, 40], [80, 120]], np.uint8)
    for i in range(8):
        _write_png(tmp_path / "imgs" / f"{i}.png", pixels)
    pre = Preprocess.from_flags(size="1x1", channel_order="L", scale="1")
    ds = load_dataset(tmp_path / "imgs", [TensorSpec("x", (1, 1, 1, 1))], preprocess=pre)
    np.testing.assert_allclose(ds[0]["x"], [[[[60.0]]]])


def test_image_folder_is_read_lazily(tmp_path: Path) -> None:
    for i in range(10):
        _write_png(tmp_path / "imgs" / f"{i}.png", np.zeros((4, 4, 3)))
    (tmp_path / "imgs" / "5.png").write_bytes(b"not a png")
    ds = load_dataset(tmp_path / "imgs", [IMG], preprocess=Preprocess())  # only the first image is decoded
    assert len(ds) == 10
    with pytest.raises(DataError, match="5.png"):
        list(ds)


def test_image_folder_needs_preprocessing(tmp_path: Path) -> None:
    for i in range(8):
        _write_png(tmp_path / "imgs" / f"{i}.png", np.zeros((4, 4, 3)))
    assert "no preprocessing" in _error(tmp_path / "imgs", [IMG])


def test_image_layout_mismatch_says_what_to_fix(tmp_path: Path) -> None:
    for i in range(8):
        _write_png(tmp_path / "imgs" / f"{i}.png", np.zeros((4, 4, 3)))
    msg = _error(tmp_path / "imgs", [TensorSpec("x", (1, 3, 4, 4))], preprocess=Preprocess(size=(4, 4)))
    assert "(4, 4, 3)" in msg and "layout" in msg


# --------------------------------------------------------------------------- every DataError


def test_wrong_key_names_lists_both(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((8, 4, 4, 3), np.float32), extra=np.zeros(8))
    msg = _error(tmp_path / "d.npz", [IMG])
    assert "images, extra" in msg and "[image]" in msg


def test_wrong_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((8, 5, 5, 3), np.float32))
    assert "(8, 5, 5, 3)" in _error(tmp_path / "x.npy", [IMG])


def test_nan_and_inf_are_counted_per_array(tmp_path: Path) -> None:
    x = np.zeros((10, 4, 4, 3), np.float32)
    x[1, 0, 0, 0] = x[2, 1, 1, 1] = np.nan
    x[3, 0, 0, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=x)
    msg = _error(tmp_path / "d.npz", [IMG])
    assert "2 NaN values (2 in 'x' in d.npz)" in msg and "1 Inf" in msg
    assert len(load_dataset(tmp_path / "d.npz", [IMG], max_samples=1, min_samples=1)) == 1  # only used rows


def test_too_few_samples_says_how_many_are_needed(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4, 3), np.float32))
    assert "3 samples, need at least 8" in _error(tmp_path / "x.npy", [IMG])


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    assert "pickle" in _error(tmp_path / "obj.npy", [TensorSpec("x", (1,))])
    np.savez(tmp_path / "obj.npz", x=np.array([[1], "a"], dtype=object))
    assert "pickle" in _error(tmp_path / "obj.npz", [TensorSpec("x", (1,))])


@pytest.mark.parametrize(("data", "spec"), [(np.float32, "int64"), (np.int32, "float32")])
def test_int_vs_float(tmp_path: Path, data: type, spec: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((8, 3), data))
    msg = _error(tmp_path / "x.npy", [TensorSpec("ids", (1, 3), spec)])
    assert f"takes {spec}" in msg


def test_int_out_of_range_for_narrower_input(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.full((8, 3), 300, np.int64))
    assert "300..300, outside uint8" in _error(tmp_path / "x.npy", [TensorSpec("q", (1, 3), "uint8")])


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    a = np.zeros((4, 4), np.float32)
    a[0, 0] = np.nan
    np.savez(tmp_path / "d.npz", a=a, b=np.zeros((4, 9), np.float32), y=np.arange(3))
    msg = _error(tmp_path / "d.npz", [TensorSpec("a", (1, 4)), TensorSpec("b", (1, 2))])
    assert "'b' in d.npz has shape (4, 9)" in msg and "1 NaN" in msg and "3 labels for 4 samples" in msg


def test_npz_over_memory_budget_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((64, 4, 4, 3), np.float32))
    assert "memory budget" in _error(tmp_path / "d.npz", [IMG], max_bytes=1024)


def test_npy_folder_bad_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "n"
    folder.mkdir()
    for i in range(8):
        np.save(folder / f"{i}.npy", np.zeros((4, 4, 3), np.float32))
    np.save(folder / "odd.npy", np.zeros((2, 2), np.float32))
    assert "odd.npy (2, 2)" in _error(folder, [IMG])


# --------------------------------------------------------------------------- preprocessing spec


def test_preprocess_toml_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "preprocess.toml"
    path.write_text('layout = "NHWC"\nmeen = [0.5]\n')
    with pytest.raises(DataError, match=r"preprocess\.toml: unknown key 'meen'"):
        Preprocess.from_toml(path)


def test_preprocess_from_flags_and_table() -> None:
    pre = Preprocess.from_flags(size="224x224", scale="1/255", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    assert pre.size == (224, 224) and pre.scale == pytest.approx(1 / 255) and len(pre.mean) == 3
    assert Preprocess.from_table({"channel_order": "L", "mean": 0.5}).mean == (0.5,)
    with pytest.raises(DataError, match="command-line flags: 'mean'"):
        Preprocess.from_flags(mean="1,2")
    with pytest.raises(DataError, match="profile x"):
        Preprocess.from_table({"std": [0.0]}, source="profile x")


def test_digits_calibration_set_loads() -> None:
    root = Path(__file__).resolve().parents[1] / "calibration" / "digits"
    if not (root / "digits.npz").is_file():
        pytest.skip("calibration/digits not written yet")
    ds = load_dataset(root / "digits.npz", [TensorSpec("input", (1, 8, 8, 1))])
    assert len(ds) == len(ds.labels) >= 8
    assert ds.describe()["preprocess"]["channel_order"] == "L"  # recorded, not applied to arrays


# --------------------------------------------------------------------------- split, take, lists


def _arrays(n: int = 50) -> object:
    return dataset_from_arrays({"v": np.arange(n, dtype=np.float32)[:, None]}, [TensorSpec("v", (1, 1))])


def test_split_is_reproducible_disjoint_and_complete() -> None:
    ds = _arrays()
    rest, hold = ds.split(0.2, seed=3)
    again = ds.split(0.2, seed=3)
    values = [[float(f["v"][0, 0]) for f in part] for part in (rest, hold, *again)]
    assert values[0] == values[2] and values[1] == values[3]
    assert len(values[1]) == 10 and not set(values[0]) & set(values[1])
    assert sorted(values[0] + values[1]) == list(range(50))
    other = [float(f["v"][0, 0]) for f in ds.split(0.2, seed=4)[1]]
    assert other != values[1]
    with pytest.raises(UsageError):
        ds.split(1.0)


def test_take_and_as_lists() -> None:
    ds = _arrays()
    lists = ds.take(3).as_lists()
    assert [x[0].item() for x in lists] == [0.0, 1.0, 2.0] and ds.take(99).describe()["samples"] == 50


def test_importing_calibration_imports_no_framework() -> None:
    heavy = "{'tensorflow', 'onnxruntime', 'nncf', 'openvino', 'PIL'}"
    code = f"import sys, edgepack.calibration; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- adapters


@pytest.fixture
def conv_onnx(tmp_path: Path) -> Path:
    """A seeded Conv+Relu ONNX model with input 'input' (1, 3, 8, 8)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["output"]),
        ],
        "conv_relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    return path


def _conv_data(n: int = 16) -> object:
    x = np.random.default_rng(1).random((n, 3, 8, 8), dtype=np.float32)
    return dataset_from_arrays({"data": x}, [TensorSpec("data", (1, 3, 8, 8))])


def test_ort_reader_feeds_quantize_static(conv_onnx: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantFormat, quantize_static

    reader = ort_reader(_conv_data(), ["input"])  # dataset name 'data' -> ONNX name 'input'
    assert len(reader) == 16 and set(reader.get_next()) == {"input"}
    reader.rewind()
    out = tmp_path / "conv.qdq.onnx"
    quantize_static(conv_onnx, out, reader, quant_format=QuantFormat.QDQ)
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "QuantizeLinear" in {n.op_type for n in __import__("onnx").load(out).graph.node}
    y = session.run(None, {"input": _conv_data()[0]["data"]})[0]
    assert y.shape == (1, 4, 8, 8) and np.isfinite(y).all()


def test_nncf_dataset_quantizes_onnx(conv_onnx: Path) -> None:
    nncf = pytest.importorskip("nncf")
    onnx = pytest.importorskip("onnx")
    data = nncf_dataset(_conv_data(), ["input"])
    assert list(data.get_inference_data([2]))[0]["input"].shape == (1, 3, 8, 8)
    quantized = nncf.quantize(onnx.load(conv_onnx), data, subset_size=8)
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    positional = nncf_dataset(_conv_data(), positional=True)
    assert isinstance(next(iter(positional.get_inference_data())), tuple)


def test_representative_dataset_drives_tflite_int8() -> None:  # about 6 s, mostly importing tensorflow
    tf = pytest.importorskip("tensorflow")
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3), keras.layers.ReLU()])
    ds = dataset_from_arrays(
        {"image": np.random.default_rng(2).random((8, 4, 4, 3), dtype=np.float32)}, [IMG], min_samples=8
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(ds)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    flat = converter.convert()
    interpreter = litert.Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and inp["quantization"][0] > 0  # calibrated scale
    interpreter.set_tensor(inp["index"], np.zeros(inp["shape"], np.int8))
    interpreter.invoke()
    assert interpreter.get_tensor(out["index"]).shape == (1, 2, 2, 2)
