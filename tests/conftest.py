"""Shared test fixtures: the shipped digits example and tiny seeded models in every source format.

Heavy frameworks are imported inside the fixtures, so a test that needs none of
them pays nothing. Models are built once per session into temporary folders.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

# Test-process environment. setdefault, so a runner can still override any of them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NNCF_CI", "1")  # NNCF telemetry off (nncf/definitions.py)
# OpenVINO's converter only skips telemetry when CI=true, which we do not force; its
# modules fall back to a no-op stub when openvino_telemetry cannot be imported.
sys.modules.setdefault("openvino_telemetry", None)

ROOT = Path(__file__).resolve().parent.parent
DIGITS_KERAS = ROOT / "examples" / "digits_cnn.keras"
DIGITS_ONNX = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_NPZ = ROOT / "calibration" / "digits" / "digits.npz"

SEED = 0
TINY_HW = 8  # tiny Keras model input: (None, 8, 8, 1), NHWC
TINY_CLASSES = 3
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # what opset 17 needs; newer IR versions outrun older onnxruntime builds


def _committed(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path.relative_to(ROOT)} is missing; regenerate it with: python examples/train_digits.py")
    return path


@pytest.fixture(scope="session")
def digits_keras() -> Path:
    """Path to the shipped example model ``examples/digits_cnn.keras`` (input ``(None, 8, 8, 1)``)."""
    return _committed(DIGITS_KERAS)


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    """Path to ``examples/digits_cnn.onnx`` (input ``image`` ``(1, 8, 8, 1)`` NHWC, output ``probs`` ``(1, 10)``)."""
    return _committed(DIGITS_ONNX)


@pytest.fixture(scope="session")
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The 300-sample digits calibration set: ``x`` float32 ``(300, 8, 8, 1)`` in [0, 1], ``y`` int64."""
    with np.load(_committed(DIGITS_NPZ)) as data:
        return data["x"], data["y"]


def build_tiny_keras(seed: int = SEED):
    """Build a tiny functional Keras CNN with seeded weights and non-trivial BatchNorm statistics.

    Conv2D(4, 3x3) -> BatchNorm -> ReLU -> GlobalAveragePooling -> Dense(3, softmax), input
    ``image`` ``(None, 8, 8, 1)``, output ``probs`` ``(None, 3)``. Touches no global RNG.

    Args:
        seed: Seed for the initializers and the BatchNorm statistics.

    Returns:
        The uncompiled ``keras.Model``.
    """
    import keras
    from keras import layers

    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(shape=(TINY_HW, TINY_HW, 1), name="image")
    h = layers.Conv2D(4, 3, padding="same", kernel_initializer=init, name="conv")(inputs)
    bn = layers.BatchNormalization(name="bn")
    h = layers.ReLU(name="relu")(bn(h))
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = layers.Dense(TINY_CLASSES, activation="softmax", kernel_initializer=init, name="probs")(h)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    rng = np.random.default_rng(seed)
    gamma, beta, mean, var = (w.shape for w in bn.get_weights())
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, gamma).astype(np.float32),
            rng.normal(0.0, 0.1, beta).astype(np.float32),
            rng.normal(0.0, 0.1, mean).astype(np.float32),
            rng.uniform(0.5, 1.5, var).astype(np.float32),
        ]
    )
    return model


@pytest.fixture(scope="session")
def tiny_keras_model():
    """The tiny seeded Keras model, in memory (see :func:`build_tiny_keras`). Do not mutate it."""
    return build_tiny_keras()


@pytest.fixture(scope="session")
def tiny_keras_path(tiny_keras_model, tmp_path_factory) -> Path:
    """The tiny Keras model saved in Keras 3 ``.keras`` format."""
    path = tmp_path_factory.mktemp("tiny_keras") / "tiny.keras"
    tiny_keras_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_h5_path(tiny_keras_model, tmp_path_factory) -> Path:
    """The tiny Keras model saved in legacy Keras HDF5 ``.h5`` format."""
    path = tmp_path_factory.mktemp("tiny_h5") / "tiny.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that HDF5 is a legacy format; that is the point
        tiny_keras_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_savedmodel_path(tiny_keras_model, tmp_path_factory) -> Path:
    """The tiny Keras model exported as a TensorFlow SavedModel folder (``model.export``, endpoint ``serve``)."""
    path = tmp_path_factory.mktemp("tiny_savedmodel") / "tiny_savedmodel"
    tiny_keras_model.export(str(path), verbose=False)
    return path


@pytest.fixture(scope="session")
def tiny_tflite_path(tiny_keras_model, tmp_path_factory) -> Path:
    """The tiny Keras model converted to float32 ``.tflite`` with ``TFLiteConverter.from_keras_model``."""
    import tensorflow as tf

    path = tmp_path_factory.mktemp("tiny_tflite") / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_keras_model).convert())
    return path


def build_tiny_onnx(batch: int | str = 1, seed: int = SEED):
    """Build a tiny seeded ONNX CNN: Conv(8, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4).

    Args:
        batch: Batch dimension of the input ``input`` ``(batch, 3, 16, 16)`` (NCHW): an int, or a
            name such as ``"N"`` for a dynamic dimension. The output is ``logits`` ``(batch, 4)``.
        seed: Seed for the weights.

    Returns:
        A checked ``onnx.ModelProto`` (opset 17).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(0.0, 0.3, (8, 3, 3, 3)),
        "conv_b": rng.normal(0.0, 0.1, (8,)),
        "fc_w": rng.normal(0.0, 0.3, (4, 8)),
        "fc_b": rng.normal(0.0, 0.1, (4,)),
    }
    initializers = [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="edgepack-tests"
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _save_onnx(model, path: Path) -> Path:
    import onnx

    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_onnx_path(tmp_path_factory) -> Path:
    """Tiny seeded ONNX CNN with a static NCHW input ``input`` ``(1, 3, 16, 16)``; output ``logits`` ``(1, 4)``."""
    return _save_onnx(build_tiny_onnx(1), tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_dynamic_path(tmp_path_factory) -> Path:
    """The same ONNX CNN with a dynamic batch dimension ``N``: input ``(N, 3, 16, 16)``."""
    return _save_onnx(build_tiny_onnx("N"), tmp_path_factory.mktemp("tiny_onnx_dyn") / "tiny_dynamic.onnx")
