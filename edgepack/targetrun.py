"""One target's tail of the pipeline: static check, validation, bundle, device check, archive."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.errors import ConversionError
from edgepack.profiles import Profile, Runtime, Step

REPORT_DIR = "report"  # volatile measurements and reports; outside the manifest and the archive

if TYPE_CHECKING:
    from edgepack.pipeline import TargetPlan, TargetResult, _Run


def static_check(artifact: Artifact, profile: Profile) -> dict[str, Any]:
    """Operator compatibility of the final artifact with the profile's runtime (fails on unsupported ops)."""
    from edgepack.compat import check_compatibility
    from edgepack.inspection import operators

    if artifact.format is ModelFormat.OPENVINO:
        return {"checked": False, "note": "OpenVINO read and compiled the IR during validation"}
    ops, kind, opset, versions = operators(Path(artifact.path), artifact.format)
    verdict = check_compatibility(ops, profile, opset=opset, op_kind=kind, op_versions=versions)
    if verdict.unsupported:
        raise ConversionError(
            f"{profile.name}: {profile.runtime.value} cannot run operator(s) {', '.join(verdict.unsupported)}.",
            hint="Replace them in the model, or choose another target (see `edgepack inspect MODEL`).",
        )
    return {"checked": True, **verdict.to_dict()}


def package_target(run: _Run, target: TargetPlan) -> TargetResult:
    """Convert, quantize or validate, check, then write one target's bundle and archive atomically."""
    from edgepack.bundle import base_manifest
    from edgepack.pipeline import TargetResult

    profile = target.profile
    assert run.source is not None
    artifact, steps, pre = run.artifact_for(target)
    measurements: dict[str, Any] = {}
    if run.compression and run.options.device_check and profile.emulation.mode == "qemu-user":
        measurements["compression_device"] = compression_on_device(run, target, artifact)
    quantization = None
    if Step.QUANTIZE.value in target.steps:
        artifact, quantization = run.quantize(target, pre, artifact)
        measurements["quantization"] = {"latency": quantization.pop("latency", None)}
        steps.append({"name": "quantize", **{k: quantization.get(k) for k in ("mode", "tool", "tool_version")}})
        validation = {
            "passed": quantization["gate"].get("passed"),
            "by": "accuracy gate (held-out data)",
            **quantization["gate"],
        }
    else:
        validation = _validate(run, target, artifact)
        steps.append({"name": "validate", "runtime": validation.get("candidate_runtime")})
    compat = static_check(artifact, profile)
    manifest = base_manifest(profile=profile, source=run.original or run.source, artifact=artifact)
    manifest["steps"] = steps
    manifest["validation"] = validation
    manifest["quantization"] = quantization
    manifest["compatibility"] = compat
    manifest["data"] = run.data_description
    if run.compression:
        manifest["compression"] = [{k: v for k, v in c.items() if k != "latency"} for c in run.compression]
        measurements["compression"] = [{"method": c["method"], "latency": c.get("latency")} for c in run.compression]
    manifest["unsealed"] = [REPORT_DIR]
    if run.options.timestamp:  # opt-in: a timestamp makes the bundle differ from run to run
        import datetime

        manifest["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    archive, sealed = write_bundle(run, target, artifact, manifest, measurements)
    return TargetResult(profile.name, target.out_dir, archive, sealed)


def compression_on_device(run: _Run, target: TargetPlan, compressed: Artifact) -> dict[str, Any]:
    """Judge compression where it matters: the float model before and after, each run on the emulated device.

    Both are converted for the target (float), staged with the bundle's run.py and run under QEMU; the
    instruction counts and device estimates show whether compression saves time, not only bytes.
    """
    import tempfile

    from edgepack.bundle import base_manifest, stage_files
    from edgepack.devicecheck import check_bundle

    assert run.original is not None
    original, _, _ = run.artifact_for(target, source=run.original)
    figures: dict[str, Any] = {"label": "float models before and after compression, on the emulated device"}
    for name, artifact in (("before", original), ("after", compressed)):
        with tempfile.TemporaryDirectory(prefix="edgepack-compare-") as tmp:
            folder = Path(tmp)
            stage_files(folder, profile=target.profile, artifact=artifact, extra_files={})
            manifest = base_manifest(profile=target.profile, source=run.original, artifact=artifact)
            (folder / "manifest.json").write_text(json.dumps(manifest))
            run.progress(f"{target.profile.name}: compression effect on the device ({name})")
            check = check_bundle(folder, target.profile, samples=run.samples, seed=run.options.seed)
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


def _validate(run: _Run, target: TargetPlan, artifact: Artifact) -> dict[str, Any]:
    from edgepack.validate import validate

    assert run.source is not None
    run.progress(f"{target.profile.name}: validating {artifact.format.value} against the source")
    report = validate(
        run.source, artifact, run.samples, target.profile.accuracy, seed=run.options.seed, reference=run.reference()
    )
    report.raise_if_failed()
    return report.to_dict()


def write_bundle(
    run: _Run, target: TargetPlan, artifact: Artifact, manifest: dict[str, Any], measurements: dict[str, Any]
) -> tuple[Path, dict]:
    """Stage the bundle, run the device check in it, seal, sign, archive; rename into place last."""
    from edgepack.archive import write_deterministic_tar
    from edgepack.atomic import staged_output
    from edgepack.bundle import build_engine_script, stage_files
    from edgepack.errors import OutputExistsError
    from edgepack.integrity import write_manifest

    profile = target.profile
    extra: dict[str, str] = {}
    if profile.runtime is Runtime.TENSORRT:
        flags = artifact.meta.get("tensorrt_flags", ())
        extra["build_engine.sh"] = build_engine_script(profile, Path(artifact.path).name, qdq_flags=flags)
    target.out_dir.parent.mkdir(parents=True, exist_ok=True)
    archive = target.out_dir.parent / f"{profile.name}.tar.gz"
    if archive.exists() and not run.options.force:
        raise OutputExistsError(f"{archive} already exists.", hint="Use --force to replace it, or another --out.")
    tmp_archive = target.out_dir.parent / f".{archive.name}.tmp-{os.getpid()}"
    try:
        with staged_output(target.out_dir, force=run.options.force) as staging:
            stage_files(staging, profile=profile, artifact=artifact, extra_files=extra)
            write_manifest(staging, manifest)
            measurements.update(device_check(run, profile, staging, manifest))
            sealed = write_manifest(staging, manifest)
            if run.options.sign_key is not None:
                from edgepack.signing import sign_file

                sign_file(staging / "manifest.json", run.options.sign_key)
            write_reports(staging / REPORT_DIR, sealed, measurements)
            write_deterministic_tar(staging, tmp_archive, arcname_root=profile.name, exclude=(REPORT_DIR,))
        os.replace(tmp_archive, archive)  # right after the folder: both are complete at every instant
    finally:
        tmp_archive.unlink(missing_ok=True)
    return archive, sealed


def device_check(run: _Run, profile: Profile, staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Run the staged bundle on the device; facts go into the manifest, wall-clock figures are returned."""
    if Step.DEVICE_CHECK not in profile.steps or not run.options.device_check:
        manifest["device_check"] = {"ran": False, "reason": "skipped (--no-device-check)"}
        return {}
    from edgepack.devicecheck import check_bundle

    run.progress(f"{profile.name}: device check ({profile.emulation.mode})")
    check = check_bundle(staging, profile, samples=run.samples, seed=run.options.seed, progress=run.progress)
    manifest["device_check"] = check.facts
    if check.estimate is not None:  # the budget applies to the device estimate (LatencyBudgetError, exit 9)
        from edgepack.estimate import check_budget

        check_budget(check.estimate, profile.latency.budget_ms, profile.name)
    return check.measurements


def write_reports(folder: Path, manifest: dict[str, Any], measurements: dict[str, Any]) -> None:
    """report/: report.md and measurements.json (volatile, not in the manifest nor the archive)."""
    from edgepack.report import render_markdown
    from edgepack.report_html import render_html

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(render_markdown(manifest, measurements))
    (folder / "report.html").write_text(render_html(manifest, measurements), encoding="utf-8")
    (folder / "measurements.json").write_text(json.dumps(measurements, indent=2, sort_keys=True) + "\n")
