"""ONNX or .tflite -> OpenVINO IR (``model.xml`` + ``model.bin``) with ``openvino.convert_model``.

``openvino.save_model`` halves the weights to fp16 by default; here that is
``options.compress_to_fp16`` (False unless asked), so an fp32 profile keeps f32 weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec, guess_layout
from edgepack.convert._common import describe, fresh_dir, run_tool, tool_meta
from edgepack.deps import require

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
    shapes = [(spec.name, list(spec.shape)) for spec in src.inputs]

    def build() -> None:
        model = ov.convert_model(str(src.path), input=shapes)
        ov.save_model(model, str(xml), compress_to_fp16=options.compress_to_fp16)

    run_tool(
        build,
        failure=f"OpenVINO could not convert {src.path.name}",
        hint="Check that the model runs in its own runtime (onnxruntime / LiteRT); OpenVINO lacks a few ops.",
    )
    meta = tool_meta(
        "openvino",
        precision="fp16" if options.compress_to_fp16 else "fp32",
        compress_to_fp16=options.compress_to_fp16,
        seconds=round(time.perf_counter() - started, 3),
    )
    files = (xml, xml.with_suffix(".bin"))
    return describe(src, xml, ModelFormat.OPENVINO, read_openvino_io(xml), meta=meta, files=files)
