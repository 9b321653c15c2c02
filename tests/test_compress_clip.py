"""edgepack.compress.clip: magnitude clipping of Keras and ONNX models, judged on the digits CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.errors import ModelError, OutputExistsError, UsageError
from tests.conftest import DIGITS_NPZ


def _kernels(path):
    from edgepack.artifact import ModelFormat
    from edgepack.modelio import load_keras

    model = load_keras(path, ModelFormat.KERAS)
    return {w.path: np.asarray(w) for w in model.weights if w.path.endswith("kernel")}


def test_clip_keras_global_half_on_digits(digits_keras, tmp_path):
    from edgepack.compress import clip

    out = tmp_path / "clipped.keras"
    report = clip(digits_keras, out=out, sparsity=0.5, scope="global", data=DIGITS_NPZ, latency=False)

    kernels = _kernels(out)
    zeros = sum(int(k.size - np.count_nonzero(k)) for k in kernels.values())
    total = sum(k.size for k in kernels.values())
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    assert sum(layer.zeros_after for layer in report.layers) == zeros
    assert {layer.name for layer in report.layers} == {"conv0", "conv1", "probs"}
    # Global scope: layers end up with different sparsities, but the total is the asked share.
    assert len({round(layer.sparsity, 2) for layer in report.layers}) > 1
    after, before = report.after, report.before
    assert after.archive_bytes < 0.8 * before.archive_bytes  # zeros compress
    assert after.params == before.params and after.macs == before.macs  # ...but nothing got smaller
    assert after.nonzero_params < before.nonzero_params
    assert before.accuracy > 0.95 and after.accuracy >= before.accuracy - 0.03
    assert after.agreement > 0.95 and after.eval_samples == 300
    assert report.latency is None
    # BatchNorm and biases untouched.
    data = json.loads(json.dumps(report.to_dict()))
    assert data["method"] == "clip" and data["settings"] == {"sparsity": 0.5, "scope": "global"}


def test_clip_threshold_per_layer_zeroes_exactly_the_small_weights(digits_keras, tmp_path):
    from edgepack.compress import clip

    out = tmp_path / "clipped.keras"
    original = _kernels(digits_keras)
    report = clip(digits_keras, out=out, threshold=0.05, latency=False)
    clipped = _kernels(out)
    for name, array in original.items():
        np.testing.assert_array_equal(clipped[name], np.where(np.abs(array) < 0.05, 0, array))
    assert report.after.accuracy is None and "no data given" in " ".join(report.notes)


def test_clip_onnx_edits_weight_initializers_only(digits_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgepack.compress import clip

    out = tmp_path / "clipped.onnx"
    report = clip(digits_onnx, out=out, sparsity=0.5, scope="layer", data=DIGITS_NPZ)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(digits_onnx)).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    weights = {layer.name for layer in report.layers}
    assert {layer.op for layer in report.layers} == {"Conv", "Gemm"}
    for name, array in before.items():
        if name in weights:
            assert 1 - np.count_nonzero(after[name]) / array.size == pytest.approx(0.5, abs=0.01)
        else:  # biases (folded BatchNorm) and shape constants keep their values
            np.testing.assert_array_equal(after[name], array)
    assert report.after.archive_bytes < report.before.archive_bytes
    assert report.after.macs == report.before.macs == 309248
    # Half of every layer, the 144-weight first conv included, costs more than half overall (see global above).
    assert report.after.accuracy >= report.before.accuracy - 0.1
    assert report.latency is not None and report.latency.runtime == "onnxruntime"
    assert report.latency.before_ms > 0 and report.latency.after_ms > 0
    assert "latency" in report.to_dict()


def test_clip_refuses_bad_requests(digits_onnx, tmp_path):
    from edgepack.compress import clip

    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        clip(digits_onnx, out=existing, sparsity=0.5)
    assert existing.read_bytes() == b"old"
    with pytest.raises(UsageError, match="exactly one"):
        clip(digits_onnx, out=tmp_path / "a.onnx", sparsity=0.5, threshold=0.1)
    with pytest.raises(UsageError, match="sparsity"):
        clip(digits_onnx, out=tmp_path / "a.onnx", sparsity=1.5)
    with pytest.raises(UsageError, match=".onnx"):
        clip(digits_onnx, out=tmp_path / "a.keras", sparsity=0.5)
    with pytest.raises(UsageError, match="input model"):
        clip(digits_onnx, out=digits_onnx, sparsity=0.5, force=True)
    report = clip(digits_onnx, out=existing, sparsity=0.5, force=True, latency=False)
    assert report.after.sparsity > 0.45 and existing.read_bytes()[:1] != b"o"


def test_clip_refuses_a_model_without_weights(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    from edgepack.compress import clip

    with pytest.raises(ModelError, match="no Conv, Gemm or MatMul"):
        clip(path, out=tmp_path / "out.onnx", sparsity=0.5)


def test_cli_clip_json(digits_onnx, tmp_path):
    from typer.testing import CliRunner

    from edgepack.cli_compress import compress_app

    out = tmp_path / "cli.onnx"
    args = ["clip", str(digits_onnx), "--out", str(out), "--sparsity", "0.4", "--data", str(DIGITS_NPZ)]
    result = CliRunner().invoke(compress_app, [*args, "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["after"]["sparsity"] == pytest.approx(0.4, abs=0.01) and out.is_file()
    table = CliRunner().invoke(compress_app, [*args, "--force", "--no-latency"])
    assert table.exit_code == 0 and "gzip archive" in table.stdout and "per layer" in table.stdout


def test_pipeline_step_clip_onnx(digits_onnx, tmp_path):
    from edgepack.compress import pipeline_step

    path, entry = pipeline_step(
        digits_onnx, "onnx", settings={"clip": {"sparsity": 0.3}}, data=DIGITS_NPZ, workdir=tmp_path / "w"
    )
    assert path == tmp_path / "w" / "compressed.onnx" and path.is_file()
    assert entry["method"] == "clip" and entry["settings"]["sparsity"] == 0.3
    assert set(entry) >= {"before", "after", "layers", "latency"} and "output" not in entry
    json.dumps(entry)
    with pytest.raises(UsageError, match="one of"):
        pipeline_step(digits_onnx, "onnx", settings={"clip": {}, "prune": {}}, data=None, workdir=tmp_path / "w")
    with pytest.raises(UsageError, match="training options"):
        pipeline_step(digits_onnx, "onnx", settings={"clip": {"epochs": 2}}, data=None, workdir=tmp_path / "w")
