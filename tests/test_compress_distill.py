"""edgepack.compress.distill: a half-width student learns the digits CNN from its soft outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.errors import ModelError, UsageError
from tests.conftest import DIGITS_NPZ, SEED


@pytest.fixture(scope="module")
def digits_train(tmp_path_factory):
    """The digits training split, labelled and unlabelled (``x`` only)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=600, stratify=y, random_state=SEED)
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "train.npz", x=x_train, y=y_train)
    np.savez(folder / "unlabelled.npz", x=x_train)
    return folder / "train.npz", folder / "unlabelled.npz"


def _calibration_accuracy(path) -> float:
    from edgepack.artifact import ModelFormat
    from edgepack.modelio import load_keras

    with np.load(DIGITS_NPZ) as data:
        x, y = data["x"], data["y"]
    return float(np.mean(np.argmax(load_keras(path, ModelFormat.KERAS)(x).numpy(), axis=1) == y))


def _options(**changes):
    from dataclasses import replace

    from edgepack.compress.distill import DISTILL

    return replace(DISTILL, **changes)


def test_half_width_student_reaches_90_percent_of_the_teacher(digits_keras, digits_train, tmp_path):
    from edgepack.artifact import ModelFormat
    from edgepack.compress import distill
    from edgepack.modelio import load_keras

    out = tmp_path / "student.keras"
    report = distill(
        digits_keras, student="width=0.5", data=digits_train[0], out=out, options=_options(epochs=15), latency=False
    )
    student = load_keras(out, ModelFormat.KERAS)
    assert student.get_layer("conv0").filters == 8 and student.get_layer("conv1").filters == 16
    assert student.get_layer("probs").units == 10  # the output keeps its classes
    assert report.after.params < 0.5 * report.before.params and report.after.macs < 0.3 * report.before.macs
    teacher_acc, student_acc = _calibration_accuracy(digits_keras), _calibration_accuracy(out)
    assert student_acc >= 0.9 * teacher_acc  # on samples neither model trained on
    assert report.after.accuracy >= 0.9 * report.before.accuracy
    t = report.training
    assert t.labels and t.alpha == 0.5 and t.temperature == 4.0 and t.train_samples + t.val_samples == 1197
    assert report.settings["width"] == 0.5 and report.method == "distill"
    json.dumps(report.to_dict())


def test_unlabelled_distillation_through_the_cli(digits_keras, digits_train, tmp_path):
    from typer.testing import CliRunner

    from edgepack.cli_compress import compress_app

    out = tmp_path / "student.keras"
    args = ["distill", str(digits_keras), "--student", "width=0.5", "--data", str(digits_train[1]), "--out", str(out)]
    result = CliRunner().invoke(compress_app, [*args, "--epochs", "6", "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "distill" and report["training"]["epochs_run"] == 6
    assert report["training"]["labels"] is False and report["training"]["alpha"] == 0.0
    assert "accuracy" not in report["before"] and "accuracy" not in report["after"]
    assert report["after"]["agreement"] >= 0.85
    assert _calibration_accuracy(out) >= 0.8


def test_early_stopping_stops_and_keeps_the_best_epoch(digits_keras, digits_train, tmp_path):
    import keras

    from edgepack.compress import distill

    student = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    path = tmp_path / "tiny_student.keras"
    student.save(path)
    lines = []
    options = _options(epochs=60, patience=2, learning_rate=0.5)  # a rate this high soon stops improving
    report = distill(
        digits_keras,
        student=path,
        data=digits_train[0],
        out=tmp_path / "out.keras",
        options=options,
        latency=False,
        progress=lines.append,
    )
    t = report.training
    assert t.stopped_early and t.epochs_run < 60 and len(lines) == t.epochs_run
    assert t.best_epoch == t.epochs_run - 2 and t.best_val_loss is not None
    assert report.settings["student"] == str(path)


def test_student_specs_and_refusals(digits_keras, digits_train, tmp_path):
    import keras
    from keras import layers

    from edgepack.compress import distill
    from edgepack.compress.distill import parse_spec, student_from_width

    assert parse_spec("width=0.25") == {"width": 0.25}
    for bad in ("depth=2", "width", "width=abc", "width=0"):
        with pytest.raises(UsageError):
            parse_spec(bad)
    with pytest.raises(UsageError, match="needs --data"):
        distill(digits_keras, student="width=0.5", data=None, out=tmp_path / "s.keras")

    inputs = keras.Input((6, 6, 3))
    a, b = layers.Conv2D(4, 3, name="left")(inputs), layers.Conv2D(6, 3, name="right")(inputs)
    joined = layers.Concatenate(name="join")([a, b])  # fresh weights: a concatenation of scaled branches is fine
    student, sizes = student_from_width(keras.Model(inputs, layers.Dense(2, name="out")(joined)), 0.5, seed=1)
    assert sizes == {"left": 2, "right": 3} and student.get_layer("out").get_weights()[0].shape == (5, 2)
    image = keras.Input((6, 6, 1))
    h = layers.Reshape((16, 8), name="reshape")(layers.Conv2D(8, 3)(image))
    with pytest.raises(ModelError, match="'reshape'"):
        student_from_width(keras.Model(image, layers.Dense(2)(h)), 0.5)

    wrong = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(3, activation="softmax")])
    wrong.save(tmp_path / "wrong.keras")
    with pytest.raises(ModelError, match="output shape"):
        distill(digits_keras, student=tmp_path / "wrong.keras", data=digits_train[0], out=tmp_path / "s.keras")
