"""edgepack.compress.prune: unstructured (masked fine-tune) and structured (smaller layers) pruning."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import ModelError, UsageError
from tests.conftest import DIGITS_NPZ, SEED


@pytest.fixture(scope="module")
def digits_train(tmp_path_factory):
    """The digits training split (the samples the example CNN was trained on; not the calibration set)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=600, stratify=y, random_state=SEED)
    path = tmp_path_factory.mktemp("digits") / "train.npz"
    np.savez(path, x=x_train, y=y_train)
    return path, x_train, y_train


@pytest.fixture(scope="module")
def mlp_path(digits_train, tmp_path_factory):
    """A Sequential digits MLP with a 100-unit hidden Dense, trained for a few seconds."""
    import keras

    _, x, y = digits_train
    init = keras.initializers.GlorotUniform(seed=SEED)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(100, activation="relu", kernel_initializer=init, name="hidden"),
            keras.layers.Dense(10, activation="softmax", kernel_initializer=init, name="probs"),
        ],
        name="mlp",
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0, shuffle=False)
    path = tmp_path_factory.mktemp("mlp") / "mlp.keras"
    clean = keras.Sequential.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)
    return path


def _calibration_accuracy(path) -> float:
    from edgepack.artifact import ModelFormat
    from edgepack.modelio import load_keras

    with np.load(DIGITS_NPZ) as data:
        x, y = data["x"], data["y"]
    return float(np.mean(np.argmax(load_keras(path, ModelFormat.KERAS)(x).numpy(), axis=1) == y))


def _zeroed(model, plan, keep):
    """A copy of ``model`` with the removed channels zeroed: it computes what the cut model does."""
    from edgepack.compress.model_io import copy_keras

    copy = copy_keras(model)
    for root, kept in keep.items():
        for producer in plan.groups[root].producers:
            layer = copy.get_layer(producer)
            arrays = layer.get_weights()
            drop = np.setdiff1d(np.arange(arrays[0].shape[-1]), kept)
            arrays[0][..., drop] = 0
            if len(arrays) > 1:
                arrays[1][drop] = 0
            layer.set_weights(arrays)
    return copy


def _check_equivalent(model, sparsity=0.5):
    """Prune ``model`` structurally; it must compute exactly what ``model`` with the cut channels zeroed does."""
    from edgepack.compress.graph import analyze
    from edgepack.compress.prune_structured import keep_indices, prune_structured

    pruned, changes = prune_structured(model, sparsity=sparsity)
    plan = analyze(model)
    keep = keep_indices(model, plan, sparsity)
    x = np.random.default_rng(SEED).random((4, *model.inputs[0].shape[1:]), dtype=np.float32)
    np.testing.assert_allclose(pruned(x).numpy(), _zeroed(model, plan, keep)(x).numpy(), rtol=1e-5, atol=1e-5)
    return pruned, changes


def test_structured_dense_100_becomes_50(mlp_path, tmp_path):
    from edgepack.artifact import ModelFormat
    from edgepack.compress import prune
    from edgepack.modelio import load_keras

    out = tmp_path / "pruned.keras"
    report = prune(mlp_path, out=out, sparsity=0.5, structured=True, data=DIGITS_NPZ, epochs=0, latency=False)
    pruned = load_keras(out, ModelFormat.KERAS)
    assert pruned.get_layer("hidden").units == 50
    assert pruned.get_layer("hidden").get_weights()[0].shape == (64, 50)
    assert pruned.get_layer("probs").get_weights()[0].shape == (50, 10)  # the next layer's inputs are cut
    hidden = next(layer for layer in report.layers if layer.name == "hidden")
    assert (hidden.channels_before, hidden.channels_after) == (100, 50)
    assert report.after.params < 0.55 * report.before.params
    assert report.after.macs < 0.55 * report.before.macs
    assert report.after.file_bytes < report.before.file_bytes
    assert report.settings == {"sparsity": 0.5, "structured": True, "epochs": 0, "exclude": []}
    assert report.training is None and report.after.accuracy > 0.5


def test_structured_cut_is_exact_through_conv_flatten_dense():
    import keras
    from keras import layers

    init = keras.initializers.GlorotUniform(seed=SEED)
    inputs = keras.Input((6, 6, 2), name="x")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init, name="c1")(inputs)
    h = layers.Conv2D(6, 3, activation="relu", kernel_initializer=init, name="c2")(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flat")(h)
    h = layers.Dense(12, activation="relu", kernel_initializer=init, name="fc")(h)
    model = keras.Model(inputs, layers.Dense(3, kernel_initializer=init, name="out")(h))
    pruned, _ = _check_equivalent(model)
    assert pruned.get_layer("c1").filters == 4 and pruned.get_layer("c2").filters == 3
    assert pruned.get_layer("fc").get_weights()[0].shape == (2 * 2 * 3, 6)  # Flatten rows of kept channels
    assert pruned.get_layer("out").get_weights()[0].shape == (6, 3)


def test_residual_add_branches_are_cut_together():
    import keras
    from keras import layers

    init = keras.initializers.GlorotUniform(seed=SEED)
    inputs = keras.Input((6, 6, 3), name="x")
    a = layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init, name="a")(inputs)
    b = layers.Conv2D(8, 3, padding="same", kernel_initializer=init, name="b")(a)
    h = layers.ReLU(name="relu")(layers.Add(name="add")([a, b]))
    skip = layers.Conv2D(3, 1, kernel_initializer=init, name="to_input")(h)
    h = layers.Add(name="add_input")([inputs, skip])  # joins the model input: these channels must stay
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, layers.Dense(4, kernel_initializer=init, name="out")(h))
    pruned, changes = _check_equivalent(model)
    assert pruned.get_layer("a").filters == pruned.get_layer("b").filters == 4
    assert pruned.get_layer("b").get_weights()[0].shape == (3, 3, 4, 4)
    assert pruned.get_layer("to_input").get_weights()[0].shape == (1, 1, 4, 3)  # input rows cut, outputs kept
    assert {c.name for c in changes if c.channels_before != c.channels_after} == {"a", "b"}


def test_structured_cnn_with_batchnorm_and_finetune(digits_keras, digits_train, tmp_path):
    from edgepack.artifact import ModelFormat
    from edgepack.compress import prune
    from edgepack.modelio import load_keras

    out = tmp_path / "pruned.keras"
    lines = []
    report = prune(
        digits_keras, out=out, sparsity=0.5, structured=True, data=digits_train[0], epochs=3, progress=lines.append
    )
    pruned = load_keras(out, ModelFormat.KERAS)
    assert pruned.get_layer("conv0").filters == 8 and pruned.get_layer("conv1").filters == 16
    assert [w.shape for w in pruned.get_layer("bn0").get_weights()] == [(8,)] * 4  # BatchNorm cut too
    assert pruned.get_layer("conv1").get_weights()[0].shape == (3, 3, 8, 16)
    assert pruned.get_layer("probs").get_weights()[0].shape == (4 * 4 * 16, 10)
    assert report.after.params < 0.5 * report.before.params
    assert report.after.macs < 0.3 * report.before.macs
    assert report.training.epochs_run == 3 and report.training.labels and len(lines) == 3
    # Judged on samples neither model was trained on: within a few points of the original.
    assert _calibration_accuracy(out) >= _calibration_accuracy(digits_keras) - 0.04
    assert report.latency is not None and report.latency.runtime == "litert" and report.latency.after_ms > 0


def test_refuses_what_it_cannot_cut_naming_the_layer():
    import keras
    from keras import layers

    from edgepack.compress.prune_structured import prune_structured

    inputs = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 3, name="left")(inputs)
    b = layers.Conv2D(4, 3, name="right")(inputs)
    h = layers.Concatenate(name="join")([a, b])
    model = keras.Model(inputs, layers.Dense(2, name="out")(layers.Flatten()(h)))
    with pytest.raises(ModelError, match=r"'join' \(Concatenate\).*--exclude left,right"):
        prune_structured(model, sparsity=0.5)
    kept, _ = prune_structured(model, sparsity=0.5, exclude=("left", "right"))  # the hint works
    assert kept.get_layer("left").filters == 4

    h = layers.Conv2D(8, 3, name="first")(inputs)
    grouped = keras.Model(inputs, layers.Conv2D(4, 1, groups=4, name="grouped")(h))
    with pytest.raises(ModelError, match=r"'grouped' \(Conv2D\): grouped convolution"):
        prune_structured(grouped, sparsity=0.5)
    with pytest.raises(ModelError, match=r"'reshape' \(Reshape\)"):
        prune_structured(_reshape_model(), sparsity=0.5)


def _reshape_model():
    import keras
    from keras import layers

    inputs = keras.Input((6, 6, 1))
    h = layers.Reshape((16, 8), name="reshape")(layers.Conv2D(8, 3, name="c")(inputs))
    return keras.Model(inputs, layers.Dense(2)(h))


def test_unstructured_finetune_keeps_pruned_weights_at_zero(digits_keras, digits_train, tmp_path):
    from edgepack.compress import prune
    from edgepack.compress.clip import magnitude_masks

    original = _kernels(digits_keras)
    masks = magnitude_masks(original, sparsity=0.5, scope="layer")
    out = tmp_path / "sparse.keras"
    report = prune(digits_keras, out=out, sparsity=0.5, data=digits_train[0], epochs=2, latency=False)
    tuned = _kernels(out)
    for name, mask in masks.items():
        assert np.all(tuned[name][~mask] == 0)  # exactly zero where pruned
        assert not np.allclose(tuned[name][mask], original[name][mask])  # the rest was fine-tuned
    assert report.after.sparsity == pytest.approx(0.49, abs=0.01)
    assert report.after.params == report.before.params and report.after.macs == report.before.macs
    assert report.training.epochs_run == 2 and report.method == "prune"
    assert _calibration_accuracy(out) >= _calibration_accuracy(digits_keras) - 0.03


def _kernels(path):
    from edgepack.artifact import ModelFormat
    from edgepack.modelio import load_keras

    model = load_keras(path, ModelFormat.KERAS)
    return {w.path: np.asarray(w) for w in model.weights if w.path.endswith("kernel")}


def test_prune_refuses_onnx(digits_onnx, tmp_path):
    from edgepack.compress import prune

    with pytest.raises(ModelError, match="clip"):
        prune(digits_onnx, out=tmp_path / "p.onnx", sparsity=0.5, structured=True)


def test_pipeline_step_prune_structured(mlp_path, digits_train, tmp_path):
    from edgepack.compress import pipeline_step

    settings = {"prune": {"sparsity": 0.5, "structured": True, "epochs": 1, "learning_rate": 5e-4}}
    path, entry = pipeline_step(mlp_path, "keras", settings=settings, data=digits_train[0], workdir=tmp_path / "w")
    assert path == tmp_path / "w" / "compressed.keras" and path.is_file()
    assert entry["method"] == "prune-structured" and entry["training"]["epochs_run"] == 1
    assert entry["after"]["macs"] < entry["before"]["macs"]
    assert entry["latency"]["runtime"] == "litert" and entry["latency"]["threads"] == 1
    with pytest.raises(UsageError, match="bad prune settings"):
        pipeline_step(
            mlp_path, "keras", settings={"prune": {"sparsity": 0.5, "colour": 1}}, data=None, workdir=tmp_path
        )
