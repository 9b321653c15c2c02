"""The bundle stages, run inside the target's staging folder: files and manifest, device check, seal and sign,
reports, archive. The folder is renamed into ``OUT/<target>`` only when all of them succeeded
(:func:`edgepack.atomic.staged_output`).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.context import RunContext
from edgepack.profiles import EmulationMode, Runtime, Step
from edgepack.shapes import trtexec_flags
from edgepack.stages.base import CellState, StageResult
from edgepack.stages.convert import dynamic_ranges

REPORT_DIR = "report"  # volatile measurements and reports; outside the manifest and the archive


def manifest_of(ctx: RunContext, state: CellState) -> dict[str, Any]:
    """The manifest as the stages so far have recorded it (unsealed)."""
    from edgepack.bundle import base_manifest

    profile = state.target.profile
    manifest = base_manifest(profile=profile, source=ctx.original, artifact=state.artifact)
    if ctx.original.format is ModelFormat.TORCH:  # NCHW known from PyTorch, not guessed from the shape
        from edgepack.torchio import input_layouts

        for entry, layout in zip(manifest["inputs"], input_layouts(ctx.original, state.artifact), strict=False):
            entry["layout"] = layout
    manifest["steps"] = list(state.steps)
    manifest["validation"] = state.section("validation")
    manifest["quantization"] = state.section("quantization")
    manifest["compatibility"] = state.section("compatibility")
    manifest["data"] = ctx.data_description
    if ctx.compression:
        manifest["compression"] = [{k: v for k, v in c.items() if k != "latency"} for c in ctx.compression]
    if "device_check" in state.sections:
        manifest["device_check"] = state.section("device_check")
    ranges = dynamic_ranges(ctx, state.target)
    if ranges:  # only where dims stay dynamic: other bundles keep the bytes they always had
        manifest["input_ranges"] = [r.to_dict() for r in ranges]
    manifest["unsealed"] = [REPORT_DIR]
    if ctx.options.timestamp:  # opt-in: a timestamp makes the bundle differ from run to run
        manifest["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return manifest


class StageFilesStage:
    """The model files, run.py, requirements (and build_engine.sh for TensorRT), with a first manifest."""

    name = "stage-files"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.bundle import build_engine_script, stage_files
        from edgepack.integrity import write_manifest

        assert state.staging is not None
        profile, extra = state.target.profile, {}
        if profile.runtime is Runtime.TENSORRT:
            flags = state.artifact.meta.get("tensorrt_flags", ())
            shape_flags = trtexec_flags(dynamic_ranges(ctx, state.target), shell=True)
            extra["build_engine.sh"] = build_engine_script(
                profile, Path(state.artifact.path).name, qdq_flags=flags, shape_flags=shape_flags
            )
        stage_files(state.staging, profile=profile, artifact=state.artifact, extra_files=extra)
        write_manifest(state.staging, manifest_of(ctx, state))  # run.py reads it during the device check
        measurements: dict[str, Any] = {}
        if ctx.compression:
            measurements["compression"] = [
                {"method": c["method"], "latency": c.get("latency")} for c in ctx.compression
            ]
        return StageResult(measurements=measurements)


class DeviceCheckStage:
    """``device-check``: the staged bundle's run.py on the device (emulated, native, docker or ssh)."""

    name = Step.DEVICE_CHECK.value

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True  # when skipped, the manifest says why

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        profile = state.target.profile
        if not state.target.has(Step.DEVICE_CHECK) or not ctx.options.device_check:
            return StageResult(sections={"device_check": {"ran": False, "reason": "skipped (--no-device-check)"}})
        from edgepack.devicecheck import check_bundle

        assert state.staging is not None
        ctx.progress(f"{profile.name}: device check ({profile.emulation.mode})")
        check = check_bundle(state.staging, profile, samples=ctx.samples, seed=ctx.options.seed, progress=ctx.progress)
        if check.estimate is not None:  # the budget applies to the device estimate (LatencyBudgetError, exit 9)
            from edgepack.estimate import check_budget

            check_budget(check.estimate, profile.latency.budget_ms, profile.name)
        return StageResult(sections={"device_check": check.facts}, measurements=check.measurements)


class SealStage:
    """Digest every file into the sealed manifest; sign it when a key was given."""

    name = "seal"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.integrity import write_manifest

        assert state.staging is not None
        sealed = write_manifest(state.staging, manifest_of(ctx, state))
        if ctx.options.sign_key is not None:
            from edgepack.signing import sign_file

            sign_file(state.staging / "manifest.json", ctx.options.sign_key)
        return StageResult(sections={"sealed": sealed})


class ReportStage:
    """report/: report.md, report.html and measurements.json (volatile: outside the manifest and the archive)."""

    name = "report"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        return True

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        from edgepack.report import render_markdown
        from edgepack.report_html import render_html

        assert state.staging is not None
        folder = state.staging / REPORT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        manifest, measurements = state.section("sealed"), dict(state.measurements)
        (folder / "report.md").write_text(render_markdown(manifest, measurements))
        (folder / "report.html").write_text(render_html(manifest, measurements), encoding="utf-8")
        (folder / "measurements.json").write_text(json.dumps(measurements, indent=2, sort_keys=True) + "\n")
        return StageResult()


def compression_on_device(ctx: RunContext, state: CellState) -> dict[str, Any]:
    """Judge compression where it matters: the float model before and after, each run on the emulated device.

    Both are converted for the target (float), staged with the bundle's run.py and run under QEMU; the
    instruction counts and device estimates show whether compression saves time, not only bytes.
    """
    import tempfile

    from edgepack.bundle import base_manifest, stage_files
    from edgepack.devicecheck import check_bundle
    from edgepack.stages.convert import convert_for

    target = state.target
    original, _, _ = convert_for(ctx, target, ctx.original)
    figures: dict[str, Any] = {"label": "float models before and after compression, on the emulated device"}
    pairs: tuple[tuple[str, Artifact], ...] = (("before", original), ("after", state.artifact))
    for name, artifact in pairs:
        with tempfile.TemporaryDirectory(prefix="edgepack-compare-") as tmp:
            folder = Path(tmp)
            stage_files(folder, profile=target.profile, artifact=artifact, extra_files={})
            manifest = base_manifest(profile=target.profile, source=ctx.original, artifact=artifact)
            (folder / "manifest.json").write_text(json.dumps(manifest))
            ctx.progress(f"{target.profile.name}: compression effect on the device ({name})")
            check = check_bundle(folder, target.profile, samples=ctx.samples, seed=ctx.options.seed)
        latency = check.measurements.get("latency", {})
        estimate = (check.measurements.get("figures") or {}).get("estimate") or {}
        figures[name] = {
            "size_bytes": artifact.size_bytes(),
            "instructions_per_inference": check.measurements.get("instructions", {}).get("per_inference"),
            "estimate_ms": estimate.get("value_ms"),
            "emulated_median_ms": latency.get("median_ms"),
            "emulated_label": latency.get("label"),
        }
    return figures


class CompressionOnDeviceStage:
    """With compression and an emulated device: the float model before vs after, measured on the device."""

    name = "compression-on-device"

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        emulated = state.target.profile.emulation.mode is EmulationMode.QEMU_USER
        return bool(ctx.compression) and ctx.options.device_check and emulated

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        return StageResult(measurements={"compression_device": compression_on_device(ctx, state)})
