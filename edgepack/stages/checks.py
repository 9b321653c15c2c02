"""Stages that judge an artifact: quantize (with its accuracy gate), validate, and the static operator check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepack.artifact import ModelFormat
from edgepack.context import RunContext
from edgepack.errors import ConversionError, DataError
from edgepack.profiles import Profile, Step
from edgepack.stages.base import CellState, StageResult


def unsupported(profile: Profile, ops: Sequence[str], why: str = "") -> ConversionError:
    """The one wording of an operator verdict: the target's runtime cannot run these operators."""
    return ConversionError(
        f"{profile.name}: {profile.runtime.value} cannot run operator(s) {', '.join(ops)}{why}.",
        hint="Replace them in the model, or choose another target (see `edgepack inspect MODEL`).",
    )


class OperatorPrecheckStage:
    """Before any conversion: operators the target's runtime is known not to run are refused by name."""

    name = "operator-precheck"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        profile = state.target.profile
        if ctx.custom_ops:  # custom TFLite ops: no converter maps them and no runtime has their kernels
            raise unsupported(profile, ctx.custom_ops, " (custom TFLite operators)")
        if ctx.source.format is ModelFormat.ONNX:  # ops of other domains onnx2tf has no converter for
            from edgepack.compat.check import precheck_onnx_for

            ops = precheck_onnx_for(profile, Path(ctx.source.path))
            if ops:
                raise unsupported(profile, ops, " (onnx2tf has no converter for them)")
        return StageResult()


class QuantizeStage:
    """``quantize``: calibrate on the user's data, gate on held-out data, repair, time (edgepack.quantize)."""

    name = Step.QUANTIZE.value

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return state.target.has(Step.QUANTIZE)

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.quantize import QuantOptions, quantize_for_target

        profile = state.target.profile
        if ctx.dataset is None:  # refused when the context was built; kept here for the type checker
            raise DataError(f"{profile.name}: quantizing needs --data.", hint="Pass --data samples.npz.")
        calibration, heldout = ctx.dataset, ctx.eval_dataset  # --eval: the gate uses the user's labelled set
        if heldout is None:
            calibration, heldout = ctx.dataset.split(profile.quantize.holdout, seed=ctx.options.seed)
        ctx.progress(f"{profile.name}: quantizing to {profile.precision.value}")
        artifact, quantization = quantize_for_target(
            source=ctx.source,
            pre=state.pre,
            float_artifact=state.artifact,
            profile=profile,
            calibration=calibration,
            heldout=heldout,
            workdir=ctx.target_workdir(profile.name) / "quantize",
            options=QuantOptions.from_profile(profile, trust_code=ctx.options.trust_code),
            allow_drop=ctx.options.allow_accuracy_drop,
            progress=ctx.progress,
            seed=ctx.options.seed,
        )
        latency = quantization.pop("latency", None)
        validation = {"passed": quantization["gate"].get("passed"), "by": "accuracy gate (held-out data)"}
        return StageResult(
            artifact=artifact,
            steps=({"name": "quantize", **{k: quantization.get(k) for k in ("mode", "tool", "tool_version")}},),
            sections={"quantization": quantization, "validation": {**validation, **quantization["gate"]}},
            measurements={"quantization": {"latency": latency}},
        )


class ValidateStage:
    """``validate``: the float artifact against the source, each in its own runtime, on the run's samples."""

    name = Step.VALIDATE.value

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return not state.target.has(Step.QUANTIZE)  # the int8 gate replaces it; a plain float target validates

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.validate import validate

        profile = state.target.profile
        ctx.progress(f"{profile.name}: validating {state.artifact.format.value} against the source")
        report = validate(
            ctx.source,
            state.artifact,
            ctx.samples,
            profile.accuracy,
            seed=ctx.options.seed,
            reference=ctx.reference(),
        )
        report.raise_if_failed()
        validation = report.to_dict()
        corners = _validate_corners(ctx, state)
        if corners:  # only for dims that stay dynamic: other manifests keep their bytes
            validation["shape_corners"] = corners
        return StageResult(
            steps=({"name": "validate", "runtime": validation.get("candidate_runtime")},),
            sections={"validation": validation},
        )


def _validate_corners(ctx: RunContext, state: CellState) -> list[dict[str, Any]]:
    """Where dims stay dynamic: validate the artifact at the ranges' min and max shapes too (seeded inputs).

    The run's samples are at the opt shape, which :class:`ValidateStage` has checked already.
    """
    import dataclasses

    from edgepack.shapes import corner_specs
    from edgepack.stages.convert import dynamic_ranges
    from edgepack.validate import validate

    ranges = dynamic_ranges(ctx, state.target)
    if not ranges:
        return []
    profile, records = state.target.profile, []
    sources = corner_specs(ctx.source.inputs, ranges)
    artifacts = corner_specs(state.artifact.inputs, ranges)
    for source_specs, artifact_specs in zip(sources, artifacts, strict=True):
        if list(source_specs) == list(ctx.source.inputs):
            continue  # the opt shape: validated on the run's samples
        shapes = {s.name: list(s.shape) for s in source_specs}
        ctx.progress(f"{profile.name}: validating at input shapes {shapes}")
        report = validate(
            dataclasses.replace(ctx.source, inputs=tuple(source_specs)),
            dataclasses.replace(state.artifact, inputs=tuple(artifact_specs)),
            None,
            profile.accuracy,
            seed=ctx.options.seed,
            count=2,
        )
        if not report.passed:
            from edgepack.errors import AccuracyError

            raise AccuracyError(
                f"{profile.name}: at input shapes {shapes} the artifact disagrees with the source: "
                + "; ".join(report.failures),
                hint="Narrow the range in --input-shape, or choose a target that fixes the shape.",
            )
        records.append({"inputs": shapes, **{k: v for k, v in report.to_dict().items() if k in ("passed", "outputs")}})
    return records


class StaticCheckStage:
    """Operator compatibility of the final artifact with the profile's runtime (fails on unsupported ops)."""

    name = "static-check"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.compat import check_compatibility
        from edgepack.compat.check import OpKind
        from edgepack.inspection import operators

        artifact, profile = state.artifact, state.target.profile
        if artifact.format is ModelFormat.OPENVINO:
            compat: dict[str, Any] = {"checked": False, "note": "OpenVINO read and compiled the IR during validation"}
            return StageResult(sections={"compatibility": compat})
        ops, kind, opset, versions = operators(Path(artifact.path), artifact.format)
        op_kind: OpKind = "tflite" if kind == "tflite" else "onnx"
        verdict = check_compatibility(ops, profile, opset=opset, op_kind=op_kind, op_versions=versions)
        if verdict.unsupported:
            raise unsupported(profile, verdict.unsupported)
        return StageResult(sections={"compatibility": {"checked": True, **verdict.to_dict()}})
