"""Prepare an ONNX graph for onnx2tf the way the tools that succeed with it do.

onnx2tf converts one node at a time and needs every shape it meets to be known.
PyTorch exports of recurrent and audio models wrap shape checks in ``If`` nodes
(``if x.dim() == 3: x = x.squeeze(0)``) whose branches read tensors of the outer
graph, and onnx2tf loses those (``KeyError: '/Constant_output_0'``). Ultralytics
runs onnxslim on the static-shaped export and then calls onnx2tf with
``not_use_onnxsim``; PINTO's answers to such issues do the same by hand. Here:

1. shape arithmetic is folded (onnxslim, else onnxsim) on the static-shaped graph;
2. every ``If`` whose condition became a constant is replaced by the branch it takes,
   and folding runs again, until no constant ``If`` is left;
3. each rewrite is kept only if onnxruntime computes the same outputs as the original.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgepack.artifact import TensorSpec
from edgepack.convert.onnx2tf_rewrites import flatten_coercing_softmax, safe_output_names, scope_safe_names, subgraphs
from edgepack.convert.ortcheck import compare, random_feeds, run_onnx
from edgepack.tools import first_line, quiet

_ROUNDS = 4
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN", "Loop", "Scan"})
TRANSFORMER_OPS = frozenset({"Erf", "Gelu", "LayerNormalization", "Attention", "MultiHeadAttention"})


def op_types(model: Any) -> set[str]:
    """Every op type in the graph and its subgraphs."""
    found: set[str] = set()
    for graph in subgraphs(model.graph):
        found.update(node.op_type for node in graph.node)
    return found


def graph_kind(model: Any, inputs: Sequence[TensorSpec]) -> str:
    """``recurrent``, ``transformer``, ``vision`` or ``other``: picks onnx2tf's options first tried."""
    ops = op_types(model)
    if ops & RECURRENT_OPS:
        return "recurrent"
    if ops & TRANSFORMER_OPS or ({"Softmax", "MatMul"} <= ops and not any(len(s.shape) == 4 for s in inputs)):
        return "transformer"
    if any(len(spec.shape) == 4 for spec in inputs):
        return "vision"
    return "other"


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Values of the graph's initializers and Constant nodes with a plain ``value``."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _defined_names(graph: Any) -> set[str]:
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


def inline_constant_ifs(model: Any) -> list[str]:
    """Replace each top-level ``If`` with a constant condition by the nodes of the branch it takes.

    Branch outputs are renamed to the ``If`` outputs with Identity nodes (folding removes them).
    An ``If`` whose branch would clash with a name of the outer graph is left alone.

    Returns:
        The names of the ``If`` nodes replaced.
    """
    from onnx import helper

    graph = model.graph
    constants = _constants(graph)
    defined = _defined_names(graph)
    replaced: list[str] = []
    nodes: list[Any] = []
    for node in graph.node:
        cond = constants.get(node.input[0]) if node.op_type == "If" and node.input else None
        if cond is None or cond.size != 1:
            nodes.append(node)
            continue
        wanted = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
        branch = next(attr.g for attr in node.attribute if attr.name == wanted)
        inner = {out for sub in branch.node for out in sub.output} | {init.name for init in branch.initializer}
        if inner & defined:
            nodes.append(node)
            continue
        graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        for outer, inner_out in zip(node.output, branch.output, strict=True):
            nodes.append(helper.make_node("Identity", [inner_out.name], [outer], name=f"{node.name}/inlined/{outer}"))
        defined |= inner
        replaced.append(node.name or node.output[0])
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


def _onnxslim(model: Any) -> Any:
    import onnxslim

    return onnxslim.slim(model)


def _onnxsim(model: Any) -> Any:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ValueError("onnxsim could not check the simplified model")
    return simplified


FOLDERS: tuple[tuple[str, Callable[[Any], Any]], ...] = (("onnxslim", _onnxslim), ("onnxsim", _onnxsim))


def _agrees(reference: Any, candidate: Any, feeds: Any) -> str | None:
    """None when ``candidate`` computes ``reference`` in onnxruntime, else why not."""
    if reference is None:
        return None
    try:
        _, mismatch = compare(reference, run_onnx(candidate, feeds), rtol=1e-3, atol=1e-4)
    except Exception as exc:  # noqa: BLE001 - a rewrite that does not run is refused
        return f"does not run in onnxruntime ({first_line(exc)[:160]})"
    return mismatch


def _fold(model: Any, reference: Any, feeds: Any, notes: list[str]) -> tuple[Any, str | None]:
    """The first folder's result that agrees with the reference, and its name (None: no folder worked)."""
    for name, folder in FOLDERS:
        try:
            with quiet():
                folded = folder(_copy(model))
        except Exception as exc:  # noqa: BLE001 - a folder that fails is skipped
            notes.append(f"{name}: {first_line(exc)[:160]}")
            continue
        mismatch = _agrees(reference, folded, feeds)
        if mismatch is None:
            return folded, name
        notes.append(f"{name}: {mismatch}")
    return model, None


def _copy(model: Any) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def prepare(model: Any, inputs: Sequence[TensorSpec]) -> tuple[Any, dict[str, Any]]:
    """A copy of ``model`` (static-shaped already) prepared for onnx2tf, and what was done.

    Returns:
        The prepared model and facts for the artifact meta: ``folded_with`` (tool or None),
        ``inlined_ifs`` (If nodes replaced by a branch), ``split_slices`` (channel Slices of a Conv
        made Convs), ``renamed_nodes`` and ``coerced_softmax`` (``onnx2tf_rewrites``), ``nodes_before``/``nodes_after``,
        ``notes`` (rewrites refused and why).
    """
    feeds = random_feeds(inputs, seed=0, count=1)
    try:
        reference = run_onnx(model, feeds)
    except Exception:  # noqa: BLE001 - custom ops: rewrites cannot be checked, so none is made
        reference = None
    notes: list[str] = []
    facts: dict[str, Any] = {"nodes_before": len(model.graph.node), "folded_with": None}
    facts.update({key: [] for key, _ in REWRITES})
    if reference is None:
        facts.update(nodes_after=facts["nodes_before"], notes=["onnxruntime cannot run the model: not rewritten"])
        return model, facts
    current = _copy(model)
    for _ in range(_ROUNDS):
        current, folder = _fold(current, reference, feeds, notes)
        facts["folded_with"] = facts["folded_with"] or folder
        changed = False
        for key, rewrite in REWRITES:
            candidate = _copy(current)
            done = rewrite(candidate)
            if not done:
                continue
            mismatch = _agrees(reference, candidate, feeds)
            if mismatch is not None:
                notes.append(f"{key} {', '.join(done)}: {mismatch}")
                continue
            facts[key].extend(done)
            current, changed = candidate, True
        if not changed:
            break
    with contextlib.suppress(Exception):  # shapes help onnx2tf; a model that fails inference still converts
        import onnx

        current = onnx.shape_inference.infer_shapes(current)
    facts.update(nodes_after=len(current.graph.node), notes=notes)
    return current, facts


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    found = next((attr for attr in node.attribute if attr.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def split_channel_slices(model: Any) -> list[str]:
    """Turn ``Conv -> Slice`` along the channel axis into a Conv with the sliced weights.

    onnx2tf computes a Conv channels-last but reads the Slice's axis in the ONNX layout, so
    STFT front ends (a Conv whose output channels are split into real and imaginary parts, as in
    silero-vad) come out with empty or wrong slices. A Conv of the wanted output channels only
    needs no channel Slice. Other axes of the Slice stay in a Slice after the new Conv.

    Returns:
        The names of the Slice nodes rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = _constants(graph)
    weights = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewritten: list[str] = []
    nodes: list[Any] = []
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "Slice" and node.input else None
        plan = _channel_slice(node, conv, constants, weights) if conv is not None and conv.op_type == "Conv" else None
        if plan is None or conv is None:
            nodes.append(node)
            continue
        start, end, rest = plan
        tag = f"{node.name or node.output[0]}/channels"
        conv_inputs = [conv.input[0]]
        for index, name in enumerate(conv.input[1:3]):
            sliced = numpy_helper.from_array(constants[name][start:end].copy(), f"{tag}/{'WB'[index]}")
            graph.initializer.append(sliced)
            conv_inputs.append(sliced.name)
        target = node.output[0] if not rest else f"{tag}/conv_output"
        nodes.append(helper.make_node("Conv", conv_inputs, [target], name=f"{tag}/Conv", **_conv_attributes(conv)))
        if rest:
            arrays = [np.array(values, dtype=np.int64) for values in zip(*rest, strict=True)]
            names = []
            for label, array in zip(("starts", "ends", "axes", "steps"), arrays, strict=True):
                graph.initializer.append(numpy_helper.from_array(array, f"{tag}/{label}"))
                names.append(f"{tag}/{label}")
            nodes.append(helper.make_node("Slice", [target, *names], [node.output[0]], name=f"{tag}/Slice"))
        rewritten.append(node.name or node.output[0])
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _conv_attributes(conv: Any) -> dict[str, Any]:
    from onnx import helper

    return {attr.name: helper.get_attribute_value(attr) for attr in conv.attribute}


def _channel_slice(
    node: Any, conv: Any, constants: dict[str, np.ndarray], weights: dict[str, Any]
) -> tuple[int, int, list[tuple[int, int, int, int]]] | None:
    """(start, end) of a step-1 channel Slice of a group-1 Conv with constant weights, and the Slice's other axes."""
    if _attribute(conv, "group", 1) != 1 or any(name not in weights for name in conv.input[1:3]):
        return None
    parts = [constants.get(name) for name in node.input[1:5]]
    first, second = (parts + [None, None])[:2]
    if first is None or second is None or any(name not in constants for name in node.input[3:5] if name):
        return None
    starts, ends = first.tolist(), second.tolist()
    rank = constants[conv.input[1]].ndim
    axes = parts[2].tolist() if len(parts) > 2 and parts[2] is not None else list(range(len(starts)))
    steps = parts[3].tolist() if len(parts) > 3 and parts[3] is not None else [1] * len(starts)
    axes = [axis % rank for axis in axes]
    if 1 not in axes or steps[axes.index(1)] != 1:
        return None
    channels = constants[conv.input[1]].shape[0]
    at = axes.index(1)
    start, end = starts[at], ends[at]
    start, end = (start + channels if start < 0 else start), (end + channels if end < 0 else min(end, channels))
    if not 0 <= start < end <= channels:
        return None
    rest = [(s, e, a, st) for s, e, a, st in zip(starts, ends, axes, steps, strict=True) if a != 1]
    return start, end, rest


# Graph rewrites, applied between folding rounds; each is kept only if onnxruntime agrees.
REWRITES: tuple[tuple[str, Callable[[Any], list[str]]], ...] = (
    ("inlined_ifs", inline_constant_ifs),
    ("split_slices", split_channel_slices),
    ("renamed_nodes", scope_safe_names),
    ("renamed_outputs", safe_output_names),
    ("coerced_softmax", flatten_coercing_softmax),
)
