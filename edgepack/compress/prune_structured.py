"""Structured pruning: remove whole Conv filters and Dense units, and every weight that reads them.

Channels are ranked by the L1 norm of their producing kernels (summed over
every producer of a group, so the branches of an ``Add`` are ranked together);
the strongest ``1 - sparsity`` share is kept. The model is rebuilt from its
config with the smaller ``filters``/``units`` and the kept slices of every
weight: the producer's kernel columns and bias, BatchNorm/LayerNorm/PReLU
parameters and depthwise kernels on the way, and the input rows of the next
Conv or Dense (for a Dense after ``Flatten``, the rows of the kept channels at
every spatial position). The result is a smaller dense model: fewer
parameters, fewer MACs, less time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgepack.compress.graph import CHANNEL_PARAMS, PRODUCERS, ChannelPlan, Flat, Node, Space, analyze
from edgepack.compress.measure import weight_name
from edgepack.compress.report import LayerChange
from edgepack.errors import ModelError, UsageError


def rebuild_config(model: Any, sizes: Mapping[str, int], *, seed: int | None = None) -> dict[str, Any]:
    """The model's config with new ``filters``/``units`` for the named layers and no stale build shapes.

    Args:
        model: A Keras 3 functional or Sequential model.
        sizes: Layer name -> new number of filters or units.
        seed: Seed every initializer (layer ``i`` gets ``seed + i``), for fresh reproducible weights.
    """
    config = copy.deepcopy(model.get_config())
    for i, layer in enumerate(config["layers"]):
        layer.pop("build_config", None)  # built again from the new input shapes
        conf = layer["config"]
        name = conf.get("name", layer.get("name"))
        if name in sizes:
            conf["units" if layer["class_name"] == "Dense" else "filters"] = int(sizes[name])
        if seed is not None:
            for key, value in conf.items():
                if key.endswith("_initializer") and isinstance(value, dict) and "seed" in (value.get("config") or {}):
                    value["config"]["seed"] = seed + i
    return config


def build(model: Any, config: dict[str, Any]) -> Any:
    """A new model of the same class from ``config`` (built-in layers only: nothing from the file runs)."""
    try:
        return type(model).from_config(config)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for shape conflicts
        raise ModelError(
            f"cannot rebuild the model with fewer channels ({str(exc).strip().splitlines()[0][:200]}).",
            hint="Exclude the layer named in the message (--exclude), or prune a simpler model.",
        ) from exc


def keep_indices(model: Any, plan: ChannelPlan, sparsity: float) -> dict[int, np.ndarray]:
    """For each cuttable group: the sorted channels to keep (the strongest by L1 norm)."""
    layers = {layer.name: layer for layer in model.layers}
    keep = {}
    for root, group in plan.cuttable().items():
        n = group.channels
        k = max(1, math.floor(n * (1 - sparsity) + 0.5))
        if k >= n:
            continue
        score = np.zeros(n, dtype=np.float64)
        for producer in group.producers:
            kernel = layers[producer].get_weights()[0]
            score += np.abs(kernel).reshape(-1, n).sum(axis=0)
        keep[root] = np.sort(np.argsort(-score, kind="stable")[:k])
    return keep


def indices(plan: ChannelPlan, keep: Mapping[int, np.ndarray], space: Space) -> np.ndarray | None:
    """Kept positions along the last axis of a tensor in ``space`` (None: nothing cut)."""
    if isinstance(space, Flat):
        root = plan.root(space.space)
        if root not in keep:
            return None
        channels = plan.groups[root].channels
        return (np.arange(space.repeat)[:, None] * channels + keep[root][None, :]).ravel()
    return keep.get(plan.root(space))


def slice_weights(
    node: Node, names: list[str], arrays: list[np.ndarray], cut_in: Any, cut_out: Any
) -> list[np.ndarray]:
    """The kept slices of one layer's weights, given the kept input and output channel positions."""
    sliced = []
    for name, array in zip(names, arrays):
        if node.cls in PRODUCERS:
            if name == "kernel" and cut_in is not None:
                array = np.take(array, cut_in, axis=-2)
            if cut_out is not None:
                array = np.take(array, cut_out, axis=-1)
        elif node.cls.startswith("DepthwiseConv") and cut_in is not None:
            array = np.take(array, cut_in, axis=-2 if name.endswith("kernel") else -1)
        elif node.cls in CHANNEL_PARAMS and cut_in is not None and array.ndim and array.shape[-1] != 1:
            array = np.take(array, cut_in, axis=-1)
        sliced.append(array)
    return sliced


def prune_structured(
    model: Any, *, sparsity: float, exclude: tuple[str, ...] = ()
) -> tuple[Any, tuple[LayerChange, ...]]:
    """Remove the weakest ``sparsity`` share of channels from every cuttable group.

    Args:
        model: A Keras 3 functional or Sequential model (left untouched).
        sparsity: Share of each group's channels to remove, in [0, 1).
        exclude: Layers whose output channels stay.

    Returns:
        The smaller model with copied weights, and what changed per layer.

    Raises:
        ModelError: a layer blocks the cut (named, with the layers to exclude).
    """
    if not 0 <= sparsity < 1:
        raise UsageError(f"--sparsity must be in [0, 1), got {sparsity}.", hint="0.5 removes half the channels.")
    plan = analyze(model, mode="prune", exclude=exclude)
    keep = keep_indices(model, plan, sparsity)
    sizes = {p: len(kept) for root, kept in keep.items() for p in plan.groups[root].producers}
    smaller = build(model, rebuild_config(model, sizes))
    return smaller, _copy_weights(model, smaller, plan, keep)


def _copy_weights(
    model: Any, smaller: Any, plan: ChannelPlan, keep: Mapping[int, np.ndarray]
) -> tuple[LayerChange, ...]:
    old_layers = {layer.name: layer for layer in model.layers}
    nodes = {node.name: node for node in plan.nodes}
    changes = []
    for layer in smaller.layers:
        old = old_layers[layer.name]
        if not old.weights:
            continue
        node = nodes[layer.name]
        cut_in = indices(plan, keep, plan.spaces[node.inputs[0]]) if node.inputs else None
        cut_out = indices(plan, keep, plan.spaces[node.name]) if node.cls in PRODUCERS else None
        arrays = old.get_weights()
        sliced = slice_weights(node, [weight_name(w) for w in old.weights], arrays, cut_in, cut_out)
        layer.set_weights(sliced)
        produced = node.cls in PRODUCERS
        changes.append(
            LayerChange(
                name=layer.name,
                op=node.cls,
                params_before=sum(int(a.size) for a in arrays),
                params_after=sum(int(a.size) for a in sliced),
                zeros_after=sum(int(a.size - np.count_nonzero(a)) for a in sliced),
                channels_before=int(arrays[0].shape[-1]) if produced else None,
                channels_after=int(sliced[0].shape[-1]) if produced else None,
            )
        )
    return tuple(changes)
