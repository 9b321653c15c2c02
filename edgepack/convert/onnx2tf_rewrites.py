"""Graph rewrites that spare onnx2tf the ONNX habits it mishandles (used by ``onnx2tf_prep``).

* Node names: onnx2tf passes an ONNX node's name to TensorFlow as the op's name, and TensorFlow
  refuses a scope name outside ``[A-Za-z0-9_.\\/>-]``. Paddle2ONNX names nodes ``Softmax@0``, so
  PaddleOCR's classifier failed in ``tf.nn.softmax`` (``'Softmax@0' is not a valid scope name``)
  in every rung of the ladder. Such names are rewritten with ``_`` (kept unique).
* Graph output names: an output named like ``onnx::Shape_422`` (``torch.onnx`` names a tensor it
  also reads the shape of that way) was silently left out of onnx2tf's .tflite, so a MiniLM
  sentence encoder lost its last hidden state ("3 outputs instead of 4") in every rung. Such
  outputs are renamed with ``_`` everywhere the top-level graph uses them (outputs are matched
  by position afterwards, so the name does not reach the bundle).
* Softmax, LogSoftmax and Hardmax before opset 13 coerce their input to 2-D at ``axis`` and
  normalise over everything from ``axis`` on; onnx2tf normalises over ``axis`` alone. Where
  ``axis`` is not the last axis, the node becomes ``Flatten(axis) -> op(axis=1) -> Reshape`` back
  to the input's shape, which means the same at every opset.

Each rewrite changes the model in place and returns the names of the nodes it changed;
``onnx2tf_prep.prepare`` keeps a rewrite only if onnxruntime computes the same outputs.
"""

from __future__ import annotations

import re
from typing import Any

_BAD_NAME = re.compile(r"[^A-Za-z0-9_.\\/>-]")
_COERCING = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def _safe_unique(name: str, taken: set[str]) -> str:
    """``name`` with TensorFlow-refused characters as ``_``, suffixed until unique in ``taken`` (then added)."""
    base = _BAD_NAME.sub("_", name)
    new, suffix = base, 0
    while new in taken:
        suffix += 1
        new = f"{base}_{suffix}"
    taken.add(new)
    return new


def scope_safe_names(model: Any) -> list[str]:
    """Rename nodes (top-level graph) whose names TensorFlow refuses as scope names.

    Returns:
        The old names of the nodes renamed.
    """
    graph = model.graph
    taken = {node.name for node in graph.node}
    renamed: list[str] = []
    for node in graph.node:
        if not node.name or not _BAD_NAME.search(node.name):
            continue
        renamed.append(node.name)
        node.name = _safe_unique(node.name, taken)
    return renamed


def safe_output_names(model: Any) -> list[str]:
    """Rename graph outputs whose names TensorFlow refuses (e.g. ``onnx::Shape_422``), where they are used.

    An output a subgraph reads by its outer name is left alone (renaming it there is not worth the risk).

    Returns:
        The old names of the outputs renamed.
    """
    graph = model.graph
    inner = {name for sub in subgraphs(graph)[1:] for node in sub.node for name in node.input}
    inputs = {value.name for value in graph.input}
    taken = {name for node in graph.node for name in [*node.input, *node.output]} | inputs
    renames: dict[str, str] = {}
    for output in graph.output:
        if not _BAD_NAME.search(output.name) or output.name in inner or output.name in inputs:
            continue
        renames[output.name] = _safe_unique(output.name, taken)
    if not renames:
        return []
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in [*graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    return list(renames)


def subgraphs(graph: Any) -> list[Any]:
    """``graph`` and every graph nested in its nodes (If branches, Loop and Scan bodies), depth first."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                found.extend(subgraphs(attr.g))
            for sub in attr.graphs:
                found.extend(subgraphs(sub))
    return found


def _default_opset(model: Any) -> int | None:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor whose shape inference knows it."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no ranks: nothing is rewritten
        return {}
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in values
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape")
    }
    ranks.update({init.name: len(init.dims) for init in inferred.graph.initializer})
    return ranks


def flatten_coercing_softmax(model: Any) -> list[str]:
    """Spell out opset < 13 Softmax/LogSoftmax/Hardmax over a non-last axis as Flatten -> op -> Reshape.

    Returns:
        The names (else first outputs) of the nodes rewritten.
    """
    from onnx import helper

    opset = _default_opset(model)
    if opset is None or opset >= 13:
        return []
    graph = model.graph
    if not any(node.op_type in _COERCING and node.domain in ("", "ai.onnx") for node in graph.node):
        return []
    ranks = _ranks(model)
    rewritten: list[str] = []
    nodes: list[Any] = []
    for node in graph.node:
        rank = ranks.get(node.input[0]) if node.op_type in _COERCING and node.domain in ("", "ai.onnx") else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if rank is None or rank == 0 or axis % rank == rank - 1:
            nodes.append(node)
            continue
        tag = _BAD_NAME.sub("_", node.name or node.output[0]) + "/coerced"
        flat, soft, shape = f"{tag}/flat", f"{tag}/out2d", f"{tag}/shape"
        nodes.extend(
            [
                helper.make_node("Flatten", [node.input[0]], [flat], name=f"{tag}/Flatten", axis=axis % rank),
                helper.make_node(node.op_type, [flat], [soft], name=f"{tag}/{node.op_type}", axis=1),
                helper.make_node("Shape", [node.input[0]], [shape], name=f"{tag}/Shape"),
                helper.make_node("Reshape", [soft, shape], [node.output[0]], name=f"{tag}/Reshape"),
            ]
        )
        rewritten.append(node.name or node.output[0])
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten
