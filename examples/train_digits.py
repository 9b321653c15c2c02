"""Train the example digits CNN and write the sample model files and calibration set.

Uses scikit-learn's bundled 8x8 digits data (no download). Deterministic: fixed
seed, one CPU thread, deterministic TensorFlow ops. Writes, relative to the
repository root:

- ``examples/digits_cnn.keras``: the trained Keras 3 model (NHWC input ``(None, 8, 8, 1)``).
- ``examples/digits_cnn.onnx``: the same model exported with tf2onnx (opset 17, batch 1).
- ``calibration/digits/digits.npz``: 300 held-out samples (``x`` float32, ``y`` int64).
- ``calibration/digits/preprocess.toml``: how ``x`` was made from the raw 0..16 pixel values.

Usage::

    python examples/train_digits.py [--epochs 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KERAS_PATH = ROOT / "examples" / "digits_cnn.keras"
ONNX_PATH = ROOT / "examples" / "digits_cnn.onnx"
CALIB_DIR = ROOT / "calibration" / "digits"

SCALE = 1.0 / 16.0  # raw digits pixels are integers 0..16
CALIB_SIZE = 300
TEST_SIZE = 300
ONNX_OPSET = 17

PREPROCESS_TOML = """\
# Preprocessing that turns a raw scikit-learn digits image into the model input.
# x = (raw * scale - mean) / std, per channel; raw pixels are integers 0..16.
layout = "NHWC"
scale = {scale}
mean = [0.0]
std = [1.0]
channel_order = "L"
size = [8, 8]
"""


def load_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load the digits and split them into stratified train, calibration and test sets.

    Args:
        seed: Seed for the shuffled split.

    Returns:
        ``{"train": (x, y), "calib": (x, y), "test": (x, y)}`` with ``x`` float32 NHWC in
        [0, 1] and ``y`` int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) * np.float32(SCALE))[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_held, y_train, y_held = train_test_split(
        x, y, test_size=CALIB_SIZE + TEST_SIZE, stratify=y, random_state=seed
    )
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_held, y_held, test_size=TEST_SIZE, stratify=y_held, random_state=seed
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "test": (x_test, y_test)}


def build_model():
    """Build the (uncompiled) digits CNN: two Conv+BatchNorm+ReLU blocks, max pooling, softmax.

    Returns:
        A Keras functional model with input ``image`` ``(None, 8, 8, 1)`` and output ``probs``
        ``(None, 10)``.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(8, 8, 1), name="image")
    h = inputs
    for i, filters in enumerate((16, 32)):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = layers.BatchNormalization(name=f"bn{i}")(h)
        h = layers.ReLU(name=f"relu{i}")(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    outputs = layers.Dense(10, activation="softmax", name="probs")(h)
    return keras.Model(inputs, outputs, name="digits_cnn")


def train(splits: dict, *, epochs: int, seed: int):
    """Train a fresh model on the train split.

    Args:
        splits: Output of :func:`load_splits`.
        epochs: Number of training epochs.
        seed: Seed for weight initialisation and shuffling.

    Returns:
        An uncompiled copy of the trained model (no optimizer state).
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_train, y_train = splits["train"]
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    # An uncompiled copy keeps the saved file small: no optimizer slots or compile config.
    clean = build_model()
    clean.set_weights(model.get_weights())
    return clean


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of class probabilities ``probs`` against labels ``y``."""
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def export_onnx(model, path: Path) -> None:
    """Export ``model`` to ONNX with tf2onnx at opset 17 and a fixed batch of 1.

    Args:
        model: The trained Keras model.
        path: Where to write the ``.onnx`` file.
    """
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((1, 8, 8, 1), tf.float32, name="image")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the batch-1 ONNX model over ``x`` one sample at a time with onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: sample[np.newaxis]})[0] for sample in x])


def write_calibration(x: np.ndarray, y: np.ndarray, folder: Path) -> None:
    """Write the calibration arrays and their preprocessing description.

    Args:
        x: float32 NHWC inputs, already scaled.
        y: int64 labels.
        folder: Destination folder (created if missing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "digits.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    (folder / "preprocess.toml").write_text(PREPROCESS_TOML.format(scale=SCALE), encoding="utf-8")


def main() -> None:
    """Parse arguments, train, evaluate, and write all outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()

    splits = load_splits(args.seed)
    start = time.perf_counter()
    model = train(splits, epochs=args.epochs, seed=args.seed)
    train_s = time.perf_counter() - start

    x_test, y_test = splits["test"]
    x_calib, y_calib = splits["calib"]
    test_acc = accuracy(model.predict(x_test, verbose=0), y_test)
    calib_acc = accuracy(model.predict(x_calib, verbose=0), y_calib)

    model.save(KERAS_PATH)
    export_onnx(model, ONNX_PATH)
    onnx_acc = accuracy(onnx_predict(ONNX_PATH, x_test), y_test)
    write_calibration(x_calib, y_calib, CALIB_DIR)

    print(f"train {len(splits['train'][1])} samples, {args.epochs} epochs, {train_s:.1f} s")
    print(f"test accuracy: keras {test_acc:.4f}, onnx {onnx_acc:.4f}; calibration-set accuracy {calib_acc:.4f}")
    for path in (KERAS_PATH, ONNX_PATH, CALIB_DIR / "digits.npz"):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    main()
