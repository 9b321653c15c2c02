"""Channel groups of a Keras model: which output channels of which layers must be cut (or scaled) together.

Every tensor's last axis belongs to a channel *space*. A Conv or Dense layer
starts a new space (its filters or units); channel-wise layers (BatchNorm,
activations, pooling, depthwise Conv, dropout, padding) pass their input's space
through; ``Flatten`` turns a space into a flat one (each channel repeated per
spatial position); ``Add``-like merges unite the spaces of their inputs, so the
branches of a residual block are cut consistently. A space is *fixed* when it
is a model input or output, an excluded layer's output, or comes from a layer
this module does not understand; a group with a fixed member is left alone.
A layer it does not understand that reads a cuttable space is a *blocker*:
cutting would silently break it, so :func:`analyze` refuses, naming it.

Only Keras 3 functional and Sequential models are read, through their config
(no code from the model file runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgepack.errors import ModelError

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense"}
CHANNEL_PARAMS = {"BatchNormalization", "LayerNormalization", "PReLU", "DepthwiseConv1D", "DepthwiseConv2D"}
PASS_THROUGH = CHANNEL_PARAMS | {
    *("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity", "ActivityRegularization"),
    *("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout"),
    *("AlphaDropout", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D"),
    *("UpSampling1D", "UpSampling2D", "UpSampling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D"),
    *("AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D"),
    *("GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D"),
    "GlobalMaxPooling3D",
}
MERGES = {"Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply"}
# Layers that only work with the channel counts they see; in "width" mode they may follow scaled layers.
SHAPE_AGNOSTIC_IN_WIDTH = {"Concatenate"}
MODEL_CLASSES = {"Functional", "Sequential"}


@dataclass(frozen=True)
class Node:
    """One layer call: name, class, config and the layers whose outputs it reads, in order."""

    name: str
    cls: str
    config: Mapping[str, Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Flat:
    """A flattened space: ``repeat`` spatial positions, each holding every channel of ``space``."""

    space: int
    repeat: int


Space = int | Flat


@dataclass
class Group:
    """Spaces that must be cut together: their channel count, producing layers, and why fixed (if so)."""

    channels: int
    producers: list[str] = field(default_factory=list)
    fixed: str | None = None


@dataclass(frozen=True)
class Blocker:
    """A layer that reads channels it cannot follow through a cut."""

    name: str
    cls: str
    reason: str
    inputs: tuple[Space, ...]


@dataclass
class ChannelPlan:
    """The result of :func:`analyze`: every layer's output space and the groups of spaces."""

    nodes: list[Node]
    spaces: dict[str, Space]
    groups: dict[int, Group]
    parent: dict[int, int]

    def root(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def group(self, space: Space) -> Group:
        return self.groups[self.root(space.space if isinstance(space, Flat) else space)]

    def cuttable(self) -> dict[int, Group]:
        """Groups that may change size: not fixed, made by at least one Conv/Dense."""
        return {r: g for r, g in self.groups.items() if self.root(r) == r and g.fixed is None and g.producers}


def model_nodes(model: Any) -> list[Node]:
    """The layer calls of a Keras 3 functional or Sequential model, from its config, in topological order.

    Raises:
        ModelError: a subclassed or legacy (tf_keras) model, or a layer called more than once.
    """
    cls = type(model).__name__
    if type(model).__module__.startswith("tf_keras") or cls not in MODEL_CLASSES:
        raise ModelError(
            f"structured pruning needs a Keras 3 functional or Sequential model; this one is {cls}"
            f" ({type(model).__module__}).",
            hint="Rebuild it with the functional API and save it as .keras with Keras 3.",
        )
    config = model.get_config()
    if cls == "Sequential":
        nodes, previous = [], tuple[str, ...]()
        for layer in config["layers"]:
            name = layer["config"]["name"]
            nodes.append(Node(name, layer["class_name"], layer["config"], previous))
            previous = (name,)
        return nodes
    nodes = []
    for layer in config["layers"]:
        calls = layer.get("inbound_nodes") or []
        if len(calls) > 1:
            raise ModelError(
                f"layer '{layer['name']}' is called {len(calls)} times (shared weights); structured pruning"
                " cannot cut it for every call.",
                hint="Give each call its own layer, or exclude it.",
            )
        inputs = tuple(_history(calls[0].get("args", [])) if calls else [])
        nodes.append(Node(layer["name"], layer["class_name"], layer["config"], inputs))
    return nodes


def _history(value: Any) -> list[str]:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for item in value.values() for name in _history(item)]
    if isinstance(value, list | tuple):
        return [name for item in value for name in _history(item)]
    return []


def output_layers(model: Any) -> set[str]:
    """Names of the layers whose outputs are model outputs."""
    config = model.get_config()
    if type(model).__name__ == "Sequential":
        return {config["layers"][-1]["config"]["name"]}
    return set(_output_names(config.get("output_layers", [])))


def _output_names(value: Any) -> list[str]:
    if isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str):
        return [value[0]]
    return [n for item in value for n in _output_names(item)] if isinstance(value, list | tuple) else []


class _Analyzer:
    def __init__(self, shapes: Mapping[str, tuple], mode: str) -> None:
        self.shapes, self.mode = shapes, mode
        self.spaces: dict[str, Space] = {}
        self.groups: dict[int, Group] = {}
        self.parent: dict[int, int] = {}
        self.blockers: list[Blocker] = []

    def new(self, channels: int, producer: str | None = None, fixed: str | None = None) -> int:
        space = len(self.parent)
        self.parent[space] = space
        self.groups[space] = Group(channels, [producer] if producer else [], fixed)
        return space

    def plan(self, nodes: list[Node]) -> ChannelPlan:
        return ChannelPlan(nodes, self.spaces, self.groups, self.parent)

    def unite(self, spaces: Iterable[int]) -> int:
        plan = self.plan([])
        roots = sorted({plan.root(s) for s in spaces})
        first = roots[0]
        for other in roots[1:]:
            self.parent[other] = first
            group, merged = self.groups[first], self.groups[other]
            group.producers += merged.producers
            group.fixed = group.fixed or merged.fixed
        return first

    def visit(self, node: Node) -> None:
        ins = [self.spaces[name] for name in node.inputs]
        channels = self._channels(node.name)
        if not ins:
            self.spaces[node.name] = self.new(channels, fixed="model input")
            return
        reason = _unsupported(node, ins, self.mode)
        if reason is not None:
            self._block(node, ins, reason, channels)
        elif node.cls in PRODUCERS:
            self.spaces[node.name] = self.new(channels, producer=node.name)
        elif node.cls == "Flatten":
            source = ins[0]
            repeat = math.prod(self.shapes[node.inputs[0]][1:-1]) if not isinstance(source, Flat) else 1
            self.spaces[node.name] = source if isinstance(source, Flat) else Flat(source, repeat)
        elif node.cls in MERGES:
            self.spaces[node.name] = self.unite(s for s in ins if isinstance(s, int))
        else:
            self.spaces[node.name] = ins[0]

    def _block(self, node: Node, ins: list[Space], reason: str, channels: int) -> None:
        fixed = f"made by {node.cls} '{node.name}'"
        if not (self.mode == "width" and node.cls in SHAPE_AGNOSTIC_IN_WIDTH):
            self.blockers.append(Blocker(node.name, node.cls, reason, tuple(ins)))
        self.spaces[node.name] = self.new(channels, fixed=fixed)

    def _channels(self, name: str) -> int:
        shape = self.shapes.get(name) or (None,)
        return int(shape[-1]) if isinstance(shape[-1], int) else 0


def _unsupported(node: Node, ins: list[Space], mode: str) -> str | None:
    """Why ``node`` cannot follow a cut of its input channels (None: it can)."""
    cfg, cls = node.config, node.cls
    if cfg.get("data_format") == "channels_first":
        return "it is channels_first (only channels_last is supported)"
    if cls in PRODUCERS and int(cfg.get("groups", 1) or 1) != 1:
        return f"grouped convolution (groups={cfg['groups']}) is not supported"
    if cls.startswith("DepthwiseConv") and int(cfg.get("depth_multiplier", 1)) != 1:
        return f"depthwise convolution with depth_multiplier={cfg['depth_multiplier']} is not supported"
    if cls in ("BatchNormalization", "LayerNormalization") and cfg.get("axis") not in (-1, [-1]):
        return f"it normalizes over axis {cfg.get('axis')}, not the channel axis"
    if cls in MERGES and (len(ins) < 2 or any(isinstance(s, Flat) for s in ins)):
        return "it merges flattened tensors"
    if cls == "Concatenate":
        return "concatenating channels of pruned branches is not supported"
    if cls in PRODUCERS or cls in PASS_THROUGH or cls in MERGES or cls == "Flatten":
        return None
    return f"{cls} is not a layer structured pruning can cut through"


def analyze(model: Any, *, mode: str = "prune", exclude: Iterable[str] = ()) -> ChannelPlan:
    """Group the model's channels and check that every cuttable group can be cut safely.

    Args:
        model: A Keras 3 functional or Sequential model.
        mode: ``prune`` (weights are sliced; Concatenate blocks) or ``width`` (fresh weights; it does not).
        exclude: Layers whose output channels must stay as they are.

    Raises:
        ModelError: one message naming every layer that blocks a cut, with the layers to exclude.
    """
    nodes = model_nodes(model)
    lambdas = [n.name for n in nodes if n.cls == "Lambda"]
    if lambdas:
        raise ModelError(
            f"cannot change channels safely: Lambda layer(s) {', '.join(lambdas)} hold Python code.",
            hint="Rebuild the model with built-in layers instead of Lambda.",
        )
    shapes = _shapes(model)
    known = {n.name for n in nodes}
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise ModelError(f"excluded layer(s) {', '.join(unknown)} are not in the model.")
    analyzer = _Analyzer(shapes, mode)
    for node in nodes:
        analyzer.visit(node)
    plan = analyzer.plan(nodes)
    for name in output_layers(model):
        plan.group(analyzer.spaces[name]).fixed = "model output"
    for name in exclude:
        plan.group(analyzer.spaces[name]).fixed = f"excluded ('{name}')"
    _refuse_blockers(plan, analyzer.blockers)
    return plan


def _refuse_blockers(plan: ChannelPlan, blockers: list[Blocker]) -> None:
    live = [b for b in blockers if any(plan.group(s).fixed is None and plan.group(s).producers for s in b.inputs)]
    if not live:
        return
    feeders = sorted(
        {p for b in live for s in b.inputs for p in plan.group(s).producers if plan.group(s).fixed is None}
    )
    what = "; ".join(f"layer '{b.name}' ({b.cls}): {b.reason}" for b in live)
    raise ModelError(
        f"cannot prune channels safely: {what}.",
        hint=f"Leave the channels feeding it alone with --exclude {','.join(feeders)}, or prune a model without it.",
    )


def _shapes(model: Any) -> dict[str, tuple]:
    """Output shape of every layer (batch dim included), by layer name."""
    shapes = {}
    for layer in model.layers:
        try:
            shapes[layer.name] = tuple(layer.output.shape)
        except (AttributeError, ValueError):  # a layer with several outputs or calls
            continue
    for tensor in getattr(model, "inputs", None) or []:
        history = getattr(tensor, "_keras_history", None)
        if history:
            shapes[history[0].name] = tuple(tensor.shape)
    return shapes
