"""LiteRT quantization end to end on trained models: int8/fp16/dynamic, the gate, diagnosis and repair.

Random weights say nothing about int8 accuracy, so every model here is trained: the shipped
digits CNN, and a small MLP trained in a fixture on scikit-learn's bundled 8x8 digits. The
fragile model is that MLP with an outlier weight planted in layer ``hidden``: a huge weight on
the top-left pixel, which is 0 in every digits image, so the float model is unchanged while the
per-channel int8 weight scales of ``hidden`` become so coarse that every other weight rounds to 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack.errors import AccuracyError, ConversionError

pytestmark = pytest.mark.tflite  # the tflite extra is part of dev: a missing framework fails, not skips

OUTLIER = 1e4
TRAIN_ROWS = 1400


@pytest.fixture(scope="module")
def sk_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits: ``x`` float32 ``(N, 8, 8, 1)`` in [0, 1], ``y`` int64."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    return (digits.images / 16.0).astype(np.float32)[..., None], digits.target.astype(np.int64)


@pytest.fixture(scope="module")
def mlp_paths(sk_digits, tmp_path_factory) -> dict[str, Path]:
    """A trained MLP (about 300k weights) and its fragile twin, saved as .keras."""
    import keras

    x, y = sk_digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Flatten(name="flatten")(inputs)
    h = keras.layers.Dense(512, activation="relu", name="hidden")(h)
    h = keras.layers.Dense(512, activation="relu", name="hidden2")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:TRAIN_ROWS], y[:TRAIN_ROWS], epochs=12, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("mlp")
    model.save(folder / "mlp.keras")
    assert np.all(x[:, 0, 0, 0] == 0)  # the pixel the outlier multiplies
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[0, :] = OUTLIER
    model.get_layer("hidden").set_weights([kernel, bias])
    model.save(folder / "fragile.keras")
    return {"mlp": folder / "mlp.keras", "fragile": folder / "fragile.keras"}


def _run(model: Path, x, y, tmp_path: Path, *, allow_drop: bool = False, **overrides):
    """Open, split, convert to float .tflite and quantize for rpi4-arm64 with profile ``overrides``."""
    from edgepack.calibration import dataset_from_arrays
    from edgepack.convert import ConvertOptions, convert
    from edgepack.profiles import load_profile
    from edgepack.quantize import quantize_for_target
    from edgepack.source import open_source

    source = open_source(model, batch=1)
    profile = load_profile("rpi4-arm64", overrides={"precision": "int8", "latency": {"runs": 5}, **overrides})
    data = dataset_from_arrays({source.inputs[0].name: x}, source.inputs, labels=y)
    calibration, heldout = data.split(profile.quantize.holdout, seed=0)
    float_tflite = convert(source, profile.format, tmp_path / "convert", ConvertOptions())
    artifact, section = quantize_for_target(
        source=source,
        pre=source,
        float_artifact=float_tflite,
        profile=profile,
        calibration=calibration,
        heldout=heldout,
        workdir=tmp_path / "quantize",
        allow_drop=allow_drop,
        seed=0,
    )
    json.dumps(section)  # everything is JSON-serialisable
    return artifact, section, float_tflite


def _tensor_dtypes(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for detail in Interpreter(model_path=str(path)).get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def _io_dtypes(path: Path) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    names = [np.dtype(d["dtype"]).name for d in interp.get_input_details()]
    return names, [np.dtype(d["dtype"]).name for d in interp.get_output_details()]


def test_digits_int8_passes_the_gate_with_labels(digits_keras, digits_data, tmp_path):
    x, y = digits_data
    artifact, section, float_tflite = _run(digits_keras, x, y, tmp_path)
    gate = section["gate"]
    assert gate["passed"] and gate["label_output"] == "probs"
    assert gate["float_accuracy"] >= 0.95
    assert gate["quantized_accuracy"] >= 0.95
    assert gate["accuracy_drop"] == pytest.approx(gate["float_accuracy"] - gate["quantized_accuracy"])
    assert gate["outputs"][0]["sqnr_db"] > 25 and gate["outputs"][0]["top1_agreement"] >= 0.97
    assert _tensor_dtypes(artifact.path).get("int8", 0) >= 8  # weights and activations are int8
    assert _io_dtypes(artifact.path) == (["float32"], ["float32"])  # io = "float" in rpi4-arm64
    assert section["repaired"]["float_layers"] == []
    assert section["settings"]["calibration_samples"] == 128 and section["settings"]["holdout_samples"] == 75
    assert section["size"]["quantized_bytes"] < section["size"]["float_bytes"] / 2
    layers = section["layers"]
    assert layers and {e["op_type"] for e in layers} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert [e["sqnr_db"] for e in layers] == sorted(e["sqnr_db"] for e in layers)
    latency = section["latency"]
    assert latency["float_ms"] > 0 and latency["int8_ms"] > 0 and latency["threads"] == 1
    assert latency["ratio"] == pytest.approx(latency["float_ms"] / latency["int8_ms"], rel=1e-2)
    assert "proxy, not the device" in latency["label"]


def test_int8_is_four_times_smaller_with_int8_io(mlp_paths, sk_digits, tmp_path):
    x, y = sk_digits
    artifact, section, float_tflite = _run(
        mlp_paths["mlp"], x[TRAIN_ROWS:], y[TRAIN_ROWS:], tmp_path, quantize={"io": "int8"}
    )
    assert section["gate"]["passed"]
    assert float_tflite.size_bytes() / artifact.size_bytes() > 3.5
    assert _io_dtypes(artifact.path) == (["int8"], ["int8"])
    params = list(section["io"].values())
    assert len(params) == 2 and all(p["dtype"] == "int8" for p in params)
    assert all(p["scale"] > 0 and -128 <= p["zero_point"] <= 127 for p in params)
    assert section["settings"]["io"] == "int8"


@pytest.mark.parametrize("precision", ["fp16", "dynamic"])
def test_fp16_and_dynamic_modes_make_working_models(precision, mlp_paths, sk_digits, tmp_path):
    x, y = sk_digits
    artifact, section, float_tflite = _run(
        mlp_paths["mlp"], x[TRAIN_ROWS:], y[TRAIN_ROWS:], tmp_path, precision=precision
    )
    assert section["mode"] == precision and section["gate"]["passed"]
    assert section["gate"]["outputs"][0]["top1_agreement"] >= 0.99
    assert _io_dtypes(artifact.path) == (["float32"], ["float32"])
    dtypes = _tensor_dtypes(artifact.path)
    assert dtypes.get("float16" if precision == "fp16" else "int8", 0) >= 3  # the weights
    assert float_tflite.size_bytes() / artifact.size_bytes() > (1.8 if precision == "fp16" else 3.5)
    assert section["layers"] == []  # per-layer errors are an int8 matter


def test_fragile_layer_is_diagnosed_and_kept_in_float(mlp_paths, sk_digits, tmp_path):
    x, y = sk_digits
    artifact, section, _ = _run(mlp_paths["fragile"], x[TRAIN_ROWS:], y[TRAIN_ROWS:], tmp_path)
    worst = section["layers"][0]
    assert "/hidden" in worst["name"] and worst["op_type"] == "FULLY_CONNECTED" and worst["sqnr_db"] < 3
    attempts = section["repaired"]["attempts"]
    assert [a["float_layers"] for a in attempts] == [0, 1]
    assert not attempts[0]["passed"] and attempts[0]["quantized_accuracy"] < 0.5
    assert attempts[1]["passed"] and attempts[1]["excluded"] == [worst["name"]]
    assert section["repaired"]["float_layers"] == [worst["name"]]
    assert artifact.meta["excluded"] == [worst["name"]]
    assert attempts[1]["size_bytes"] > attempts[0]["size_bytes"]  # the float layer costs size
    gate = section["gate"]
    assert gate["passed"] and gate["quantized_accuracy"] >= 0.99 * gate["float_accuracy"] - 0.02


def test_unrepairable_model_raises_naming_the_culprits(mlp_paths, sk_digits, tmp_path):
    x, y = sk_digits
    with pytest.raises(AccuracyError) as caught:
        _run(mlp_paths["fragile"], x[TRAIN_ROWS:], y[TRAIN_ROWS:], tmp_path, quantize={"max_float_layers": 0})
    message = str(caught.value)
    assert "/hidden" in message and "FULLY_CONNECTED" in message and "SQNR" in message
    assert "--allow-accuracy-drop" in message


def test_allow_drop_returns_the_model_with_the_drop_reported(mlp_paths, sk_digits, tmp_path):
    x, y = sk_digits
    artifact, section, _ = _run(
        mlp_paths["fragile"],
        x[TRAIN_ROWS:],
        y[TRAIN_ROWS:],
        tmp_path,
        allow_drop=True,
        quantize={"max_float_layers": 0},
    )
    gate = section["gate"]
    assert not gate["passed"] and gate["accuracy_drop"] > 0.5 and gate["failures"]
    assert any("ACCURACY BELOW BUDGET" in w for w in section["warnings"])
    assert artifact.path.is_file()


def test_tflite_source_cannot_be_requantized(tiny_tflite_path, tmp_path):
    from edgepack.calibration import dataset_from_arrays
    from edgepack.profiles import load_profile
    from edgepack.quantize import quantize_for_target
    from edgepack.source import open_source

    source = open_source(tiny_tflite_path, batch=1)
    data = dataset_from_arrays(
        {source.inputs[0].name: np.zeros((8, *source.inputs[0].shape[1:]), np.float32)}, source.inputs
    )
    calibration, heldout = data.split(0.25)
    with pytest.raises(ConversionError, match="cannot be re-quantized") as caught:
        quantize_for_target(
            source=source,
            pre=source,
            float_artifact=source,
            profile=load_profile("rpi4-arm64"),
            calibration=calibration,
            heldout=heldout,
            workdir=tmp_path,
        )
    assert "Keras, SavedModel or ONNX" in str(caught.value)


@pytest.mark.slow
def test_onnx_source_is_quantized_from_the_onnx2tf_savedmodel(digits_onnx, digits_data, tmp_path):
    x, y = digits_data
    artifact, section, float_tflite = _run(digits_onnx, x, y, tmp_path, quantize={"io": "int8"})
    assert (Path(float_tflite.meta["saved_model"]) / "saved_model.pb").is_file()
    assert section["gate"]["passed"] and section["gate"]["quantized_accuracy"] >= 0.95
    assert _io_dtypes(artifact.path) == (["int8"], ["int8"])
    assert section["layers"] and section["layers"][0]["op_type"] in {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"}
