"""Conversion stages: the route of formats to the target's, with each ONNX on the way prepared and simplified.

Every hop and every preparation is an intermediate of the run (see
:class:`edgepack.context.Intermediates`): made once, shared by every target
whose route passes through it, keyed by its input's digest and its options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.context import RunContext
from edgepack.plans import TargetPlan
from edgepack.profiles import Precision, Step
from edgepack.shapes import InputShape, ranges_from_meta, runs_dynamic
from edgepack.stages.base import CellState, StageResult

Made = tuple[Artifact, dict[str, Any]]
_KEEPS_RANGES = (ModelFormat.ONNX, ModelFormat.OPENVINO)  # formats whose files can keep a dim dynamic
_RANGED_SOURCES = (ModelFormat.ONNX, ModelFormat.TORCH)  # sources whose ranges the conversion keeps


_RECORDED = ("tool", "tool_version", "opset", "precision", "note", "exporter", "export_attempts", "export_check")


def _tool(artifact: Artifact) -> dict[str, Any]:
    return {k: v for k, v in artifact.meta.items() if k in _RECORDED}


def dynamic_ranges(ctx: RunContext, target: TargetPlan) -> tuple[InputShape, ...]:
    """The input ranges that stay dynamic for this target: an ONNX or PyTorch source's, where the target's runtime
    runs them.

    Other sources (Keras, SavedModel, TFLite) are converted at the ranges' opt shapes.
    """
    if ctx.source.format not in _RANGED_SOURCES or not runs_dynamic(target.profile.runtime):
        return ()
    return ranges_from_meta(ctx.source.meta)


def hop(ctx: RunContext, src: Artifact, dst: ModelFormat, target: TargetPlan) -> Made:
    """One conversion hop ``src -> dst`` with the target's options (shared by targets that ask the same)."""
    from edgepack.convert import ConvertOptions, convert_once

    profile = target.profile
    final = dst is profile.format
    conv = profile.convert_settings
    opts = ConvertOptions(
        opset=ctx.plan.onnx_opset,
        # fp16 is a property of the .tflite file; TensorRT's fp16 is a build flag on the same fp32 ONNX.
        precision="fp16" if final and dst is ModelFormat.TFLITE and profile.precision is Precision.FP16 else "fp32",
        compress_to_fp16=conv.compress_to_fp16 if final else False,
        select_tf_ops=conv.select_tf_ops,
        trust_code=ctx.options.trust_code,
        shape_ranges=dynamic_ranges(ctx, target) if dst in _KEEPS_RANGES else (),
    )

    if src.format is ModelFormat.TORCH:
        return _export_torch(ctx, src, opts, target)

    def make(folder: Path) -> Made:
        ctx.progress(f"converting {src.format.value} -> {dst.value}")
        out = convert_once(src, dst, folder, opts)
        return out, {"name": "convert", "from": src.format.value, "to": dst.value, **_tool(out)}

    return ctx.intermediates.get(("convert", src.sha256, dst, opts), make)


def _export_torch(ctx: RunContext, src: Artifact, opts: Any, target: TargetPlan) -> Made:
    """PyTorch -> ONNX checked against PyTorch on the validation inputs, within the target's tolerances."""
    accuracy = target.profile.accuracy
    tolerance = (accuracy.max_abs_error, accuracy.min_cosine, accuracy.min_top1_agreement)

    def make(folder: Path) -> Made:
        from edgepack.convert.torch_onnx import export_checked

        ctx.progress("exporting torch -> onnx (checked against PyTorch)")
        out = export_checked(src, folder, opts, samples=ctx.samples, tolerance=accuracy, seed=ctx.options.seed)
        return out, {"name": "convert", "from": src.format.value, "to": "onnx", **_tool(out)}

    return ctx.intermediates.get(("convert", src.sha256, ModelFormat.ONNX, opts, tolerance), make)


def prepare_onnx(ctx: RunContext, onnx: Artifact, target: TargetPlan) -> list[Made]:
    """Fix shapes and opset for the target, then simplify (when the target has the step)."""
    from edgepack.convert import ConvertOptions, convert_once

    opset = target.profile.target_opset
    ranges = dynamic_ranges(ctx, target)
    fix_opts = ConvertOptions(opset=opset, trust_code=ctx.options.trust_code, shape_ranges=ranges)

    def fix(folder: Path) -> Made:
        out = convert_once(onnx, ModelFormat.ONNX, folder, fix_opts)
        return out, {"name": "convert", "from": "onnx", "to": "onnx", **_tool(out)}

    records = []
    current, record = ctx.intermediates.get(("fix", onnx.sha256, opset, ranges), fix)
    if current.sha256 != onnx.sha256:
        records.append((current, record))
    if target.has(Step.SIMPLIFY):
        tool = target.profile.simplify_settings.tool

        def simplify(folder: Path, src: Artifact = current) -> Made:
            from edgepack.simplify import simplify as run_simplify

            ctx.progress("simplifying the ONNX graph")
            out, report = run_simplify(src, folder, tool=tool, samples=ctx.samples, seed=ctx.options.seed)
            return out, {"name": "simplify", **report.to_dict()}

        records.append(ctx.intermediates.get(("simplify", current.sha256, tool), simplify))
    return records


def convert_for(
    ctx: RunContext, target: TargetPlan, source: Artifact
) -> tuple[Artifact, list[dict[str, Any]], Artifact]:
    """The conversion chain of one target from ``source``: final artifact, step records, the last hop's input."""
    current, records = source, []
    pre = current
    chain = (None, *target.route)
    for index, fmt in enumerate(chain):
        if fmt is not None:
            pre = current
            current, record = hop(ctx, current, fmt, target)
            records.append(record)
        following = chain[index + 1] if index + 1 < len(chain) else None
        if current.format is ModelFormat.ONNX and following is not ModelFormat.ONNX:  # prepared once, last
            prepared = prepare_onnx(ctx, current, target)
            records.extend(record for _, record in prepared)
            current = prepared[-1][0] if prepared else current
    return current, records, pre


class ConvertStage:
    """``convert`` (with ``simplify`` on ONNX artifacts): the source in the target's format, in float."""

    name = Step.CONVERT.value

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True  # every target needs its format; an empty route leaves the source as it is

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        artifact, records, pre = convert_for(ctx, state.target, ctx.source)
        return StageResult(artifact=artifact, steps=tuple(records), pre=pre)
