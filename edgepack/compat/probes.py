"""edgepack's own test models for ONNX ops that onnx's node tests leave out or test only in ways no converter takes.

onnx tests the sequence ops and the random generators only inside other
models (or not at all), and Constant only as a graph with no input. Each probe
here is a small deterministic model (random values are multiplied by zero) with
its expected output, in the shape of a node test case (name, model, data_sets,
rtol, atol), so :mod:`edgepack.compat.measure` runs it like the others.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

_X = np.arange(6, dtype=np.float32).reshape(2, 3)
_Y = _X + 10


def _probe(name: str, nodes: list[Any], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Any:
    import onnx
    from onnx import helper

    def info(key: str, value: np.ndarray) -> Any:
        return helper.make_tensor_value_info(key, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))

    graph = helper.make_graph(
        nodes, name, [info(k, v) for k, v in inputs.items()], [info(k, v) for k, v in outputs.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    data = [(list(inputs.values()), list(outputs.values()))]
    return SimpleNamespace(name=f"edgepack_{name}", model=model, data_sets=data, rtol=1e-5, atol=1e-6)


def _const(name: str, value: Any) -> Any:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, ins, outs, **attrs)


def _sequence_probes() -> list[Any]:
    pair = _node("SequenceConstruct", ["x", "y"], ["s"])
    xy = {"x": _X, "y": _Y}
    return [
        _probe("sequence_at", [pair, _const("i", np.int64(1)), _node("SequenceAt", ["s", "i"], ["z"])], xy, {"z": _Y}),
        _probe("sequence_length", [pair, _node("SequenceLength", ["s"], ["n"])], xy, {"n": np.asarray(2, np.int64)}),
        _probe(
            "concat_from_sequence",
            [pair, _node("ConcatFromSequence", ["s"], ["z"], axis=0)],
            xy,
            {"z": np.concatenate([_X, _Y])},
        ),
        _probe(
            "sequence_erase",
            [
                pair,
                _node("SequenceErase", ["s"], ["e"]),
                _const("i", np.int64(0)),
                _node("SequenceAt", ["e", "i"], ["z"]),
            ],
            xy,
            {"z": _X},
        ),
        _probe(
            "sequence_empty_insert",
            [
                _node("SequenceEmpty", [], ["e"], dtype=1),
                _node("SequenceInsert", ["e", "x"], ["s"]),
                _const("i", np.int64(0)),
                _node("SequenceAt", ["s", "i"], ["z"]),
            ],
            {"x": _X},
            {"z": _X},
        ),
    ]


def _random_probes() -> list[Any]:
    probes = []
    for op, attrs in [
        ("RandomNormal", {"shape": [2, 3]}),
        ("RandomUniform", {"shape": [2, 3]}),
        ("RandomNormalLike", {}),
        ("RandomUniformLike", {}),
    ]:
        nodes = [
            _node(op, ["x"] if op.endswith("Like") else [], ["r"], seed=1.0, **attrs),
            _const("zero", np.zeros((2, 3), np.float32)),
            _node("Mul", ["r", "zero"], ["r0"]),
            _node("Add", ["r0", "x"], ["z"]),
        ]
        probes.append(_probe(op.lower(), nodes, {"x": _X}, {"z": _X}))
    return probes


def _transformer_probes() -> list[Any]:
    """LayerNormalization over the last axis with constant scale and bias, and Erf, as exported encoders hold them.

    onnx's own LayerNormalization tests feed scale and bias as graph inputs over other axes, which
    no onnx2tf rung converted; a BERT-style export (MiniLM through ``torch.onnx``) has this form.
    """
    import math

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 8)).astype(np.float32)
    scale, bias = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    normed = ((x - mean) / np.sqrt(var + 1e-5) * scale + bias).astype(np.float32)
    erf = np.vectorize(math.erf)(x).astype(np.float32)
    layer_norm = [_const("scale", scale), _const("bias", bias)]
    layer_norm.append(_node("LayerNormalization", ["x", "scale", "bias"], ["z"], axis=-1, epsilon=1e-5))
    return [
        _probe("layer_norm_last_axis", layer_norm, {"x": x}, {"z": normed}),
        _probe("erf", [_node("Erf", ["x"], ["z"])], {"x": x}, {"z": erf}),
    ]


def probes() -> list[Any]:
    """Every probe, as node-test-like cases."""
    x4 = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3) / 10
    lp = np.sqrt((x4**2).sum(axis=(2, 3), keepdims=True))
    return [
        _probe(
            "constant_add", [_const("c", np.full((2, 3), 0.5, np.float32)), _node("Add", ["x", "c"], ["z"])],
            {"x": _X}, {"z": _X + 0.5},
        ),
        _probe("global_lp_pool", [_node("GlobalLpPool", ["x"], ["z"], p=2)], {"x": x4}, {"z": lp}),
        _probe(
            "optional_get_element",
            [_node("Optional", ["x"], ["o"]), _node("OptionalGetElement", ["o"], ["z"])],
            {"x": _X},
            {"z": _X},
        ),
        *_sequence_probes(),
        *_random_probes(),
        *_transformer_probes(),
    ]  # fmt: skip
