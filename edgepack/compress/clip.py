"""Magnitude clipping: zero the smallest weights of Conv, Dense, Gemm and MatMul layers.

Only weight matrices and kernels are touched (Keras weights named ``*kernel``;
ONNX initializers feeding a Conv/ConvTranspose/Gemm/MatMul weight input);
biases, BatchNorm and everything else keep their values. Zeros do not make a
dense runtime faster, but they compress: the gzip size of the model shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress import flow
from edgepack.compress.measure import keras_layers, weight_name
from edgepack.compress.model_io import copy_keras, keras_save, onnx_save
from edgepack.compress.report import CompressionReport, LayerChange
from edgepack.errors import ModelError, UsageError

SCOPES = ("layer", "global")
# ONNX op -> positions of its inputs that hold weights (a Gemm or MatMul input is a weight when constant).
ONNX_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}

Key = tuple[str, int]  # (layer name, index in layer.get_weights())


def check_amount(threshold: float | None, sparsity: float | None, scope: str) -> None:
    """Exactly one of ``threshold`` (>= 0) and ``sparsity`` (in [0, 1)), and a known scope."""
    if (threshold is None) == (sparsity is None):
        raise UsageError("give exactly one of --threshold and --sparsity.")
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise UsageError(f"--threshold must be a finite number >= 0, got {threshold}.")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}.", hint="0.5 zeroes half the weights.")
    if scope not in SCOPES:
        raise UsageError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}.")


def magnitude_masks(
    weights: Mapping[Any, np.ndarray], *, threshold: float | None = None, sparsity: float | None = None, scope: str
) -> dict[Any, np.ndarray]:
    """Keep-masks (True = keep) zeroing ``|w| < threshold``, or exactly the smallest ``sparsity`` share.

    With ``scope="layer"`` each tensor loses ``floor(size * sparsity)`` elements; with ``"global"``
    the smallest ``floor(total * sparsity)`` over all tensors go, wherever they are.
    """
    check_amount(threshold, sparsity, scope)
    if threshold is not None:
        return {k: np.abs(w) >= threshold for k, w in weights.items()}
    assert sparsity is not None  # check_amount: exactly one of threshold and sparsity
    if scope == "layer":
        return {k: _smallest_out(np.abs(w).ravel(), sparsity).reshape(w.shape) for k, w in weights.items()}
    keys = list(weights)
    flat = np.concatenate([np.abs(weights[k]).ravel() for k in keys]) if keys else np.zeros(0)
    keep = _smallest_out(flat, sparsity)
    bounds = np.cumsum([0] + [weights[k].size for k in keys])
    return {k: keep[bounds[i] : bounds[i + 1]].reshape(weights[k].shape) for i, k in enumerate(keys)}


def _smallest_out(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    count = math.floor(magnitudes.size * sparsity)
    keep = np.ones(magnitudes.size, dtype=bool)
    if count:
        keep[np.argpartition(magnitudes, count - 1)[:count]] = False
    return keep


# --------------------------------------------------------------------------- Keras


def keras_kernels(model: Any) -> dict[Key, tuple[Any, np.ndarray]]:
    """``(layer name, weight index) -> (layer, array)`` for every kernel of rank >= 2."""
    found = {}
    for layer in keras_layers(model):
        arrays = layer.get_weights()
        for i, (variable, array) in enumerate(zip(layer.weights, arrays)):
            if weight_name(variable).endswith("kernel") and array.ndim >= 2:
                found[(layer.name, i)] = (layer, array)
    if not found:
        raise ModelError("the model has no Conv or Dense kernels to compress.")
    return found


def apply_keras_masks(kernels: Mapping[Key, tuple[Any, np.ndarray]], masks: Mapping[Key, np.ndarray]) -> None:
    """Zero the masked-out elements of each kernel in place (other weights of the layer untouched)."""
    for layer in {id(layer): layer for layer, _ in kernels.values()}.values():
        arrays = layer.get_weights()
        for i in range(len(arrays)):
            if (layer.name, i) in masks:
                arrays[i] = np.where(masks[(layer.name, i)], arrays[i], 0).astype(arrays[i].dtype)
        layer.set_weights(arrays)


def keras_changes(model: Any, keys: list[Key]) -> tuple[LayerChange, ...]:
    """Per-kernel sparsity of ``model`` for the given kernels."""
    layers = {layer.name: layer for layer in keras_layers(model)}
    changes = []
    for name, index in keys:
        layer = layers[name]
        array = layer.get_weights()[index]
        op = type(layer).__name__
        zeros = int(array.size - np.count_nonzero(array))
        changes.append(
            LayerChange(name=name, op=op, params_before=array.size, params_after=array.size, zeros_after=zeros)
        )
    return tuple(changes)


# --------------------------------------------------------------------------- ONNX


def onnx_weights(model: Any) -> dict[str, tuple[str, np.ndarray]]:
    """``initializer name -> (op type, array)`` for float initializers used as Conv/Gemm/MatMul weights."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        for position in ONNX_WEIGHT_INPUTS.get(node.op_type, ()):
            name = node.input[position] if position < len(node.input) else ""
            if name in initializers and name not in found:
                array = numpy_helper.to_array(initializers[name])
                if array.dtype.kind == "f" and array.ndim >= 2:
                    found[name] = (node.op_type, array)
    if not found:
        raise ModelError("the ONNX model has no Conv, Gemm or MatMul weight initializers to compress.")
    return found


def apply_onnx_masks(
    model: Any, weights: Mapping[str, tuple[str, np.ndarray]], masks: Mapping[str, np.ndarray]
) -> None:
    """Replace each masked initializer with its clipped values, in place."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name in masks:
            array = weights[init.name][1]
            init.CopyFrom(numpy_helper.from_array(np.where(masks[init.name], array, 0).astype(array.dtype), init.name))


# --------------------------------------------------------------------------- API


def clip(
    model: str | Path,
    *,
    out: str | Path,
    threshold: float | None = None,
    sparsity: float | None = None,
    scope: str = "layer",
    data: Any = None,
    force: bool = False,
    latency: bool = True,
    trust_code: bool = False,
) -> CompressionReport:
    """Zero small weights of a Keras or ONNX model and report what that buys.

    Args:
        model: A .keras, .h5 or .onnx file.
        out: Where to write the clipped model (.keras/.h5 for Keras, .onnx for ONNX).
        threshold: Zero every kernel weight with ``|w| < threshold``.
        sparsity: Zero exactly this share of kernel weights, smallest magnitude first.
        scope: ``layer``: the share per kernel; ``global``: the share over all kernels together.
        data: Validation samples (path or Dataset): accuracy with labels, else agreement with the original.
        force: Replace ``out`` if it exists.
        latency: Time both models on the host (one thread).
        trust_code: Allow Keras models with Lambda layers.

    Returns:
        The report; the clipped model is at ``report.output``.

    Raises:
        UsageError: bad amounts or output path. OutputExistsError: ``out`` exists without ``force``.
        ModelError: the model has nothing to clip. DataError: the data does not fit.
    """
    check_amount(threshold, sparsity, scope)
    base, out = flow.start(model, out, data=data, force=force, trust_code=trust_code)
    settings = {"threshold": threshold, "sparsity": sparsity, "scope": scope}
    if base.is_keras:
        clipped = copy_keras(base.model)
        kernels = keras_kernels(clipped)
        masks = magnitude_masks({k: a for k, (_, a) in kernels.items()}, **_amount(threshold, sparsity), scope=scope)
        apply_keras_masks(kernels, masks)
        keras_save(clipped, out)
        layers = keras_changes(clipped, list(kernels))
    else:
        from edgepack.deps import require

        proto = require("onnx").load(str(base.artifact.path))
        weights = onnx_weights(proto)
        masks = magnitude_masks({k: a for k, (_, a) in weights.items()}, **_amount(threshold, sparsity), scope=scope)
        apply_onnx_masks(proto, weights, masks)
        onnx_save(proto, out)
        layers = tuple(_onnx_change(name, op, np.where(masks[name], a, 0)) for name, (op, a) in weights.items())
        clipped = None
    settings = {k: v for k, v in settings.items() if v is not None}
    return flow.finish(base, method="clip", out=out, settings=settings, layers=layers, model=clipped, latency=latency)


def _amount(threshold: float | None, sparsity: float | None) -> dict[str, float | None]:
    return {"threshold": threshold, "sparsity": sparsity}


def _onnx_change(name: str, op: str, clipped: np.ndarray) -> LayerChange:
    zeros = int(clipped.size - np.count_nonzero(clipped))
    return LayerChange(name=name, op=op, params_before=clipped.size, params_after=clipped.size, zeros_after=zeros)
