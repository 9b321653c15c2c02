"""``edgepack inspect``: what a model is, what it costs, and which targets can run it.

ONNX and .tflite files are read as they are (no runtime runs them). Keras and
SavedModel models are converted in a temporary folder, with the same
converters the pipeline uses: to ONNX (tf2onnx) for the operator graph, MACs
and the ONNX targets, and to .tflite (TFLiteConverter, builtins only) for the
LiteRT targets.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Layout, ModelFormat, TensorSpec, sha256_file
from edgepack.compat import CompatVerdict, check_compatibility
from edgepack.deps import require
from edgepack.errors import ConversionError, MissingDependencyError, ModelError
from edgepack.macs import Cost, estimate_onnx, estimate_tflite, load_tflite, onnx_op_key, tflite_op_name, tflite_schema
from edgepack.shapes import InputShape

if TYPE_CHECKING:  # pragma: no cover
    from edgepack.compat.check import OpKind
    from edgepack.profiles import Profile

_NO_COST = Cost(macs=0, params=0, weight_bytes=0, activation_bytes=0)


@dataclass(frozen=True)
class InspectReport:
    """Everything ``edgepack inspect`` reports about one model (``to_dict()`` is the ``--json`` form).

    ``ops`` is the histogram of the operator graph the model is, or converts to
    first: ONNX op types (``domain.OpType`` outside ai.onnx) for ONNX, Keras and
    SavedModel models; TFLite builtins for a .tflite. ``tflite_ops`` holds the
    TFLite builtins of a .tflite, or of a Keras/SavedModel model converted with
    TFLiteConverter. ``shapes`` are the input shapes the MACs were counted at.
    """

    path: str
    format: ModelFormat
    file_bytes: int
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_kind: OpKind = "onnx"
    ops: Mapping[str, int] = field(default_factory=dict)
    opset: int | None = None
    tflite_ops: Mapping[str, int] = field(default_factory=dict)
    tflite_op_versions: Mapping[str, int] = field(default_factory=dict)
    layers: Mapping[str, int] = field(default_factory=dict)
    cost: Cost = _NO_COST
    shapes: Mapping[str, tuple[int | None, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    compat: tuple[CompatVerdict, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format.value,
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "op_kind": self.op_kind,
            "ops": dict(self.ops),
            "opset": self.opset,
            "tflite_ops": dict(self.tflite_ops),
            "tflite_op_versions": dict(self.tflite_op_versions),
            "layers": dict(self.layers),
            **self.cost.to_dict(),
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "notes": list(self.notes),
            "compat": [v.to_dict() for v in self.compat],
        }


def inspect_model(
    path: str | Path,
    *,
    input_shapes: Mapping[str, tuple[int, ...] | InputShape] | None = None,
    batch: int = 1,
    trust_code: bool = False,
    profiles: Sequence[Profile] | None = None,
) -> InspectReport:
    """Inspect a model file and check it against every built-in target (or ``profiles``).

    Args:
        path: a .onnx, .tflite, .keras, .h5 file or a SavedModel folder.
        input_shapes: input name -> shape, for dynamic dims ("" names the only input); a range is inspected at
            its opt shape.
        batch: the leading dim of inputs whose batch is dynamic and not in ``input_shapes``.
        trust_code: allow Keras models with Lambda layers (Python code) to load.
        profiles: the targets to check; default all built-in profiles.

    Raises:
        ModelError: the file is not a readable model.
        MissingDependencyError: the framework that reads this format is not installed.
    """
    from edgepack import memory
    from edgepack.profiles import load_all
    from edgepack.source import detect_format

    path = Path(path)
    fmt = detect_format(path)
    memory.check_fits(path, {"the model loaded and converted": memory.MODEL_COPIES * memory.model_bytes(path)})
    shapes = {k: v.static() if isinstance(v, InputShape) else v for k, v in (input_shapes or {}).items()}
    report = _READERS[fmt](path, fmt, shapes, batch, trust_code)
    checked = tuple(_verdict(p, report) for p in (load_all() if profiles is None else profiles))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return replace(report, file_bytes=size, sha256=sha256_file(path), compat=checked)


# --------------------------------------------------------------------------- per-target verdicts


def _verdict(profile: Profile, report: InspectReport) -> CompatVerdict:
    """Check the graph the target's converter starts from: .tflite ops for LiteRT, else the ONNX graph."""
    if profile.format is ModelFormat.TFLITE and report.tflite_ops:
        versions = report.tflite_op_versions
        return check_compatibility(report.tflite_ops, profile, opset=None, op_kind="tflite", op_versions=versions)
    if profile.format is ModelFormat.TFLITE and report.format is not ModelFormat.ONNX:
        return _unknown(profile, "the model could not be converted to .tflite here (see notes)")
    if not report.ops:
        return _unknown(profile, "no operator graph to check (see notes)")
    return check_compatibility(report.ops, profile, opset=report.opset, op_kind=report.op_kind)


def _unknown(profile: Profile, why: str) -> CompatVerdict:
    return CompatVerdict(profile.name, profile.runtime.value, ok=False, notes=(why,))


# --------------------------------------------------------------------------- ONNX


def _onnx_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _onnx_nodes(sub)


def _onnx_report(
    model: Any, shapes: Mapping[str, Sequence[int]], batch: int
) -> tuple[dict[str, int], int | None, Cost]:
    """Op histogram, ai.onnx opset and cost of a loaded ONNX model."""
    ops = Counter(onnx_op_key(n.domain, n.op_type) for n in _onnx_nodes(model.graph))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return dict(ops.most_common()), opset, estimate_onnx(model, input_shapes=shapes, batch=batch)


def _inspect_onnx(
    path: Path, fmt: ModelFormat, shapes: dict[str, tuple[int, ...]], batch: int, trust_code: bool
) -> InspectReport:
    from edgepack.modelio import read_io

    onnx = require("onnx")
    inputs, outputs = read_io(path, fmt)
    shapes = _name_single(shapes, inputs)
    model = onnx.load(str(path), load_external_data=False)
    ops, opset, cost = _onnx_report(model, shapes, batch)
    used = {i.name: _used_shape(i, shapes, batch) for i in inputs}
    return _base(path, fmt, inputs, outputs, ops=ops, opset=opset, cost=cost, shapes=used, notes=cost.notes)


def _used_shape(spec: TensorSpec, shapes: Mapping[str, Sequence[int]], batch: int) -> tuple[int | None, ...]:
    if spec.name in shapes:
        return tuple(shapes[spec.name])
    dims = list(spec.shape)
    if dims and dims[0] is None:
        dims[0] = batch
    return tuple(dims)


def _name_single(shapes: dict[str, tuple[int, ...]], inputs: Sequence[TensorSpec]) -> dict[str, tuple[int, ...]]:
    """Give the unnamed shape ("" key, from a bare ``--input-shape``) the name of the only input."""
    if "" in shapes and len(inputs) == 1:
        shapes = {**shapes, inputs[0].name: shapes[""]}
    shapes.pop("", None)
    return shapes


# --------------------------------------------------------------------------- TFLite


def _tflite_ops(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Histogram of a .tflite's operators (all subgraphs) and the highest version of each."""
    schema = tflite_schema()
    model = load_tflite(path)
    ops: Counter[str] = Counter()
    versions: dict[str, int] = {}
    for graph in model.subgraphs or ():
        for operator in graph.operators or ():
            code = model.operatorCodes[operator.opcodeIndex]
            name = tflite_op_name(schema, code)
            ops[name] += 1
            versions[name] = max(versions.get(name, 1), int(code.version or 1))
    return dict(ops.most_common()), versions


def custom_tflite_ops(path: Path) -> list[str]:
    """The custom operators of a .tflite (MediaPipe's ``Convolution2DTransposeBias``, ``Flex*`` TF ops...).

    No target runtime has their kernels (LiteRT needs them registered by the app; converters pass them
    through), so such a model can only be refused, naming them all. The file is read, not loaded.
    """
    schema = tflite_schema()
    model = load_tflite(path)
    custom = getattr(schema.BuiltinOperator, "CUSTOM", 32)
    found = {
        tflite_op_name(schema, code)
        for code in model.operatorCodes or ()
        if max(code.builtinCode, code.deprecatedBuiltinCode) == custom
    }
    return sorted(found)


def _inspect_tflite(
    path: Path, fmt: ModelFormat, shapes: dict[str, tuple[int, ...]], batch: int, trust_code: bool
) -> InspectReport:
    from edgepack.modelio import read_io

    inputs, outputs = read_io(path, fmt)
    ops, versions = _tflite_ops(path)
    cost = estimate_tflite(path)
    notes = list(cost.notes)
    if shapes:
        notes.append("--input-shape is not applied to a .tflite: MACs are counted at the shapes stored in the file")
    used = {i.name: tuple(1 if d is None else d for d in i.shape) for i in inputs}
    return _base(
        path, fmt, inputs, outputs, op_kind="tflite", ops=ops, tflite_ops=ops, tflite_op_versions=versions,
        cost=cost, shapes=used, notes=tuple(notes),
    )  # fmt: skip


# --------------------------------------------------------------------------- Keras / SavedModel


def _inspect_tf(
    path: Path, fmt: ModelFormat, shapes: dict[str, tuple[int, ...]], batch: int, trust_code: bool
) -> InspectReport:
    """Convert to ONNX and to .tflite in a temporary folder and inspect both graphs."""
    from edgepack.modelio import read_io
    from edgepack.source import open_source

    layers, keras_notes = _keras_layers(path, fmt, trust_code) if fmt is not ModelFormat.SAVEDMODEL else ({}, [])
    try:
        src = open_source(path, input_shapes=shapes, batch=batch, trust_code=trust_code)
    except ModelError as exc:  # dynamic dims edgepack will not guess: report what can be read
        inputs, outputs = read_io(path, fmt, trust_code=trust_code)
        notes = (f"no operators or MACs: {exc.one_line()}", *keras_notes)
        return _base(path, fmt, inputs, outputs, layers=layers, notes=notes)
    declared = tuple(_spec(d) for d in src.meta.get("declared_inputs", ())) or src.inputs
    with tempfile.TemporaryDirectory(prefix="edgepack-inspect-") as tmp:
        onnx_part, onnx_notes = _converted_onnx(src, Path(tmp), trust_code)
        tflite_part, tflite_notes = _converted_tflite(src, Path(tmp), trust_code)
    cost = onnx_part.pop("cost", _NO_COST)
    return _base(
        path, fmt, declared, src.outputs, layers=layers, cost=cost, shapes={s.name: s.shape for s in src.inputs},
        notes=(*onnx_notes, *tflite_notes, *keras_notes, *cost.notes), **onnx_part, **tflite_part,
    )  # fmt: skip


def _converted_onnx(src: Any, tmp: Path, trust_code: bool) -> tuple[dict[str, Any], list[str]]:
    """``ops`` and ``cost`` of the tf2onnx conversion (its opset is edgepack's choice, not the model's)."""
    from edgepack.convert import ConvertOptions, convert_once

    try:
        onnx_model = convert_once(src, ModelFormat.ONNX, tmp / "onnx", ConvertOptions(trust_code=trust_code))
    except (ConversionError, MissingDependencyError) as exc:
        return {}, [f"tf2onnx failed, so the ONNX targets are unknown: {exc.one_line()}"]
    ops, opset, cost = _onnx_report(require("onnx").load(str(onnx_model.path)), {}, 1)
    return {"ops": ops, "cost": cost}, [f"operators and MACs are those of the tf2onnx conversion (opset {opset})"]


def _converted_tflite(src: Any, tmp: Path, trust_code: bool) -> tuple[dict[str, Any], list[str]]:
    """TFLite builtins (and their versions) of the TFLiteConverter conversion, builtins only."""
    from edgepack.convert import ConvertOptions, convert_once

    try:
        tflite = convert_once(src, ModelFormat.TFLITE, tmp / "tflite", ConvertOptions(trust_code=trust_code))
    except (ConversionError, MissingDependencyError) as exc:
        return {}, [f"TFLiteConverter (builtins only) failed, so the LiteRT targets are unknown: {exc.one_line()}"]
    ops, versions = _tflite_ops(tflite.path)
    return {"tflite_ops": ops, "tflite_op_versions": versions}, []


def _spec(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], Layout(d["layout"]))


def _keras_layers(path: Path, fmt: ModelFormat, trust_code: bool) -> tuple[dict[str, int], list[str]]:
    """Histogram of a Keras model's layer classes (a nested model counts and adds its own), and its param count."""
    from edgepack.modelio import load_keras

    counts: Counter[str] = Counter()

    def walk(layer: Any) -> None:
        for child in getattr(layer, "layers", None) or ():
            counts[type(child).__name__] += 1
            walk(child)

    model = load_keras(path, fmt, trust_code=trust_code)
    walk(model)
    return dict(counts.most_common()), [f"Keras counts {model.count_params()} parameters (before conversion folds any)"]


def _base(
    path: Path, fmt: ModelFormat, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], **fields: Any
) -> InspectReport:
    return InspectReport(str(path), fmt, 0, "", tuple(inputs), tuple(outputs), **fields)


def _inspect_torch(
    path: Path, fmt: ModelFormat, shapes: dict[str, tuple[int, ...]], batch: int, trust_code: bool
) -> InspectReport:
    """A PyTorch model, read through the ONNX graph its export makes (checked against PyTorch)."""
    from edgepack.convert import ConvertOptions, convert_once
    from edgepack.source import open_source

    src = open_source(path, input_shapes=shapes, batch=batch, trust_code=trust_code)
    with tempfile.TemporaryDirectory(prefix="edgepack-inspect-") as tmp:
        onnx_model = convert_once(src, ModelFormat.ONNX, Path(tmp), ConvertOptions(trust_code=trust_code))
        report = _inspect_onnx(Path(onnx_model.path), ModelFormat.ONNX, shapes, batch, trust_code)
    note = f"operators and MACs are those of the ONNX export ({onnx_model.meta.get('exporter', 'torch.onnx')})"
    return replace(report, path=str(path), format=fmt, notes=(note, *report.notes))


_READERS = {
    ModelFormat.ONNX: _inspect_onnx,
    ModelFormat.TORCH: _inspect_torch,
    ModelFormat.TFLITE: _inspect_tflite,
    ModelFormat.KERAS: _inspect_tf,
    ModelFormat.H5: _inspect_tf,
    ModelFormat.SAVEDMODEL: _inspect_tf,
}


# --------------------------------------------------------------------------- human output


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _histogram(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in counts.items())


_STYLE = {"compatible": "green", "incompatible": "red", "unknown": "yellow"}


def render(report: InspectReport, *, top: int = 20) -> Any:
    """The report as rich tables: model, inputs/outputs, operators, per-target compatibility, notes."""
    from rich.console import Group
    from rich.table import Table

    model = Table(title=f"{Path(report.path).name} ({report.format.value})", show_header=False)
    cost = report.cost
    shapes = ", ".join(f"{name}={_shape(shape)}" for name, shape in report.shapes.items())
    for key, value in (
        ("size", _size(report.file_bytes)),
        ("opset", report.opset),
        ("parameters", _si(cost.params)),
        ("MACs", f"{_si(cost.macs)}" + (f" at {shapes}" if shapes else "")),
        ("weights", _size(cost.weight_bytes)),
        ("activations", _size(cost.activation_bytes)),
        ("Keras layers", _histogram(report.layers)),
        ("TFLite ops", _histogram(report.tflite_ops) if report.op_kind != "tflite" else ""),
    ):
        if value not in (None, ""):
            model.add_row(key, str(value))
    io = Table("", "name", "shape", "dtype", "layout", title="Inputs and outputs")
    for kind, specs in (("in", report.inputs), ("out", report.outputs)):
        for spec in specs:
            io.add_row(kind, spec.name, _shape(spec.shape), spec.dtype, spec.layout.value)
    ops = Table("operator", "count", "MACs", title=f"Operators ({report.op_kind})")
    for op, count in list(report.ops.items())[:top]:
        ops.add_row(op, str(count), _si(cost.macs_by_op[op]) if op in cost.macs_by_op else "")
    if len(report.ops) > top:
        ops.add_row(f"... {len(report.ops) - top} more", "", "")
    compat = Table("target", "runtime", "verdict", "unsupported", "unknown", title="Compatibility")
    for v in report.compat:
        style = _STYLE[v.verdict]
        compat.add_row(
            v.target, v.runtime, f"[{style}]{v.verdict}[/{style}]", ", ".join(v.unsupported), ", ".join(v.unknown)
        )
    notes = [f"{v.target}: {note}" for v in report.compat for note in v.notes]  # full lines: they read at 80 columns
    parts: list[Any] = [model, io, ops, compat, *(["\n".join(notes)] if notes else [])]
    if report.notes:
        parts.append("\n".join(f"note: {n}" for n in report.notes))
    return Group(*parts)


def operators(path: Path, fmt: ModelFormat) -> tuple[dict[str, int], str, int | None, dict[str, int]]:
    """Operators of an ONNX or .tflite file: (histogram, op kind, ai.onnx opset, TFLite op versions)."""
    if fmt is ModelFormat.TFLITE:
        ops, versions = _tflite_ops(path)
        return ops, "tflite", None, versions
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(onnx_op_key(n.domain, n.op_type) for n in _onnx_nodes(model.graph))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return dict(ops.most_common()), "onnx", opset, {}
