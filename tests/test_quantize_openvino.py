"""NNCF quantization of OpenVINO IR (intel-openvino-cpu profile) on the trained digits CNN."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest

from edgepack.artifact import Artifact
from edgepack.calibration import load_dataset
from edgepack.convert import ConvertOptions
from edgepack.convert.onnx_openvino import convert
from edgepack.errors import UsageError
from edgepack.profiles import load_profile
from edgepack.quantize import QuantOptions, openvino_nncf
from edgepack.source import open_source
from tests.conftest import DIGITS_NPZ

pytestmark = pytest.mark.openvino

TARGET = "intel-openvino-cpu"
CONV2 = "Conv__15/WithoutBiases"  # the second Convolution, as OpenVINO names it


def to_ir(onnx_path: Path, workdir: Path) -> Artifact:
    return convert(open_source(onnx_path), workdir, ConvertOptions())


@pytest.fixture(scope="module")
def digits(digits_onnx, tmp_path_factory):
    """(float IR artifact, dataset with labels)."""
    ir = to_ir(digits_onnx, tmp_path_factory.mktemp("ir"))
    return ir, load_dataset(DIGITS_NPZ, ir.inputs)


def _quantize(ir: Artifact, data, workdir: Path, **changes) -> Artifact:
    profile = load_profile(TARGET)
    options = replace(QuantOptions.from_profile(profile, precision="int8"), **changes)
    return openvino_nncf.quantize(
        pre=ir, float_artifact=ir, calibration=data, workdir=workdir, options=options, profile=profile
    )


@pytest.fixture(scope="module")
def int8(digits, tmp_path_factory):
    return _quantize(*digits, tmp_path_factory.mktemp("nncf"))


def accuracy(artifact: Artifact, data) -> float:
    from edgepack.runtimes import open_session

    session = open_session(artifact, precision="f32")
    assert session.precision == "f32"  # this CPU would pick bf16
    probs = np.concatenate([session.run([feed[n] for n in data.input_names])[0] for feed in data])
    return float(np.mean(probs.argmax(axis=1) == data.labels))


def ops_of(artifact: Artifact) -> dict:
    return {op.get_friendly_name(): op for op in ov.Core().read_model(str(artifact.path)).get_ops()}


def producers(op) -> list:
    return [i.get_source_output().get_node() for i in op.inputs()]


def test_nncf_model_is_int8_smaller_and_keeps_accuracy(digits, int8):
    ir, data = digits
    ops = ops_of(int8)
    kinds = [op.get_type_name() for op in ops.values()]
    assert kinds.count("FakeQuantize") >= 3
    assert int8.meta["fake_quantize_nodes"] == kinds.count("FakeQuantize")
    assert any(op.get_element_type().get_type_name() == "i8" for op in ops.values() if op.get_type_name() == "Constant")
    assert producers(ops[CONV2])[0].get_type_name() == "FakeQuantize"
    assert weight_scale(ops).shape == (32, 1, 1, 1)  # per output channel
    float_bin, int8_bin = ir.path.with_suffix(".bin").stat().st_size, int8.path.with_suffix(".bin").stat().st_size
    assert int8_bin < 0.4 * float_bin  # int8 weights (f32 kept elsewhere: compress_to_fp16=False)
    assert [Path(f).name for f in int8.files] == ["model.xml", "model.bin"]
    float_acc, int8_acc = accuracy(ir, data), accuracy(int8, data)
    assert float_acc > 0.95 and int8_acc >= 0.99 * float_acc
    meta = int8.meta
    assert meta["tool"] == "nncf" and meta["precision"] == "int8" and meta["io"] == "float"
    assert meta["preset"] == "mixed" and meta["range_estimator"] == "MINMAX" and meta["warnings"] == []
    assert meta["quant_params"]["image"] == {"dtype": "float32", "scale": None, "zero_point": None}


def fq_ranges(artifact: Artifact) -> dict[str, float]:
    """Upper input bound of each activation FakeQuantize."""
    ranges = {}
    for name, op in ops_of(artifact).items():
        if op.get_type_name() == "FakeQuantize" and producers(op)[0].get_type_name() != "Constant":
            ranges[name] = float(np.max(producers(op)[2].get_data()))
    return ranges


def test_methods_choose_different_ranges(digits, int8, tmp_path):
    minmax = fq_ranges(int8)
    for method, estimator in (("entropy", "HISTOGRAM"), ("percentile", "MEAN_QUANTILE")):
        other = _quantize(*digits, tmp_path / method, method=method)
        assert other.meta["range_estimator"] == estimator
        ranges = fq_ranges(other)
        assert ranges.keys() == minmax.keys()
        assert any(not np.isclose(ranges[k], minmax[k], rtol=1e-3) for k in ranges), method
        assert accuracy(other, digits[1]) >= 0.99 * accuracy(digits[0], digits[1])
    assert "no entropy" in _quantize(*digits, tmp_path / "e2", method="entropy").meta["warnings"][0]


def test_symmetric_and_per_tensor_options(digits, tmp_path):
    out = _quantize(*digits, tmp_path, symmetric_activations=True, per_channel=False)
    assert out.meta["preset"] == "performance"
    ops = ops_of(out)
    assert weight_scale(ops).size == 1


def weight_scale(ops: dict) -> np.ndarray:
    """The dequantization scale of the second Convolution's int8 weights (Convert -> Multiply by scale)."""
    [scale] = [p for p in producers(ops[f"{CONV2}/fq_weights_1"]) if p.get_type_name() == "Constant"]
    return scale.get_data()


def test_ignored_layer_stays_float(digits, tmp_path):
    out = _quantize(*digits, tmp_path, exclude=(CONV2,))
    conv = ops_of(out)[CONV2]
    act, weight = producers(conv)
    assert act.get_type_name() != "FakeQuantize"
    assert weight.get_type_name() == "Constant" and weight.get_element_type().get_type_name() == "f32"
    assert out.meta["excluded"] == [CONV2]


def test_unknown_exclude_name_is_a_usage_error(digits, tmp_path):
    with pytest.raises(UsageError, match="not layers"):
        _quantize(*digits, tmp_path, exclude=("no_such_layer",))


def test_only_int8(digits, tmp_path):
    with pytest.raises(UsageError, match="int8"):
        _quantize(*digits, tmp_path, mode="fp16")


def damaged_digits(source: Path, dest: Path, factor: float = 1000.0) -> Path:
    """One outlier channel between the two convolutions, same float function (see test_quantize_onnx)."""
    model = onnx.load(source)
    init = {i.name: i for i in model.graph.initializer}
    conv0, conv1 = (next(n for n in model.graph.node if n.name == name) for name in ("Conv__14", "Conv__15"))
    for name, index, by in (
        (conv0.input[1], (3,), factor),
        (conv0.input[2], (3,), factor),
        (conv1.input[1], (slice(None), 3), 1 / factor),
    ):
        array = onnx.numpy_helper.to_array(init[name]).copy()
        array[index] *= by
        init[name].CopyFrom(onnx.numpy_helper.from_array(array, name))
    onnx.save(model, dest)
    return dest


def test_layer_errors_rank_the_damaged_layer_first(digits, digits_onnx, tmp_path):
    _, data = digits
    ir = to_ir(damaged_digits(digits_onnx, tmp_path / "damaged.onnx"), tmp_path / "ir")
    float_acc = accuracy(ir, data)
    assert float_acc > 0.95
    int8 = _quantize(ir, data, tmp_path / "q")
    assert accuracy(int8, data) < 0.95 * float_acc
    profile = load_profile(TARGET)
    options = QuantOptions.from_profile(profile, precision="int8")
    errors = openvino_nncf.layer_errors(
        pre=ir, float_artifact=ir, quantized=int8, samples=data, options=options, profile=profile
    )
    assert [e.name for e in errors][0] == CONV2 and errors[0].op_type == "Convolution"
    assert errors[0].sqnr_db < 10 and errors[1].sqnr_db > 30
    assert len(errors) == 3  # two Convolutions and the MatMul
    repaired = _quantize(ir, data, tmp_path / "repaired", exclude=(CONV2,))
    assert accuracy(repaired, data) >= 0.99 * float_acc


def test_layer_errors_of_a_healthy_model(digits, int8):
    ir, data = digits
    profile = load_profile(TARGET)
    options = QuantOptions.from_profile(profile, precision="int8")
    errors = openvino_nncf.layer_errors(
        pre=ir, float_artifact=ir, quantized=int8, samples=data, options=options, profile=profile
    )
    assert {e.op_type for e in errors} == {"Convolution", "MatMul"}
    assert [e.sqnr_db for e in errors] == sorted(e.sqnr_db for e in errors)
    assert all(25 < e.sqnr_db < 80 and e.mse > 0 for e in errors)
