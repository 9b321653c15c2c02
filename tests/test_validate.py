"""Validation: metrics on hand-computed arrays, and source-vs-artifact runs on a tiny seeded model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.errors import AccuracyError, DataError, ModelError
from edgepack.profiles import Accuracy
from edgepack.validate import (
    OutputMetrics,
    ValidationReport,
    check_metrics,
    compare_outputs,
    cosine_similarity,
    top1_agreement,
    validate,
)

INPUT = TensorSpec("input", (1, 8, 8, 1))
OUTPUT = TensorSpec("dense", (1, 10))
TOLERANCE = Accuracy()


# --------------------------------------------------------------------------- metrics by hand


def test_cosine_of_orthogonal_rows_is_zero_and_of_identical_is_one():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 3.0], [0.0, 5.0]])  # row 0 orthogonal, row 1 parallel
    assert cosine_similarity(a, b) == pytest.approx(0.5)
    assert cosine_similarity(a[:1], b[:1]) == pytest.approx(0.0)
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)


def test_cosine_of_zero_vectors():
    zeros = np.zeros((2, 3))
    assert cosine_similarity(zeros, zeros) == 1.0
    assert cosine_similarity(zeros, np.ones((2, 3))) == 0.0


def test_top1_agreement_counts_rows():
    ref = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    cand = np.array([[0.8, 0.2, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.4, 0.5, 0.1]])
    assert top1_agreement(ref, cand) == 0.75
    assert top1_agreement(ref[:, :1], cand[:, :1]) is None  # one column: not a classifier
    assert top1_agreement(ref.reshape(-1), cand.reshape(-1)) is None


def test_compare_outputs_figures():
    ref = np.array([[1.0, 2.0, 3.0, 4.0]])
    cand = ref + np.array([[0.0, 0.5, 0.0, -0.25]])
    (m,) = compare_outputs([ref], [cand], ["y"])
    assert m.name == "y" and m.shape == (1, 4)
    assert m.max_abs_error == pytest.approx(0.5)
    assert m.mean_abs_error == pytest.approx(0.75 / 4)
    assert m.sqnr_db == pytest.approx(10 * math.log10(30 / 0.3125))
    assert m.top1_agreement == 1.0
    (same,) = compare_outputs([ref], [ref.copy()], ["y"])
    assert same.max_abs_error == 0 and same.sqnr_db == math.inf and same.cosine == pytest.approx(1.0)
    assert json.loads(json.dumps(same.to_dict()))["sqnr_db"] == "inf"


def test_compare_outputs_transposes_nchw_outputs_back():
    ref = np.random.default_rng(0).random((2, 5, 6, 3))
    (m,) = compare_outputs([ref], [ref.transpose(0, 3, 1, 2)], ["feat"])
    assert m.max_abs_error == 0


def test_compare_outputs_rejects_unmatched_shapes_and_counts():
    with pytest.raises(ModelError, match="'y'.*\\[1, 5\\].*\\[1, 4\\]"):
        compare_outputs([np.zeros((1, 4))], [np.zeros((1, 5))], ["y"])
    with pytest.raises(ModelError, match="2 output"):
        compare_outputs([np.zeros(1), np.zeros(1)], [np.zeros(1)], ["a", "b"])


def test_nan_output_fails():
    (m,) = compare_outputs([np.ones((1, 3))], [np.array([[1.0, np.nan, 1.0]])], ["y"])
    assert not m.finite
    assert check_metrics([m], TOLERANCE) == ["output 'y' has NaN or inf values where the source's are finite"]


def _metrics(name: str, max_abs: float, cosine: float, top1: float | None = None) -> OutputMetrics:
    return OutputMetrics(name, (8, 10), max_abs, max_abs / 10, cosine, 30.0, top1)


def test_tolerance_needs_both_abs_and_cosine_to_fail():
    tol = Accuracy(max_abs_error=1e-3, min_cosine=0.999, min_top1_agreement=0.9)
    assert check_metrics([_metrics("a", 0.5, 0.9999)], tol) == []  # large abs, direction intact (fp16)
    assert check_metrics([_metrics("a", 1e-4, 0.5)], tol) == []  # tiny abs on a near-zero output
    assert check_metrics([_metrics("a", 0.5, 0.99, top1=1.0)], tol) != []
    assert check_metrics([_metrics("a", 0.0, 1.0, top1=0.875)], tol) != []  # top-1 alone fails


def test_every_failure_is_collected_and_reported_once():
    tol = Accuracy(max_abs_error=1e-3, min_cosine=0.999, min_top1_agreement=0.9)
    failures = check_metrics([_metrics("a", 0.5, 0.99, top1=0.5), _metrics("b", 0.2, 0.9)], tol)
    assert len(failures) == 3
    report = ValidationReport(
        outputs=(),
        passed=False,
        failures=tuple(failures),
        tolerance=tol.model_dump(),
        reference_runtime="tensorflow",
        reference_version="x",
        candidate_runtime="litert",
        candidate_version="y",
        precision="f32",
        samples=8,
        inputs="given",
    )
    with pytest.raises(AccuracyError) as info:
        report.raise_if_failed()
    message = info.value.one_line()
    assert "\n" not in str(info.value)
    for text in ("output 'a'", "output 'b'", "top-1 agreement 50.00% < 90.00%", "0.5 > 0.001", "--allow-accuracy-drop"):
        assert text in message


# --------------------------------------------------------------------------- validate on real runtimes


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Artifact]:
    """A seeded Keras model, its ONNX (NHWC and NCHW input), a perturbed ONNX, and an OpenVINO IR."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnx import numpy_helper

    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), batch_size=1, name="input")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="dense")(x))
    model.save(folder / "m.keras")
    spec = (tf.TensorSpec((1, 8, 8, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(folder / "m.onnx"))
    tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=17, output_path=str(folder / "nchw.onnx"), inputs_as_nchw=["input"]
    )
    ov.save_model(ov.Core().read_model(folder / "m.onnx"), folder / "m.xml", compress_to_fp16=False)
    # Scale the dense layer's weight matrix: same graph, wrong numbers.
    dense = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).shape == (144, 10))
    dense.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(dense) * 3.0, dense.name))
    onnx.save(proto, folder / "bad.onnx")

    def art(name: str, fmt: ModelFormat, inputs=(INPUT,)) -> Artifact:
        return Artifact.from_file(folder / name, fmt, inputs, (OUTPUT,))

    return {
        "keras": art("m.keras", ModelFormat.KERAS),
        "onnx": art("m.onnx", ModelFormat.ONNX),
        "nchw": art("nchw.onnx", ModelFormat.ONNX, (TensorSpec("input", (1, 1, 8, 8)),)),
        "bad": art("bad.onnx", ModelFormat.ONNX),
        "openvino": art("m.xml", ModelFormat.OPENVINO),
    }


def test_faithful_onnx_passes(models):
    report = validate(models["keras"], models["onnx"], None, TOLERANCE, seed=3, count=4)
    assert report.passed and report.failures == ()
    report.raise_if_failed()
    (m,) = report.outputs
    assert m.name == "dense" and m.shape == (4, 10) and m.max_abs_error < 1e-5 and m.top1_agreement == 1.0
    assert report.samples == 4 and report.inputs == "random (seed 3)"
    assert (report.reference_runtime, report.candidate_runtime) == ("tensorflow", "onnxruntime")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["outputs"][0]["name"] == "dense"
    assert (data["reference_runtime"], data["candidate_runtime"]) == ("tensorflow", "onnxruntime")


def test_validation_is_seeded(models):
    first = validate(models["keras"], models["onnx"], None, TOLERANCE, seed=5, count=2)
    second = validate(models["keras"], models["onnx"], None, TOLERANCE, seed=5, count=2)
    assert first.outputs == second.outputs


def test_perturbed_artifact_fails_and_names_the_output(models):
    report = validate(models["keras"], models["bad"], None, TOLERANCE, count=4)
    assert not report.passed
    assert report.failures and all("'dense'" in f for f in report.failures)
    with pytest.raises(AccuracyError, match="output 'dense'.*max_abs_error .* > 0.001") as info:
        report.raise_if_failed()
    assert info.value.exit_code == 8


def test_nchw_artifact_gets_transposed_inputs(models):
    report = validate(models["keras"], models["nchw"], None, TOLERANCE, count=2)
    assert report.passed, report.failures
    assert report.input_permutations == ((0, 3, 1, 2),)
    assert report.outputs[0].max_abs_error < 1e-5


def test_openvino_validation_states_precision(models):
    report = validate(models["keras"], models["openvino"], None, TOLERANCE, count=2)
    assert report.passed, report.failures
    assert report.precision == "f32" and report.to_dict()["precision"] == "f32"


def test_given_samples_are_used_and_checked(models):
    rng = np.random.default_rng(9)
    samples = [[rng.random((1, 8, 8, 1))] for _ in range(3)]  # float64 is cast to the model's float32
    report = validate(models["keras"], models["onnx"], samples, TOLERANCE)
    assert report.samples == 3 and report.inputs == "given" and report.outputs[0].shape == (3, 10)
    with pytest.raises(DataError, match="sample 1.*\\[1, 8, 8, 3\\]"):
        validate(models["keras"], models["onnx"], [samples[0], [np.zeros((1, 8, 8, 3))]], TOLERANCE)
    with pytest.raises(DataError, match="no validation samples"):
        validate(models["keras"], models["onnx"], [], TOLERANCE)


def test_unmatched_inputs_raise_model_error(models, tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["dense"])],
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6, 6, 1])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, [1, 36])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "other.onnx")
    other = Artifact.from_file(tmp_path / "other.onnx", ModelFormat.ONNX, (TensorSpec("input", (1, 6, 6, 1)),), ())
    with pytest.raises(ModelError, match=r"\[1, 6, 6, 1\].*\[1, 8, 8, 1\]"):
        validate(models["keras"], other, None, TOLERANCE, count=1)
