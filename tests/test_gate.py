"""The int8 accuracy gate's budget rule, the repair schedule and loop, the speed check, and QuantOptions.

Pure numpy: no framework is imported, so these run in milliseconds.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from edgepack.errors import EdgepackError, LatencyBudgetError, UsageError
from edgepack.profiles import Accuracy, Precision, Runtime, load_profile
from edgepack.quantize import BACKENDS, LayerError, QuantOptions
from edgepack.quantize.gate import allowed_misses, judge
from edgepack.quantize.repair import Attempt, best, repair, schedule
from edgepack.quantize.speed import check_speed

BUDGET = Accuracy(int8_min_relative_accuracy=0.99, int8_min_top1_agreement=0.99)


def _logits(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Confident one-hot-ish scores whose argmax is ``labels``."""
    out = np.full((len(labels), classes), 0.01, np.float32)
    out[np.arange(len(labels)), labels] = 0.9
    return out


def _flip(labels: np.ndarray, rows: list[int], classes: int = 10) -> np.ndarray:
    flipped = labels.copy()
    flipped[rows] = (flipped[rows] + 1) % classes
    return flipped


# --------------------------------------------------------------------------- budget rule


def test_labels_rule_compares_task_accuracy():
    labels = np.arange(200) % 10
    float_pred = _flip(labels, [0, 1])  # 198 / 200 right
    quant_pred = _flip(labels, [0, 1, 2, 3, 4])  # 195 / 200 right: 3 more wrong, 0.99 of 198 allows 2
    report = judge(["probs"], [_logits(float_pred)], [_logits(quant_pred)], labels, BUDGET)
    assert not report.passed
    assert report.float_accuracy == pytest.approx(0.99) and report.quantized_accuracy == pytest.approx(0.975)
    assert report.accuracy_drop == pytest.approx(0.015)
    (check,) = report.checks
    assert check.kind == "relative_accuracy" and check.value == pytest.approx(195 / 198)
    assert check.threshold == pytest.approx(196 / 198) and check.budget == 0.99
    assert "relative accuracy" in report.failures[0]

    two_more = _flip(labels, [0, 1, 2, 3])  # 196 / 200: exactly the allowance
    assert judge(["probs"], [_logits(float_pred)], [_logits(two_more)], labels, BUDGET).passed


def test_labels_can_forgive_what_agreement_would_not():
    """Int8 may fix as many samples as it breaks: task accuracy is what the labels budget judges."""
    labels = np.arange(100) % 10
    float_pred = _flip(labels, [0, 1, 2])
    quant_pred = _flip(labels, [3, 4, 5])  # 6 disagreements, same accuracy
    report = judge(["probs"], [_logits(float_pred)], [_logits(quant_pred)], labels, BUDGET)
    assert report.passed and report.accuracy_drop == 0
    assert report.outputs[0].top1_agreement == pytest.approx(0.94)


def test_whole_sample_rounding_lets_one_sample_flip():
    assert allowed_misses(74, 0.99) == 1
    assert allowed_misses(100, 0.99) == 1  # not 2: (1 - 0.99) * 100 is 1.0000000000000009
    assert allowed_misses(300, 0.99) == 3
    assert allowed_misses(75, 1.0) == 0
    labels = np.arange(75) % 10
    float_pred = _flip(labels, [0])  # 74 right
    quant_pred = _flip(labels, [0, 1])  # 73 right
    report = judge(["probs"], [_logits(float_pred)], [_logits(quant_pred)], labels, BUDGET)
    assert report.passed
    assert report.notes and "cannot resolve" in report.notes[0]
    strict = Accuracy(int8_min_relative_accuracy=1.0)
    assert not judge(["probs"], [_logits(float_pred)], [_logits(quant_pred)], labels, strict).passed


def test_without_labels_top1_agreement_is_judged():
    ref = np.arange(300) % 10
    close = judge(["probs"], [_logits(ref)], [_logits(_flip(ref, [0, 1, 2]))], None, BUDGET)
    assert close.passed and close.checks[0].kind == "top1_agreement"
    assert close.float_accuracy is None and close.accuracy_drop is None
    far = judge(["probs"], [_logits(ref)], [_logits(_flip(ref, [0, 1, 2, 3]))], None, BUDGET)
    assert not far.passed and "top1 agreement" in far.failures[0]


def test_non_classifier_outputs_are_judged_on_cosine():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4, 4, 8)).astype(np.float32)
    small = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)  # cosine ~0.999
    large = ref + rng.normal(scale=0.5, size=ref.shape).astype(np.float32)  # cosine ~0.9
    ok = judge(["features"], [ref], [small], None, BUDGET)
    assert ok.passed and ok.checks[0].kind == "cosine" and ok.outputs[0].sqnr_db > 20
    bad = judge(["features"], [ref], [large], None, BUDGET)
    assert not bad.passed and bad.checks[0].value < 0.99


def test_labels_score_the_classifier_and_other_outputs_keep_their_own_rule():
    labels = np.arange(100) % 10
    rng = np.random.default_rng(1)
    boxes = rng.normal(size=(100, 4)).astype(np.float32)  # 2-D but 4 columns: cannot hold 10 classes
    features = rng.normal(size=(100, 8, 4)).astype(np.float32)
    report = judge(
        ["boxes", "features", "probs"],
        [boxes, features, _logits(labels)],
        [boxes, features * 0.5 - 1, _logits(labels)],
        labels,
        BUDGET,
    )
    kinds = {c.output: c.kind for c in report.checks}
    assert kinds == {"boxes": "top1_agreement", "features": "cosine", "probs": "relative_accuracy"}
    assert report.label_output == "probs" and not report.passed
    assert report.failures == (report.checks[1].describe(),)


def test_nan_output_always_fails():
    labels = np.arange(20) % 10
    broken = _logits(labels)
    broken[3, 2] = np.nan
    report = judge(["probs"], [_logits(labels)], [broken], labels, BUDGET)
    assert not report.passed and report.checks[0].kind == "finite" and "NaN" in report.failures[0]
    assert report.to_dict()["passed"] is False


def test_report_to_dict_is_plain_json():
    import json

    labels = np.arange(40) % 10
    data = judge(["probs"], [_logits(labels)], [_logits(labels)], labels, BUDGET).to_dict()
    assert json.loads(json.dumps(data))["checks"][0]["budget"] == 0.99
    assert data["outputs"][0]["sqnr_db"] == "inf"  # identical outputs; JSON has no inf


# --------------------------------------------------------------------------- repair


def test_schedule_doubles_up_to_the_cap():
    assert schedule(8, 20) == [1, 2, 4, 8]
    assert schedule(6, 20) == [1, 2, 4, 6]
    assert schedule(8, 3) == [1, 2, 3]
    assert schedule(1, 5) == [1]
    assert schedule(0, 5) == [] and schedule(4, 0) == []


def _gate(passed: bool, margin: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(passed=passed, margin=margin)


def _errors(*names: str) -> list[LayerError]:
    return [LayerError(name, "CONV_2D", sqnr_db=float(i), mse=1.0) for i, name in enumerate(names)]


def test_repair_grows_the_float_set_until_the_gate_passes():
    tried = []

    def attempt(exclude):
        tried.append(exclude)
        return Attempt(exclude, _gate(len(exclude) >= 3), artifact=None)

    made, failed = repair(_errors("a", "b", "c", "d", "e"), attempt, max_float_layers=8)
    assert tried == [("a",), ("a", "b"), ("a", "b", "c", "d")]
    assert made[-1].gate.passed and failed == []
    assert best(made).excluded == ("a", "b", "c", "d")


def test_repair_skips_attempts_that_fail_to_quantize_and_stops_at_the_cap():
    def attempt(exclude):
        if len(exclude) == 2:
            raise EdgepackError("converter said no")
        return Attempt(exclude, _gate(False, margin=-1 / len(exclude)), artifact=None)

    made, failed = repair(_errors("a", "b", "c"), attempt, max_float_layers=3)
    assert [len(a.excluded) for a in made] == [1, 3]
    assert len(failed) == 1 and "2 float layer(s)" in failed[0] and "converter said no" in failed[0]
    assert best(made).excluded == ("a", "b", "c")  # closest to the budget


def test_best_prefers_a_passing_attempt_then_the_smallest_on_ties():
    none = Attempt((), _gate(False, -0.5), artifact=None)
    one = Attempt(("a",), _gate(False, -0.1), artifact=None)
    two = Attempt(("a", "b"), _gate(False, -0.1), artifact=None)
    assert best([none, one, two]) is one
    ok = Attempt(("a", "b"), _gate(True, 0.0), artifact=None)
    assert best([none, ok]) is ok


# --------------------------------------------------------------------------- speed


def test_int8_that_is_not_faster_warns_or_fails():
    slow = {"ratio": 0.8, "int8_ms": 1.25, "float_ms": 1.0, "runtime": "litert 2.3.0", "threads": 1}
    (warning,) = check_speed(slow, mode="int8", must_be_faster=False)
    assert "NOT FASTER" in warning and "1.250 ms" in warning
    with pytest.raises(LatencyBudgetError, match="NOT FASTER"):
        check_speed(slow, mode="int8", must_be_faster=True)
    assert check_speed({**slow, "ratio": 1.9}, mode="int8", must_be_faster=True) == []
    assert check_speed(slow, mode="fp16", must_be_faster=True) == []  # fp16 is about size, not speed


# --------------------------------------------------------------------------- options and table


def test_options_come_from_the_profile():
    profile = load_profile("android-arm64", overrides={"precision": "int8", "quantize": {"samples": 64}})
    options = QuantOptions.from_profile(profile, trust_code=True)
    assert options.mode == "int8" and options.io == "int8" and options.samples == 64
    assert options.trust_code and options.exclude == ()
    assert QuantOptions.from_profile(profile, precision=Precision.DYNAMIC).mode == "dynamic"
    assert options.excluding(("x",)).exclude == ("x",) and options.exclude == ()
    with pytest.raises(UsageError, match="fp32"):
        QuantOptions.from_profile(profile, precision="fp32")
    hash(options)


def test_every_runtime_has_a_backend():
    assert set(BACKENDS) == set(Runtime)
    assert BACKENDS[Runtime.LITERT] == BACKENDS[Runtime.TFLITE_RUNTIME] == "edgepack.quantize.litert"


def test_layer_error_to_dict_writes_inf_as_text():
    data = LayerError("conv", "CONV_2D", sqnr_db=math.inf, mse=0.0).to_dict()
    assert data == {
        "name": "conv",
        "source": None,
        "source_fused": [],
        "op_type": "CONV_2D",
        "sqnr_db": "inf",
        "mse": 0.0,
        "rmse_over_scale": None,
    }
