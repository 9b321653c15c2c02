"""A target's pipeline as a list of stages, executed in one place (:func:`run_target`).

Artifact stages turn the run's source into the target's checked model; bundle
stages then run inside the target's staging folder, which becomes
``OUT/<target>`` (and ``OUT/<target>.tar.gz``) only when every stage passed.
Each stage reads the run context and the cell's state and returns a
:class:`~edgepack.stages.base.StageResult`; see :mod:`edgepack.stages.base`.

======================  ==============================================================
stage                   does
======================  ==============================================================
operator-precheck       operators the target's runtime cannot run, refused by name before converting
convert                 the route of formats, each ONNX on the way fixed and simplified
compression-on-device   (with compression, emulated targets) float before vs after
quantize                int8 / fp16 / dynamic, gated on held-out data, repaired
validate                (float targets) the artifact against the source model
static-check            the runtime's operator table against the final artifact
stage-files             model files, run.py, requirements, build_engine.sh, manifest
device-check            the staged bundle's run.py on the (emulated) device
seal                    every file digested into the manifest; signed with --sign
report                  report/ (markdown, HTML, measurements): volatile, unsealed
======================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from edgepack.context import RunContext
from edgepack.plans import TargetPlan, TargetResult
from edgepack.stages.base import CellState, Stage, StageResult
from edgepack.stages.bundle import (
    REPORT_DIR,
    CompressionOnDeviceStage,
    DeviceCheckStage,
    ReportStage,
    SealStage,
    StageFilesStage,
)
from edgepack.stages.checks import OperatorPrecheckStage, QuantizeStage, StaticCheckStage, ValidateStage
from edgepack.stages.convert import ConvertStage

__all__ = [
    "ARTIFACT_STAGES",
    "BUNDLE_STAGES",
    "CellState",
    "Stage",
    "StageResult",
    "device_check",
    "finish_target",
    "prepare_target",
    "run_target",
]

ARTIFACT_STAGES: tuple[Stage, ...] = (
    OperatorPrecheckStage(),
    ConvertStage(),
    CompressionOnDeviceStage(),
    QuantizeStage(),
    ValidateStage(),
    StaticCheckStage(),
)
FILE_STAGES: tuple[Stage, ...] = (StageFilesStage(),)  # into the cell's private folder
CHECK_STAGE = DeviceCheckStage()  # may run on a worker thread while the next target converts
SEAL_STAGES: tuple[Stage, ...] = (SealStage(), ReportStage())  # inside the atomic staging folder
BUNDLE_STAGES: tuple[Stage, ...] = (*FILE_STAGES, CHECK_STAGE, *SEAL_STAGES)


def _advance(ctx: RunContext, state: CellState, stages: tuple[Stage, ...]) -> CellState:
    for stage in stages:
        if stage.applies(ctx, state):
            state = stage.run(ctx, state).apply(state)
    return state


def prepare_target(ctx: RunContext, target: TargetPlan) -> CellState:
    """The artifact stages, then the bundle's files in a folder of the cell's own (not yet in ``OUT``)."""
    state = _advance(ctx, CellState(target=target, artifact=ctx.source, pre=ctx.source), ARTIFACT_STAGES)
    folder = ctx.target_workdir(target.name) / "bundle"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return _advance(ctx, dataclasses.replace(state, staging=folder), FILE_STAGES)


def device_check(ctx: RunContext, state: CellState) -> StageResult:
    """The device-check stage's result for a prepared cell (thread-safe: it reads the cell's folder only)."""
    return CHECK_STAGE.run(ctx, state) if CHECK_STAGE.applies(ctx, state) else StageResult()


def finish_target(ctx: RunContext, state: CellState, check: StageResult) -> TargetResult:
    """Seal and report the checked bundle in ``OUT/<target>`` and write its archive, atomically, or nothing."""
    from edgepack.archive import write_deterministic_tar
    from edgepack.atomic import staged_output
    from edgepack.errors import OutputExistsError

    target, files = state.target, state.staging
    assert files is not None
    state = check.apply(state)
    out_dir = target.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    archive = out_dir.parent / f"{target.name}.tar.gz"
    if archive.exists() and not ctx.options.force:
        raise OutputExistsError(f"{archive} already exists.", hint="Use --force to replace it, or another --out.")
    tmp_archive = out_dir.parent / f".{archive.name}.tmp-{os.getpid()}"
    try:
        with staged_output(out_dir, force=ctx.options.force) as staging:
            shutil.copytree(files, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            state = _advance(ctx, dataclasses.replace(state, staging=staging), SEAL_STAGES)
            write_deterministic_tar(staging, tmp_archive, arcname_root=target.name, exclude=(REPORT_DIR,))
        os.replace(tmp_archive, archive)  # right after the folder: both are complete at every instant
    finally:
        tmp_archive.unlink(missing_ok=True)
        shutil.rmtree(files, ignore_errors=True)
    return TargetResult(target.name, out_dir, archive, state.section("sealed"), measurements=state.measurements)


def run_target(ctx: RunContext, target: TargetPlan) -> TargetResult:
    """Run every stage of one target, one after another; write its bundle folder and archive atomically, or nothing.

    :func:`edgepack.pipeline.run_plan` runs the same three parts, :func:`prepare_target`,
    :func:`device_check` and :func:`finish_target`, with device checks of several targets at once.
    """
    state = prepare_target(ctx, target)
    return finish_target(ctx, state, device_check(ctx, state))


def stage_names(target: TargetPlan) -> list[str]:
    """The stages a target's plan names, in the order :func:`run_target` runs them (for --dry-run and docs)."""
    names = [s.name for s in (*ARTIFACT_STAGES, *BUNDLE_STAGES)]
    return [n for n in names if n in target.steps or n not in {"quantize", "validate", "device-check"}]
