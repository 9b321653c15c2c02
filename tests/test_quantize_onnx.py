"""ONNX Runtime QDQ quantization (rpi ONNX Runtime and Jetson TensorRT profiles) on the trained digits CNN."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepack.artifact import Artifact, ModelFormat
from edgepack.bundle import build_engine_script
from edgepack.calibration import dataset_from_arrays, load_dataset
from edgepack.errors import UsageError
from edgepack.profiles import load_profile
from edgepack.quantize import QuantOptions, onnx_qdq
from edgepack.source import open_source
from tests.conftest import DIGITS_NPZ

pytestmark = pytest.mark.onnx

RPI = "rpi5-arm64-onnxruntime"
JETSON = "jetson-orin-trt"
QDQ = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def digits(digits_onnx):
    """(float artifact, dataset with labels) of the shipped digits CNN."""
    artifact = open_source(digits_onnx)
    return artifact, load_dataset(DIGITS_NPZ, artifact.inputs)


def _quantize(artifact: Artifact, data, workdir: Path, target: str, **changes) -> Artifact:
    profile = load_profile(target)
    options = replace(QuantOptions.from_profile(profile, precision="int8"), **changes)
    return onnx_qdq.quantize(
        pre=artifact, float_artifact=artifact, calibration=data, workdir=workdir, options=options, profile=profile
    )


@pytest.fixture(scope="module")
def rpi_int8(digits, tmp_path_factory):
    return _quantize(*digits, tmp_path_factory.mktemp("rpi"), RPI)


@pytest.fixture(scope="module")
def jetson_int8(digits, tmp_path_factory):
    return _quantize(*digits, tmp_path_factory.mktemp("jetson"), JETSON)


def accuracy(artifact: Artifact, data) -> float:
    from edgepack.runtimes import open_session

    session = open_session(artifact)
    probs = np.concatenate([session.run([feed[n] for n in data.input_names])[0] for feed in data])
    return float(np.mean(probs.argmax(axis=1) == data.labels))


def graph(artifact: Artifact):
    model = onnx.load(artifact.path)
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    return model, init, producer, readers


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def axis_of(n) -> int | None:
    return next((a.i for a in n.attribute if a.name == "axis"), None)


def test_rpi_qdq_model_is_per_channel_int8_and_keeps_accuracy(digits, rpi_int8):
    artifact, data = digits
    model, init, producer, _ = graph(rpi_int8)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    conv = node(model, "Conv__15")
    weight_dq = producer[conv.input[1]]
    assert weight_dq.op_type == "DequantizeLinear"
    weights, scale = init[weight_dq.input[0]], init[weight_dq.input[1]]
    assert weights.dtype == np.int8 and scale.shape == (weights.shape[0],) and axis_of(weight_dq) == 0
    assert init[producer[conv.input[0]].input[2]].dtype == np.uint8  # asymmetric uint8 activations
    assert rpi_int8.size_bytes() < 0.6 * artifact.size_bytes()  # int8 weights
    float_acc, int8_acc = accuracy(artifact, data), accuracy(rpi_int8, data)
    assert float_acc > 0.95 and int8_acc >= 0.99 * float_acc
    meta = rpi_int8.meta
    assert meta["precision"] == "int8" and meta["io"] == "float" and meta["per_channel"]
    assert meta["quant_params"]["image"] == {"dtype": "float32", "scale": None, "zero_point": None}
    assert "tensorrt_flags" not in meta and meta["warnings"] == []


def test_jetson_qdq_is_symmetric_int8_on_tensorrt_ops_only(digits, jetson_int8):
    artifact, data = digits
    profile = load_profile(JETSON)
    model, init, producer, readers = graph(jetson_int8)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= profile.target_opset
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx", "ai.onnx.ml"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    qdq = [n for n in model.graph.node if n.op_type in QDQ]
    assert qdq
    for n in qdq:  # symmetric int8 everywhere
        zero_point = init[n.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), n.name
        assert np.all(init[n.input[1]] > 0)
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":  # explicit pairs: each Q feeds only DequantizeLinear
            assert {r.op_type for r in readers[n.output[0]]} == {"DequantizeLinear"}
        if n.op_type == "DequantizeLinear":  # ...and Q/DQ only feed the ops TensorRT fuses
            assert {r.op_type for r in readers[n.output[0]]} <= set(onnx_qdq.TRT_OP_TYPES)
    layers = [n for n in model.graph.node if n.op_type in onnx_qdq.TRT_OP_TYPES]
    assert {n.op_type for n in layers} == {"Conv", "Gemm"}
    for layer in layers:
        act, weight = producer[layer.input[0]], producer[layer.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear"
        assert init[act.input[1]].size == 1  # per-tensor activations
        quantize = producer[weight.input[0]]  # float weights behind a Q/DQ pair, per output channel
        assert quantize.op_type == "QuantizeLinear" and init[quantize.input[0]].dtype == np.float32
        out_axis = 0 if layer.op_type == "Conv" else 1  # Gemm here has transB = 0: [in, out]
        assert axis_of(weight) == out_axis
        assert init[weight.input[1]].shape == (init[quantize.input[0]].shape[out_axis],)
        assert len(layer.input) < 3 or layer.input[2] in init  # float bias
        assert not any(r.op_type == "QuantizeLinear" for r in readers.get(layer.output[0], []))  # no output Q
    assert accuracy(jetson_int8, data) >= 0.99 * accuracy(artifact, data)
    meta = jetson_int8.meta
    assert meta["tensorrt_flags"] == ["--stronglyTyped"] and meta["symmetric_activations"]
    script = build_engine_script(profile, "model.onnx", qdq_flags=meta["tensorrt_flags"])
    assert all(flag in script for flag in meta["tensorrt_flags"])


def test_tensorrt_8_needs_int8_flag():
    profile = load_profile(JETSON, overrides={"tensorrt": {"jetpack": "5.1"}})
    assert onnx_qdq.tensorrt_flags(profile) == ["--int8", "--fp16"]
    assert profile.target_opset == 17


def activation_scales(artifact: Artifact) -> dict[str, float]:
    model, init, _, _ = graph(artifact)
    return {
        n.input[0]: float(init[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in init
    }


def test_entropy_and_percentile_ranges_differ_from_minmax(digits, rpi_int8, tmp_path):
    minmax = activation_scales(rpi_int8)
    for method in ("entropy", "percentile"):
        other = _quantize(*digits, tmp_path / method, RPI, method=method)
        scales = activation_scales(other)
        assert scales.keys() == minmax.keys()
        changed = [k for k in scales if not np.isclose(scales[k], minmax[k], rtol=1e-3)]
        assert changed, method
        assert all(scales[k] <= minmax[k] * 1.001 for k in scales)  # clipped ranges, never wider
        assert other.meta["calibrator"]["num_bins"] > 128
        assert accuracy(other, digits[1]) >= 0.99 * accuracy(digits[0], digits[1])


def test_excluded_nodes_stay_float(digits, tmp_path):
    trt = _quantize(*digits, tmp_path / "trt", JETSON, exclude=("Conv__15",))
    model, init, producer, _ = graph(trt)
    conv = node(model, "Conv__15")
    assert all(name in init or name not in producer or producer[name].op_type not in QDQ for name in conv.input)
    assert init[conv.input[1]].dtype == np.float32
    assert trt.meta["excluded"] == ["Conv__15"]
    assert producer[node(model, "Conv__14").input[1]].op_type == "DequantizeLinear"  # the others still int8

    cpu = _quantize(*digits, tmp_path / "cpu", RPI, exclude=("Conv__15",))
    model, init, producer, readers = graph(cpu)
    conv = node(model, "Conv__15")
    assert conv.input[1] in init and init[conv.input[1]].dtype == np.float32  # float weights
    assert not any(r.op_type == "QuantizeLinear" for r in readers[conv.output[0]])  # float output


def test_unknown_exclude_name_is_a_usage_error(digits, tmp_path):
    with pytest.raises(UsageError, match="not nodes of the model"):
        _quantize(*digits, tmp_path, RPI, exclude=("no_such_node",))


def test_only_int8(digits, tmp_path):
    with pytest.raises(UsageError, match="int8"):
        _quantize(*digits, tmp_path, JETSON, mode="fp16")


def test_old_opset_target_gets_per_tensor_weights(tiny_onnx_path, tmp_path):
    model = onnx.load(tiny_onnx_path)  # Conv, Relu, GlobalAveragePool, Flatten, Gemm: all in opset 12
    model.opset_import[0].version = 12
    onnx.save(model, tmp_path / "opset12.onnx")
    source = open_source(tmp_path / "opset12.onnx")
    rng = np.random.default_rng(0)
    data = dataset_from_arrays({"input": rng.normal(size=(16, 3, 16, 16)).astype(np.float32)}, source.inputs)
    profile = load_profile(RPI, overrides={"opset": 12})
    options = QuantOptions.from_profile(profile, precision="int8")
    out = onnx_qdq.quantize(
        pre=source, float_artifact=source, calibration=data, workdir=tmp_path / "q", options=options, profile=profile
    )
    model, init, _, _ = graph(out)
    assert out.meta["opset"] == 12 and not out.meta["per_channel"]
    assert "per-tensor weights" in out.meta["warnings"][0]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and all(init[n.input[1]].size == 1 for n in dequantize)
    # Without an opset limit the model is raised to opset 13 for per-channel weights.
    upgraded = onnx_qdq.quantize(
        pre=source, float_artifact=source, calibration=data, workdir=tmp_path / "q13", options=options,
        profile=load_profile(RPI, overrides={"opset": 17}),
    )  # fmt: skip
    assert upgraded.meta["opset"] == 13 and upgraded.meta["per_channel"]


# --------------------------------------------------------------------------- per-layer error


def damaged_digits(source: Path, dest: Path, factor: float = 1000.0) -> Path:
    """The digits CNN with one outlier channel between its convolutions, same float function.

    Channel 3 of the first Conv (weights and bias) is scaled by ``factor`` and the second Conv's
    weights reading it by ``1 / factor``: ReLU commutes with the positive scale, so the float model
    is unchanged, but a per-tensor int8 scale of that activation now crushes the other 15 channels.
    """
    model = onnx.load(source)
    init = {i.name: i for i in model.graph.initializer}
    conv0, conv1 = node(model, "Conv__14"), node(model, "Conv__15")

    def scale(name: str, index: tuple, by: float) -> None:
        array = onnx.numpy_helper.to_array(init[name]).copy()
        array[index] *= by
        init[name].CopyFrom(onnx.numpy_helper.from_array(array, name))

    scale(conv0.input[1], (3,), factor)
    scale(conv0.input[2], (3,), factor)
    scale(conv1.input[1], (slice(None), 3), 1 / factor)
    onnx.save(model, dest)
    return dest


@pytest.mark.parametrize(("target", "culprits"), [(JETSON, ["Conv__15"]), (RPI, ["Conv__14", "Conv__15"])])
def test_layer_errors_rank_the_damaged_layer_first(digits, tmp_path, target, culprits):
    artifact, data = digits
    path = damaged_digits(artifact.path, tmp_path / "damaged.onnx")
    damaged = Artifact.from_file(path, ModelFormat.ONNX, artifact.inputs, artifact.outputs)
    float_acc = accuracy(damaged, data)
    assert float_acc == pytest.approx(accuracy(artifact, data), abs=0.005)
    int8 = _quantize(damaged, data, tmp_path / "q", target)
    assert accuracy(int8, data) < 0.95 * float_acc
    profile = load_profile(target)
    options = QuantOptions.from_profile(profile, precision="int8")
    errors = onnx_qdq.layer_errors(
        pre=damaged, float_artifact=damaged, quantized=int8, samples=data, options=options, profile=profile
    )
    # TensorRT: the Conv reading the outlier tensor quantizes it. ONNX Runtime: the Conv making it
    # quantizes it too (output Q/DQ), so both must go to float, the damaged one ranked first.
    assert [e.name for e in errors[: len(culprits)]] == culprits
    assert errors[0].sqnr_db < 10 and errors[len(culprits)].sqnr_db > 30
    assert all(e.mse >= 0 for e in errors)
    repaired = _quantize(damaged, data, tmp_path / "repaired", target, exclude=tuple(culprits))
    assert accuracy(repaired, data) >= 0.99 * float_acc


def test_layer_errors_of_a_healthy_model(digits, rpi_int8):
    artifact, data = digits
    profile = load_profile(RPI)
    options = QuantOptions.from_profile(profile, precision="int8")
    errors = onnx_qdq.layer_errors(
        pre=artifact, float_artifact=artifact, quantized=rpi_int8, samples=data, options=options, profile=profile
    )
    names = {n.name for n in onnx.load(rpi_int8.meta["prepared_model"]).graph.node}
    assert {e.name for e in errors} <= names and {"Conv__14", "Conv__15"} <= {e.name for e in errors}
    assert [e.sqnr_db for e in errors] == sorted(e.sqnr_db for e in errors)
    assert all(25 < e.sqnr_db < 80 for e in errors)
    conv = next(e for e in errors if e.name == "Conv__15")
    assert 0.1 < conv.rmse_over_scale < 1  # about 0.29: plain rounding
