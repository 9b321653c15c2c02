"""The source model's layer names, and which source layer a converter's layer name comes from.

Converters rename layers: TFLite fuses ops into names like
``model_1/conv1_1/Relu;model_1/bn1_1/batchnorm/add_1;model_1/conv1_1/convolution``, tf2onnx invents
``Conv__3``, OpenVINO appends ``/WithoutBiases``. Reports name layers the way the user's model does
(``conv1``); the converter's name is still what a backend accepts, so it is kept alongside.

:func:`source_layer_names` reads the names from the model file without building the model where it
can; :func:`source_layer` matches one converter name against them and answers None rather than
guess. :func:`converter_aliases` adds what a converted graph knows about a layer beyond its name
(the weights and tensors a generated ``Conv__3`` node reads and writes).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import ModelFormat

if TYPE_CHECKING:
    from edgepack.artifact import Artifact

__all__ = [
    "converter_aliases",
    "display_name",
    "short_converter_name",
    "source_layer",
    "source_layer_names",
    "source_layers",
    "source_map",
]

# Path segments edgepack's and TensorFlow's wrappers add around a model's own scopes.
_WRAPPER = re.compile(r"^(edgepack_fixed_shape|StatefulPartitionedCall|PartitionedCall)(_\d+)?$")
_TENSOR_INDEX = re.compile(r":\d+$")
_UNIQUE_SUFFIX = re.compile(r"^(.+)_\d+$")  # Keras scopes a layer `conv1` as `conv1_1` when traced again
_QDQ_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Input", "_QuantizeLinear_Output")
TOOL_LABELS = {ModelFormat.TFLITE: "TFLite", ModelFormat.ONNX: "ONNX", ModelFormat.OPENVINO: "OpenVINO"}


# --------------------------------------------------------------------------- reading the source's names


def source_layer_names(source: Artifact) -> tuple[str, ...]:
    """The layer names of the user's model, read from the file (no framework builds it), in file order.

    Keras (``.keras`` and ``.h5``): every layer of every (nested) model, from the saved config.
    ONNX: node names, node output tensor names and graph inputs. TFLite: tensor names. SavedModel:
    the layers in ``keras_metadata.pb`` when Keras wrote one. The source's own input and output names
    are always included. A file that cannot be read gives just those: names are a courtesy, not a check.
    """
    readers = {
        ModelFormat.KERAS: _keras_names,
        ModelFormat.H5: _h5_names,
        ModelFormat.ONNX: _onnx_names,
        ModelFormat.TFLITE: _tflite_names,
        ModelFormat.SAVEDMODEL: _savedmodel_names,
    }
    found: list[str] = []
    reader = readers.get(source.format)
    if reader is not None:
        try:
            found = list(reader(Path(source.path)))
        except Exception:  # noqa: BLE001 - a damaged or unusual file only loses the names
            found = []
    io = [spec.name for spec in (*source.inputs, *source.outputs)]
    return tuple(dict.fromkeys(name for name in (*found, *io) if name))


def _keras_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return _config_layers(json.loads(zf.read("config.json")))


def _h5_names(path: Path) -> list[str]:
    from edgepack.deps import require

    h5py = require("h5py")
    with h5py.File(path, "r") as fh:
        raw = fh.attrs.get("model_config")
    if raw is None:
        return []
    return _config_layers(json.loads(raw.decode() if isinstance(raw, bytes) else raw))


def _config_layers(config: Any) -> list[str]:
    """Names of the entries of every ``layers`` list in a Keras config (nested models included).

    Only ``layers`` entries count: dtype policies and initializers also carry ``config.name``.
    """
    names, stack = [], [config]
    while stack:  # explicit stack: a damaged config may nest deeper than Python's recursion limit
        node = stack.pop()
        if isinstance(node, dict):
            layers = node.get("layers")
            if isinstance(layers, list):
                for layer in layers:
                    conf = layer.get("config") if isinstance(layer, dict) else None
                    name = conf.get("name") if isinstance(conf, dict) else None
                    name = name or (layer.get("name") if isinstance(layer, dict) else None)
                    if isinstance(name, str):
                        names.append(name)
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return names


def _onnx_names(path: Path) -> list[str]:
    from edgepack.deps import require

    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    names = [i.name for i in graph.input]
    for node in graph.node:
        names += [node.name, *node.output]
    return names


def _tflite_names(path: Path) -> list[str]:
    from edgepack.macs import load_tflite

    names = []
    for graph in load_tflite(path).subgraphs or ():
        for tensor in graph.tensors or ():
            name = tensor.name
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def _savedmodel_names(path: Path) -> list[str]:
    """Layer names in Keras's ``keras_metadata.pb`` (JSON strings inside a protobuf), else none."""
    metadata = path / "keras_metadata.pb"
    if not metadata.is_file():
        return []
    text = metadata.read_bytes().decode("utf-8", errors="replace")
    return list(dict.fromkeys(re.findall(r'"config":\s*\{"name":\s*"([^"]+)"', text)))


# --------------------------------------------------------------------------- matching


def source_layer(
    name: str, source_names: Iterable[str], *, aliases: Mapping[str, Sequence[str]] | None = None
) -> str | None:
    """The source layer a converter's layer ``name`` comes from, or None when nothing matches.

    The name is split into fused parts (``;``), each part into path segments (``/``), with tensor
    indices (``:0``), Q/DQ suffixes and wrapper scopes (``StatefulPartitionedCall``,
    ``edgepack_fixed_shape``) removed. The first fused part that matches wins; within a part, the
    longest run of segments equal to a source name wins, then the deepest single scope (the layer,
    not the model around it), and the last segment (usually the op: ``Relu``, ``add_1``) only when no
    scope matches. A segment also matches as ``NAME_<n>``, Keras's re-traced scope, when it is not
    itself a source name. When the name itself matches nothing,
    ``aliases`` (see :func:`converter_aliases`) gives other names of the same layer to try in turn.

    >>> source_layer("m_1/conv1_1/Relu;m_1/bn1_1/batchnorm/add_1", ["conv1", "bn1", "relu1"])
    'conv1'
    >>> source_layer("Conv__3", ["conv0"]) is None
    True
    """
    return _lookup(name, _prepared(source_names), aliases)


def _prepared(source_names: Iterable[str]) -> dict[str, str]:
    """Cleaned source name -> source name. Bare numbers (old PyTorch exports' tensors ``1``, ``2``) name nothing."""
    cleaned = ((_clean(n), n) for n in source_names if n)
    return {key: name for key, name in cleaned if key and not key.isdigit()}


def _lookup(name: str, names: Mapping[str, str], aliases: Mapping[str, Sequence[str]] | None) -> str | None:
    found = _match(name, names)
    if found is not None or not aliases:
        return found
    for key in _alias_keys(name):
        for other in aliases.get(key, ()):
            if (found := _match(other, names)) is not None:
                return found
    return None


def source_layers(
    name: str, source_names: Iterable[str], *, aliases: Mapping[str, Sequence[str]] | None = None
) -> tuple[str, ...]:
    """Every source layer a (fused) converter name covers: :func:`source_layer` first, then each fused part's.

    >>> source_layers("m_1/relu1_1/Relu;m_1/bn1_1/add_1;m_1/conv1_1/convolution", ["conv1", "bn1", "relu1"])
    ('relu1', 'bn1', 'conv1')
    """
    return _all(name, _prepared(source_names), aliases)


def _all(name: str, names: Mapping[str, str], aliases: Mapping[str, Sequence[str]] | None) -> tuple[str, ...]:
    first = _lookup(name, names, aliases)
    found = [first, *(_match(part, names) for part in str(name).split(";"))]
    return tuple(dict.fromkeys(n for n in found if n is not None)) if first is not None else ()


def source_map(converter_names: Iterable[str], source: Artifact, *converted: Artifact) -> dict[str, tuple[str, ...]]:
    """Each converter layer name -> the source layers it covers (first: its source layer; empty: unknown).

    Args:
        converter_names: Layer names as a backend reports them.
        source: The user's model (its names are the answers).
        converted: The converted models those names live in (their graphs supply aliases).
    """
    wanted = list(dict.fromkeys(converter_names))
    if not wanted:
        return {}
    names, aliases = _prepared(source_layer_names(source)), converter_aliases(*converted)
    return {n: _all(n, names, aliases) for n in wanted}


def _clean(name: str) -> str:
    name = _TENSOR_INDEX.sub("", str(name).strip())
    for suffix in _QDQ_SUFFIXES:
        name = name.removesuffix(suffix)
    return _TENSOR_INDEX.sub("", name).strip("/")


def _segments(part: str) -> list[str]:
    segments = [s for s in _clean(part).split("/") if s]
    segments = [s.removeprefix("serving_default_") for s in segments]
    return [s for s in segments if not _WRAPPER.match(s)]


def _match(name: str, names: Mapping[str, str]) -> str | None:
    for part in str(name).split(";"):
        segments = _segments(part)
        for length in range(len(segments), 1, -1):  # multi-segment source names (``/conv1/Conv``), longest first
            for start in range(len(segments) - length, -1, -1):
                joined = "/".join(segments[start : start + length])
                if joined in names:
                    return names[joined]
        # The scopes before the last segment first: the last is usually the op (``batchnorm/add_1``), which
        # must not be taken for a layer that happens to share its name (Keras's residual ``add_1``).
        for group in (segments[-2::-1], segments[-1:]):
            if (found := _segment_match(group, names)) is not None:
                return found
    return None


def _segment_match(segments: Sequence[str], names: Mapping[str, str]) -> str | None:
    """The first of ``segments`` that is a source name, else the first that is one with a ``_<n>`` suffix."""
    for segment in segments:
        if segment in names:
            return names[segment]
    for segment in segments:
        unique = _UNIQUE_SUFFIX.match(segment)
        if unique and unique.group(1) in names:
            return names[unique.group(1)]
    return None


def _alias_keys(name: str) -> list[str]:
    """``name``, its fused parts and each part's path prefixes (longest first): keys into the aliases."""
    keys = [name]
    for part in name.split(";"):
        segments = part.split("/")
        keys += ["/".join(segments[:n]) for n in range(len(segments), 0, -1)]
    return list(dict.fromkeys(k for k in keys if k))


def converter_aliases(*artifacts: Artifact) -> dict[str, tuple[str, ...]]:
    """Other names of each converted layer, from the converted graphs themselves.

    ONNX: a node's weight (initializer) inputs, then its outputs, by node name: tf2onnx's ``Conv__3``
    reads ``model/conv0/convolution/merged_input:0``. OpenVINO: an op's output tensor names and its
    constant inputs' names. Every artifact: ``meta["source_names"]`` (an output tensor -> the source's
    output name). An artifact that cannot be read adds nothing.
    """
    aliases: dict[str, list[str]] = {}
    for artifact in artifacts:
        for tensor, source in (artifact.meta.get("source_names") or {}).items():
            aliases.setdefault(str(tensor), []).append(str(source))
        reader = {ModelFormat.ONNX: _onnx_aliases, ModelFormat.OPENVINO: _openvino_aliases}.get(artifact.format)
        if reader is None:
            continue
        try:
            for key, values in reader(Path(artifact.path)).items():
                aliases.setdefault(key, []).extend(values)
        except Exception:  # noqa: BLE001 - the aliases only improve names
            continue
    return {key: tuple(dict.fromkeys(values)) for key, values in aliases.items()}


def _onnx_aliases(path: Path) -> dict[str, list[str]]:
    from edgepack.deps import require

    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name: i.name for i in graph.initializer}
    weights |= {o: o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in graph.node:  # a QDQ model reads its weights through DequantizeLinear: name them by the weight
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    return {
        node.name: [*(weights[i] for i in node.input if i in weights), *node.output]
        for node in graph.node
        if node.name and node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")
    }


def _openvino_aliases(path: Path) -> dict[str, list[str]]:
    from edgepack.deps import require

    ov = require("openvino")
    model = ov.Core().read_model(str(path))
    found: dict[str, list[str]] = {}
    for op in model.get_ops():
        names = [n for out in op.outputs() for n in sorted(out.get_names())]
        for value in op.input_values():
            producer = value.get_node()
            if producer.get_type_name() in ("Constant", "Convert", "FakeQuantize"):
                names.append(producer.get_friendly_name())
        found[op.get_friendly_name()] = names
    return found


# --------------------------------------------------------------------------- showing


def short_converter_name(name: str, width: int = 60) -> str:
    """A converter's layer name short enough for a table: wrapper scopes dropped, the first fused part only.

    >>> short_converter_name("StatefulPartitionedCall_1/m_1/conv1_1/Relu;m_1/bn1_1/add")
    'm_1/conv1_1/Relu;...'
    """
    parts = str(name).split(";")
    first = "/".join(s for s in parts[0].split("/") if not _WRAPPER.match(s)) or parts[0]
    more = ";..." if len(parts) > 1 else ""
    room = max(width - len(more), 9)
    if len(first) > room:
        first = first[: room // 2 - 1] + "..." + first[-(room - room // 2 - 2) :]
    return first + more


def display_name(name: str, source: str | None, tool: str | None = None) -> str:
    """``conv1 (TFLite: m_1/conv1_1/Relu;...)`` when the source layer is known, else the short converter name."""
    short = short_converter_name(name)
    if not source or source == short:
        return short
    return f"{source} ({tool}: {short})" if tool else f"{source} ({short})"
