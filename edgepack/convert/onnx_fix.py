"""ONNX -> ONNX: fix dynamic input dims (or keep ranges dynamic), re-infer shapes, cap the opset, run it.

Fixing dims declares the inputs' new dims and re-infers every other shape: stale ``value_info``
is dropped, not patched. For runtimes that run dynamic shapes, dims given a range stay dynamic.
The result is run once in ONNX Runtime at each shape. TensorRT on a Jetson parses only up to a
given opset (and IR version); a model with a newer opset is brought down with
``onnx.version_converter``. A model whose opset is already at or below the target keeps it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert.ortcheck import random_feeds, run_onnx
from edgepack.deps import require
from edgepack.errors import ConversionError, ModelError
from edgepack.modelio import describe, read_specs
from edgepack.shapes import DimRange, InputShape, corner_specs
from edgepack.tools import first_line, fresh_dir, tool_meta

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions
from edgepack.convert.onnx_opset import cap_opset, model_opset  # noqa: F401 - model_opset: re-exported

_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot serialise 2 GiB; bigger models keep weights outside
_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}  # operator domains ONNX Runtime's CPU EP runs


def load_onnx(path: Path) -> Any:
    """Load an ONNX model (with its external data) or raise ModelError."""
    onnx = require("onnx")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a readable ONNX model ({first_line(exc)}).", hint="Re-export it.") from exc


def save_onnx(model: Any, path: Path) -> tuple[Path, ...]:
    """Save a model; one over ~1.8 GB keeps its weights in ``<name>.data`` beside it. Returns its files."""
    onnx = require("onnx")
    if model.ByteSize() < _EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path))
        return (path,)
    data = path.with_name(path.name + ".data")
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return (path, data)


def fix_input_shapes(model: Any, inputs: Sequence[TensorSpec], *, check: bool = True) -> list[str]:
    """Set every graph input named in ``inputs`` to its static shape; returns the names changed.

    Other shapes are re-inferred, not patched (stale ``value_info``, or a ``dim_param`` shared by two dims as
    in PaddleOCR exports, would contradict the new ones). With ``check`` the result is run in ONNX Runtime.

    Raises:
        ConversionError: a fixed dim of the model contradicts the wanted shape, or the fixed model does not run.
    """
    changed = set_input_dims(model, {spec.name: tuple(spec.shape) for spec in inputs})
    if changed:
        reinfer_shapes(model)
        if check:
            check_runs(model, [inputs])
    return changed


def keep_dynamic(
    model: Any, inputs: Sequence[TensorSpec], ranges: Sequence[InputShape], *, check: bool = True
) -> list[str]:
    """Fix every input dim of ``model`` but the ``ranges`` dims, which get a ``dim_param`` ``<input>_dim<i>``.

    ``inputs`` are the source's static specs (a range's opt shape); with ``check`` the result is run in
    ONNX Runtime at the min, opt and max shapes. Returns the names of the inputs whose declared dims changed.

    Raises:
        ConversionError: a fixed dim of the model contradicts a shape, or the model does not run at a shape.
    """
    by_name = {shape.name: shape for shape in ranges}
    missing = sorted(set(by_name) - {value.name for value in model.graph.input})
    if missing:
        raise ConversionError(
            f"the ONNX model has no input {', '.join(missing)} to keep dynamic.",
            hint=f"Its inputs are {', '.join(v.name for v in model.graph.input)}; name those in --input-shape.",
        )
    dims: dict[str, tuple[int | str | None, ...]] = {spec.name: tuple(spec.shape) for spec in inputs}
    for name, shape in by_name.items():
        dims[name] = tuple(f"{name}_dim{i}" if isinstance(d, DimRange) else d for i, d in enumerate(shape.dims))
    changed = set_input_dims(model, dims)
    if changed:
        reinfer_shapes(model)
    if check and (changed or ranges):
        check_runs(model, corner_specs(inputs, ranges))
    return changed


def set_input_dims(model: Any, wanted: Mapping[str, Sequence[int | str | None]]) -> list[str]:
    """Declare each named graph input's dims (an int is fixed, a str a ``dim_param``); returns the names changed.

    Raises:
        ConversionError: a rank or a fixed dim of the model contradicts the wanted dims.
    """
    changed = []
    for value in model.graph.input:
        shape = wanted.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        declared = [_dim(d) for d in dims]
        clash = len(declared) != len(shape) or any(
            isinstance(have, int) and have != want for have, want in zip(declared, shape)
        )
        if clash:
            raise ConversionError(
                f"cannot give ONNX input {value.name} of shape {_show(declared)} the shape {_show(shape)}.",
                hint="Keep the model's rank and fixed dims (--input-shape NAME=...); only its dynamic dims change.",
            )
        if declared == list(shape) and all(d.HasField("dim_value") == isinstance(w, int) for d, w in zip(dims, shape)):
            continue
        for dim, want in zip(dims, shape):
            dim.Clear()
            if isinstance(want, int):
                dim.dim_value = want
            elif want is not None:
                dim.dim_param = want
        changed.append(value.name)
    return changed


def _dim(dim: Any) -> int | str | None:
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    return dim.dim_param if dim.HasField("dim_param") and dim.dim_param else None


def _show(shape: Sequence[int | str | None]) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def reinfer_shapes(model: Any) -> None:
    """Drop every ``value_info`` (in subgraphs too) and re-infer intermediate and output shapes, in place.

    An output keeps a declared dim only where inference leaves that dim unknown; where they differ the
    declared one was stale. Weights over 1 MiB are set aside meanwhile in a model near protobuf's 2 GiB limit.

    Raises:
        ConversionError: shape inference finds the graph inconsistent.
    """
    onnx = require("onnx")
    for graph in _graphs(model.graph):
        del graph.value_info[:]
    declared = [_output_dims(out) for out in model.graph.output]
    for out in model.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    with _weights_aside(model):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(
                f"ONNX shape inference fails on the model with its new input shapes ({first_line(exc)[:200]}).",
                hint="Check that the shapes suit the model (--input-shape NAME=...), or re-export it with them.",
            ) from exc
    model.graph.value_info.extend(inferred.graph.value_info)
    for out, new, old in zip(model.graph.output, inferred.graph.output, declared, strict=True):
        _merge_output(out, new, old)


def _graphs(graph: Any) -> list[Any]:
    found, stack = [], [graph]
    while stack:
        graph = stack.pop()
        found.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                stack += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    return found


def _output_dims(out: Any) -> list[Any] | None:
    tensor = out.type.tensor_type if out.type.HasField("tensor_type") else None
    return None if tensor is None or not tensor.HasField("shape") else [_dim(d) for d in tensor.shape.dim]


def _merge_output(out: Any, new: Any, old: list[Any] | None) -> None:
    inferred = _output_dims(new)
    if not out.type.HasField("tensor_type") or (inferred is None and old is None):
        return
    if inferred is not None and old is not None and len(old) == len(inferred):
        dims = [n if n is not None else o for n, o in zip(inferred, old, strict=True)]
    else:
        dims = inferred if inferred is not None else old or []
    shape = out.type.tensor_type.shape
    for value in dims:
        dim = shape.dim.add()
        if isinstance(value, int):
            dim.dim_value = value
        elif value is not None:
            dim.dim_param = value


@contextlib.contextmanager
def _weights_aside(model: Any) -> Iterator[None]:
    """Set big weights' bytes aside while the model is near protobuf's limit (shape inference serialises it)."""
    aside = []
    if model.ByteSize() >= _EXTERNAL_DATA_BYTES:
        for tensor in model.graph.initializer:
            if len(tensor.raw_data) > 1 << 20:
                aside.append((tensor, tensor.raw_data))
                tensor.ClearField("raw_data")
    try:
        yield
    finally:
        for tensor, data in aside:
            tensor.raw_data = data


def check_runs(model: Any, shape_sets: Sequence[Sequence[TensorSpec]]) -> str:
    """Run ``model`` once in ONNX Runtime on random inputs of each set of shapes; returns what was checked.

    Declared output dims that the runs contradict (stale ones shape inference could not reach) are
    corrected in place: to the size seen, or left unknown where it changes with the input shapes. A model
    with operators ONNX Runtime does not have (custom domains) is not run.

    Raises:
        ConversionError: the model does not run at a set of shapes; the message gives them.
    """
    custom = sorted({n.domain for g in _graphs(model.graph) for n in g.node} - _ORT_DOMAINS)
    if custom:
        return f"not run: custom operator domain(s) {', '.join(custom)}"
    seen = []
    for specs in shape_sets:
        try:
            outputs = _run_once_or_uninferred(model, random_feeds(specs, seed=0, count=1))
        except Exception as exc:  # noqa: BLE001
            shapes = " ".join(f"{s.name}={','.join(map(str, s.shape))}" for s in specs)
            raise ConversionError(
                f"the ONNX model does not run in ONNX Runtime with inputs {shapes} ({first_line(exc)[:240]}).",
                hint="Give shapes the model was made for (--input-shape NAME=...; e.g. sizes its strides divide).",
            ) from exc
        seen.append([np.shape(o) for o in outputs])
    for index, out in enumerate(model.graph.output):
        _settle_output(out, [shapes[index] for shapes in seen])
    return f"ran in onnxruntime at {len(shape_sets)} shape set(s)"


def _run_once_or_uninferred(model: Any, feeds: Any) -> list[Any]:
    """Run once; if ONNX Runtime refuses the inferred intermediate shapes (onnx's inference can be wrong
    inside ``If``/``Loop`` bodies), drop them (every graph's ``value_info``, in place) and run again."""
    try:
        return _run_once(model, feeds)
    except Exception:
        graphs = [g for g in _graphs(model.graph) if len(g.value_info)]
        if not graphs:
            raise
        kept = [list(g.value_info) for g in graphs]
        for graph in graphs:
            del graph.value_info[:]
        try:
            return _run_once(model, feeds)
        except Exception:
            for graph, infos in zip(graphs, kept, strict=True):
                graph.value_info.extend(infos)
            raise


def _settle_output(out: Any, seen: Sequence[tuple[int, ...]]) -> None:
    tensor = out.type.tensor_type if out.type.HasField("tensor_type") else None
    if tensor is None or not tensor.HasField("shape"):
        return
    dims = tensor.shape.dim
    if any(len(shape) != len(dims) for shape in seen):
        tensor.ClearField("shape")  # a stale rank: no declared shape beats a wrong one
        return
    for index, dim in enumerate(dims):
        sizes = {shape[index] for shape in seen}
        if dim.HasField("dim_value") and dim.dim_value > 0 and sizes != {dim.dim_value}:
            dim.Clear()
            if len(sizes) == 1:
                dim.dim_value = sizes.pop()


def _run_once(model: Any, feeds: Any) -> list[Any]:
    if model.ByteSize() < _EXTERNAL_DATA_BYTES:
        return run_onnx(model, feeds)[0]
    ort = require("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as folder:  # too big to hand over as bytes
        path = Path(folder) / "model.onnx"
        save_onnx(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds[0])


def fix_model(
    model: Any, inputs: Sequence[TensorSpec], opset: int | None, *, ranges: Sequence[InputShape] = ()
) -> dict[str, Any]:
    """Fix input shapes (all but the ``ranges`` dims), cap the opset of ``model`` in place and run it.

    Returns:
        What changed: ``fixed_inputs``, ``opset`` (and ``opset_from``...), ``shape_ranges`` when dims stay
        dynamic, and ``run_check``, how the result was checked to run.
    """
    if ranges:
        changed = keep_dynamic(model, inputs, ranges, check=False)
    else:
        changed = fix_input_shapes(model, inputs, check=False)
    facts: dict[str, Any] = {"fixed_inputs": changed}
    if ranges:
        facts["shape_ranges"] = [r.to_dict() for r in ranges]
    current = model_opset(model)
    facts["opset"] = current
    if opset is not None and current > opset:
        converted, how = cap_opset(model, opset, inputs)
        model.CopyFrom(converted)
        facts.update(opset=opset, opset_from=current, opset_method=how, ir_version=model.ir_version)
    if changed or ranges:
        facts["run_check"] = check_runs(model, corner_specs(inputs, ranges))
    return facts


def convert(
    src: Artifact, workdir: Path, options: ConvertOptions, *, ranges: Sequence[InputShape] | None = None
) -> Artifact:
    """Write ``workdir/model.onnx``: the source with static inputs and opset <= ``options.opset``.

    With ``ranges`` (for a runtime that runs dynamic shapes) those dims stay dynamic and the model is run at
    the min, opt and max shapes; the artifact's specs keep the source's static (opt) shapes and its
    ``meta["shape_ranges"]`` records the ranges. When nothing needs changing the file is a byte-for-byte copy.

    Raises:
        ModelError: the source is not a readable ONNX model.
        ConversionError: a shape cannot be fixed, the opset cannot be lowered, or the result does not run.
    """
    workdir = fresh_dir(workdir)
    ranges = options.shape_ranges if ranges is None else ranges
    started = time.perf_counter()
    model = load_onnx(src.path)
    facts = fix_model(model, src.inputs, options.opset, ranges=tuple(ranges or ()))
    path = workdir / "model.onnx"
    if facts["fixed_inputs"] or "opset_from" in facts or len(src.files) > 1:
        files = save_onnx(model, path)
    else:
        files = (Path(shutil.copyfile(src.path, path)),)
    meta = tool_meta("onnx", precision="fp32", seconds=round(time.perf_counter() - started, 3), **facts)
    specs_in, specs_out = read_specs(path, ModelFormat.ONNX)
    if ranges:  # the declared dims are dynamic; the artifact's specs are the opt shapes it was checked at
        static = {spec.name: spec.shape for spec in src.inputs}
        specs_in = [s.with_shape(static[s.name]) if s.name in static else s for s in specs_in]
    return describe(src, path, ModelFormat.ONNX, (specs_in, specs_out), meta=meta, files=files)
