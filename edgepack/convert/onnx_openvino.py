"""ONNX or .tflite -> OpenVINO IR (``model.xml`` + ``model.bin``) with ``openvino.convert_model``.

``openvino.save_model`` halves the weights to fp16 by default; here that is
``options.compress_to_fp16`` (False unless asked), so an fp32 profile keeps f32 weights.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec, guess_layout
from edgepack.deps import require
from edgepack.modelio import describe
from edgepack.shapes import openvino_shape
from edgepack.tools import fresh_dir, run_tool, tool_meta

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions


def _spec(port: Any) -> TensorSpec:
    partial = port.get_partial_shape()
    shape = tuple(d.get_length() if d.is_static else None for d in partial)
    try:
        dtype = port.get_element_type().to_dtype().name
    except Exception:  # noqa: BLE001 - a type numpy lacks (e.g. bf16)
        dtype = port.get_element_type().get_type_name()
    return TensorSpec(port.get_any_name(), shape, dtype, guess_layout(shape))


def read_openvino_io(xml: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an OpenVINO IR, as declared in its .xml."""
    ov = require("openvino")
    model = ov.Core().read_model(str(xml))
    return [_spec(p) for p in model.inputs], [_spec(p) for p in model.outputs]


def canonical_friendly_names(model: Any, keep: set[str]) -> None:
    """Rename the nodes OpenVINO named itself (``Reshape_8184``: a process-wide counter) by graph position.

    Names in ``keep`` (the source model's own names) are left alone. Without this, converting the same model
    twice in one process gives IRs that differ in these names, and bundles would not be byte-identical.
    """
    for index, op in enumerate(model.get_ordered_ops()):
        name = op.get_friendly_name()
        if name not in keep and _AUTO_NAME.fullmatch(name):
            op.set_friendly_name(f"{name.rsplit('_', 1)[0]}_{index}")


def save_ir(model: Any, xml: Path, *, compress_to_fp16: bool, keep: set[str]) -> None:
    """Save an OpenVINO model as ``xml`` + ``.bin`` that depend only on the graph (reproducible bundles).

    ``save_model``'s constant folding names new nodes from a process-wide counter, so the names are made
    canonical on the saved graph (:func:`canonical_friendly_names`, leaving ``keep`` alone) and it is saved
    again - to other files: the draft's ``.bin`` is memory-mapped while it is read.
    """
    ov = require("openvino")
    draft = xml.parent / "draft" / xml.name
    ov.save_model(model, str(draft), compress_to_fp16=compress_to_fp16)
    saved = ov.Core().read_model(str(draft))
    canonical_friendly_names(saved, keep)
    ov.save_model(saved, str(xml), compress_to_fp16=False)
    del saved
    shutil.rmtree(draft.parent, ignore_errors=True)


def source_names(path: Path) -> set[str]:
    """Node and tensor names of an ONNX source (empty for other formats)."""
    if path.suffix != ".onnx":
        return set()
    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.name for n in graph.node} | {o for n in graph.node for o in n.output}


_AUTO_NAME = re.compile(r"[A-Za-z]+_\d+")


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert an ONNX or .tflite source to ``workdir/model.xml`` and ``model.bin`` with static input shapes.

    Raises:
        MissingDependencyError: openvino is not installed.
        ConversionError: OpenVINO cannot read or convert the model.
    """
    ov = require("openvino")
    workdir = fresh_dir(workdir)
    started = time.perf_counter()
    xml = workdir / "model.xml"
    ranges = {r.name: r for r in options.shape_ranges}  # dims that stay dynamic: bounded by the ranges
    shapes = [
        (spec.name, ov.PartialShape(openvino_shape(ranges[spec.name])) if spec.name in ranges else list(spec.shape))
        for spec in src.inputs
    ]

    shape_text = ", ".join(f"{spec.name}={list(spec.shape)}" for spec in src.inputs)

    def build() -> None:
        model = ov.convert_model(str(src.path), input=shapes)
        save_ir(model, xml, compress_to_fp16=options.compress_to_fp16, keep=source_names(Path(src.path)))

    run_tool(
        build,
        failure=f"OpenVINO could not convert {src.path.name}",
        hint=f"Check that the model runs in its own runtime at input shapes {shape_text} (a shape too small for the "
        "network's strides or pooling fails here too; see `edgepack inspect MODEL`), then whether OpenVINO has its "
        "operators; --debug shows OpenVINO's full message.",
    )
    meta = tool_meta(
        "openvino",
        precision="fp16" if options.compress_to_fp16 else "fp32",
        compress_to_fp16=options.compress_to_fp16,
        seconds=round(time.perf_counter() - started, 3),
    )
    files = (xml, xml.with_suffix(".bin"))
    specs_in, specs_out = read_openvino_io(xml)
    if ranges:  # the IR's ranged dims are dynamic; the artifact's specs are the static (opt) shapes
        static = {spec.name: spec.shape for spec in src.inputs}
        specs_in = [s.with_shape(static[s.name]) if s.name in static else s for s in specs_in]
        meta["shape_ranges"] = [r.to_dict() for r in options.shape_ranges]
    return describe(src, xml, ModelFormat.OPENVINO, (specs_in, specs_out), meta=meta, files=files)
