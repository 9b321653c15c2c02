"""Host runtimes: every backend runs a tiny seeded model like Keras does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.errors import DataError, ModelError, UsageError
from edgepack.runtimes import BACKENDS, LatencyStats, Session, benchmark, open_session

pytestmark = [pytest.mark.tflite, pytest.mark.onnx, pytest.mark.openvino]  # every runtime: a missing one fails

INPUT = TensorSpec("input", (1, 8, 8, 1))
OUTPUT = TensorSpec("dense", (1, 10))


def _tiny_keras(batch: int | None = 1):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), batch_size=batch, name="input")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, activation="softmax", name="dense")(x)
    return keras.Model(inp, out)


def _tflite(model, path: Path, **options) -> Path:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for key, value in options.items():
        setattr(converter, key, value)
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Artifact]:
    """The same seeded Keras model as .keras, SavedModel, .tflite, .onnx and OpenVINO IR."""
    import openvino as ov
    import tensorflow as tf
    import tf2onnx

    folder = tmp_path_factory.mktemp("models")
    model = _tiny_keras()
    model.save(folder / "m.keras")
    model.export(folder / "saved", verbose=False)
    _tflite(model, folder / "m.tflite")
    spec = (tf.TensorSpec((1, 8, 8, 1), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(folder / "m.onnx"))
    # read_model + save_model, not convert_model: same IR, and no telemetry call.
    ov.save_model(ov.Core().read_model(folder / "m.onnx"), folder / "m.xml", compress_to_fp16=False)

    def art(name: str, fmt: ModelFormat) -> Artifact:
        return Artifact.from_file(folder / name, fmt, (INPUT,), (OUTPUT,))

    return {
        "keras": art("m.keras", ModelFormat.KERAS),
        "savedmodel": art("saved", ModelFormat.SAVEDMODEL),
        "tflite": art("m.tflite", ModelFormat.TFLITE),
        "onnx": art("m.onnx", ModelFormat.ONNX),
        "openvino": art("m.xml", ModelFormat.OPENVINO),
    }


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(1).random((1, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(batch) -> np.ndarray:
    return np.asarray(_tiny_keras()(batch, training=False))


def test_table_covers_every_format():
    assert set(BACKENDS) == set(ModelFormat)


@pytest.mark.parametrize("kind", ["keras", "savedmodel", "tflite", "onnx", "openvino"])
def test_runtime_matches_keras(models, batch, expected, kind):
    session = open_session(models[kind], threads=1)
    assert isinstance(session, Session)
    assert session.version and session.runtime in {"tensorflow", "litert", "onnxruntime", "openvino"}
    assert [s.shape for s in session.inputs] == [(1, 8, 8, 1)]
    assert [s.shape for s in session.outputs] == [(1, 10)]
    out = session.run([batch.astype(np.float64)])  # float64 feeds are cast to the model's float32
    assert len(out) == 1 and out[0].shape == (1, 10) and out[0].dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-4)
    assert np.argmax(out[0]) == np.argmax(expected)


def test_openvino_records_precision(models):
    assert open_session(models["openvino"]).precision == "f32"
    with pytest.raises(UsageError, match="bf16"):
        open_session(models["openvino"], precision="int4")


def test_outputs_are_not_overwritten_by_the_next_run(models, batch):
    session = open_session(models["openvino"])
    first = session.run([batch])[0]
    kept = first.copy()
    session.run([np.zeros_like(batch)])
    np.testing.assert_array_equal(first, kept)


def test_benchmark_returns_positive_stats(models, batch):
    stats = benchmark(open_session(models["onnx"]), [batch], warmup=1, runs=5)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.min_ms <= stats.p10_ms <= stats.median_ms <= stats.p90_ms <= stats.max_ms
    assert stats.runs == 5 and stats.mean_ms > 0
    assert json.loads(json.dumps(stats.to_dict()))["runs"] == 5
    with pytest.raises(UsageError):
        benchmark(open_session(models["onnx"]), [batch], runs=0)


@pytest.mark.parametrize("kind", ["tflite", "onnx", "openvino"])
def test_wrong_feeds_raise_data_error(models, kind):
    session = open_session(models[kind])
    with pytest.raises(DataError, match=r"\[1, 8, 8, 1\]"):
        session.run([np.zeros((1, 8, 8, 3), np.float32)])
    with pytest.raises(DataError, match="1 input"):
        session.run([])


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("bad.tflite", ModelFormat.TFLITE),
        ("bad.onnx", ModelFormat.ONNX),
        ("bad.xml", ModelFormat.OPENVINO),
        ("bad.keras", ModelFormat.KERAS),
    ],
)
def test_corrupt_file_raises_model_error(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_bytes(b"<not a model" * 16)
    artifact = Artifact.from_file(path, fmt, (INPUT,), (OUTPUT,))
    with pytest.raises(ModelError, match=name):
        open_session(artifact)


def test_dynamic_tflite_is_resized_to_artifact_shape(tmp_path, batch, expected):
    path = _tflite(_tiny_keras(batch=None), tmp_path / "dyn.tflite")
    artifact = Artifact.from_file(path, ModelFormat.TFLITE, (INPUT,), (OUTPUT,))
    session = open_session(artifact)
    assert session.inputs[0].shape == (1, 8, 8, 1)
    np.testing.assert_allclose(session.run([batch])[0], expected, atol=1e-4)
    unresolved = Artifact.from_file(path, ModelFormat.TFLITE, (TensorSpec("input", (None, 8, 8, 1)),), (OUTPUT,))
    with pytest.raises(ModelError, match="dynamic"):
        open_session(unresolved)


def test_int8_io_is_quantized_and_dequantized(tmp_path, batch, expected):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    path = _tflite(
        _tiny_keras(),
        tmp_path / "int8.tflite",
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=lambda: ([rng.random((1, 8, 8, 1), dtype=np.float32)] for _ in range(16)),
        target_spec=tf.lite.TargetSpec(supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8]),
        inference_input_type=tf.int8,
        inference_output_type=tf.int8,
    )
    artifact = Artifact.from_file(path, ModelFormat.TFLITE, (INPUT,), (OUTPUT,))
    session = open_session(artifact)
    assert session.inputs[0].dtype == "float32" and session.outputs[0].dtype == "float32"
    out = session.run([batch])[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=0.02)
    raw = open_session(artifact, raw_outputs=True)
    assert raw.outputs[0].dtype == "int8"
    assert raw.run([batch])[0].dtype == np.int8


def test_importing_runtimes_loads_no_framework():
    code = (
        "import sys, edgepack.runtimes, edgepack.validate, edgepack.runtimes.litert, edgepack.runtimes.openvino, "
        "edgepack.runtimes.onnxruntime, edgepack.runtimes.tensorflow\n"
        "heavy = {'tensorflow', 'keras', 'onnxruntime', 'openvino', 'ai_edge_litert', 'onnx'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"


def test_openvino_f32_runs_compressed_int8_weights_in_f32(tmp_path):
    """int8 weights behind Cast * scale (a weight-quantized encoder): f32 must not quantize activations on the fly.

    The CPU plugin does that by default on CPUs that have fast int8 (an all-MiniLM-L6 with int8 weights
    differed from ONNX Runtime by 0.61); edgepack's f32 turns it off, so the IR agrees with numpy.
    """
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(384, 384)).astype(np.int8)
    scale = np.float32(0.01)
    nodes = [
        helper.make_node("Cast", ["wq"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wf", "s"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "compressed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 384])],
        [numpy_helper.from_array(weights, "wq"), numpy_helper.from_array(np.asarray(scale), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "m.xml"))
    spec = (TensorSpec("x", (32, 384), "float32"),), (TensorSpec("y", (32, 384), "float32"),)
    artifact = Artifact.from_file(tmp_path / "m.xml", ModelFormat.OPENVINO, *spec, files=(tmp_path / "m.bin",))
    x = rng.normal(size=(32, 384)).astype(np.float32)
    want = x.astype(np.float64) @ (weights.astype(np.float64) * float(scale))
    (got,) = open_session(artifact).run([x])
    assert np.max(np.abs(got - want)) < 1e-3 * np.max(np.abs(want))
