"""The packaging pipeline: plan, then run each target's steps over shared intermediates.

The source is opened once; every conversion hop is memoised by its input
digest and options, so the ONNX intermediate (and e.g. the fp32 .tflite shared
by several ARM targets) is made once per run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact, ModelFormat
from edgepack.errors import EdgepackError, InternalError
from edgepack.profiles import Profile, Step

Progress = Callable[[str], None]

_TF2ONNX_MAX_OPSET = 18
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class TargetPlan:
    """What will run for one target."""

    profile: Profile
    route: tuple[ModelFormat, ...]
    steps: tuple[str, ...]
    out_dir: Path
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.profile.name,
            "format": self.profile.format.value,
            "runtime": self.profile.runtime.value,
            "precision": self.profile.precision.value,
            "route": [f.value for f in self.route],
            "steps": list(self.steps),
            "out": str(self.out_dir),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Plan:
    """The resolved plan of a ``package`` call (what ``--dry-run`` prints)."""

    model: Path
    source_format: ModelFormat
    out: Path
    onnx_opset: int
    targets: tuple[TargetPlan, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "source_format": self.source_format.value,
            "out": str(self.out),
            "onnx_opset": self.onnx_opset,
            "targets": [t.to_dict() for t in self.targets],
        }


@dataclass(frozen=True)
class Options:
    """Run-wide options of ``package`` (the CLI flags)."""

    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    data: Path | None = None
    force: bool = False
    trust_code: bool = False
    device_check: bool = True
    sign_key: Path | None = None
    seed: int = 0
    validation_samples: int = 32
    allow_accuracy_drop: bool = False
    compress: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # e.g. {"prune": {"sparsity": 0.5}}
    eval_data: Path | None = None  # a separate labelled set for the int8 gate and validation
    preprocess: Mapping[str, Any] = field(default_factory=dict)  # --preprocess KEY=VALUE flags
    timestamp: bool = False  # record the packaging time in manifests (bundles then differ run to run)


@dataclass(frozen=True)
class TargetResult:
    target: str
    bundle: Path | None
    archive: Path | None
    manifest: Mapping[str, Any] | None
    error: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = {"target": self.target, "ok": self.error is None, "bundle": str(self.bundle) if self.bundle else None}
        out["archive"] = str(self.archive) if self.archive else None
        if self.manifest:
            out["validation"] = self.manifest.get("validation")
            out["model"] = self.manifest.get("model")
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class PackageResult:
    plan: Plan
    targets: tuple[TargetResult, ...]

    @property
    def ok(self) -> bool:
        return all(t.error is None for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "plan": self.plan.to_dict(), "targets": [t.to_dict() for t in self.targets]}


# --------------------------------------------------------------------------- planning


def make_plan(model: Path, profiles: Sequence[Profile], out: Path) -> Plan:
    """Resolve routes and steps for each profile, from the model's detected format only."""
    from edgepack.convert import route
    from edgepack.source import detect_format

    source_format = detect_format(model)
    opsets = [p.target_opset for p in profiles if p.target_opset]
    opset = min([_TF2ONNX_MAX_OPSET, *opsets]) if opsets else DEFAULT_OPSET
    plans = []
    for profile in profiles:
        hops = tuple(route(source_format, profile.format))
        notes = []
        steps = [s.value for s in profile.steps]
        if Step.SIMPLIFY in profile.steps and ModelFormat.ONNX not in (source_format, *hops):
            steps.remove(Step.SIMPLIFY.value)
            notes.append("simplify: no ONNX on this route")
        if Step.QUANTIZE in profile.steps and profile.precision.value not in ("int8", "dynamic"):
            steps.remove(Step.QUANTIZE.value)
            notes.append(f"quantize: precision is {profile.precision.value}")
        elif Step.QUANTIZE in profile.steps and Step.VALIDATE in profile.steps:
            steps.remove(Step.VALIDATE.value)
            notes.append("validate: the int8 accuracy gate on held-out data replaces it")
        if profile.emulation.mode == "none":
            notes.append(f"device-check: {profile.emulation.reason}")
        plans.append(TargetPlan(profile, hops, tuple(steps), out / profile.name, tuple(notes)))
    return Plan(model, source_format, out, opset, tuple(plans))


# --------------------------------------------------------------------------- running


class _Run:
    """State of one ``package`` call: the source, samples and memoised intermediates."""

    def __init__(self, plan: Plan, options: Options, workdir: Path, progress: Progress) -> None:
        self.plan = plan
        self.options = options
        self.workdir = workdir
        self.progress = progress
        self.cache: dict[tuple[Any, ...], tuple[Artifact, dict[str, Any]]] = {}
        self.source: Artifact | None = None
        self.dataset: Any = None
        self.eval_dataset: Any = None
        self.samples: list[list[Any]] | None = None
        self.data_description: dict[str, Any] | None = None
        self.compression: list[dict[str, Any]] = []
        self.original: Artifact | None = None
        self._reference: Any = None

    def open(self) -> None:
        from edgepack.source import open_source

        if self.options.data is None and any(
            Step.QUANTIZE.value in t.steps and t.profile.precision.value == "int8" for t in self.plan.targets
        ):
            from edgepack.errors import DataError

            raise DataError(
                "int8 quantization needs calibration data from your model's domain (random inputs say nothing "
                "about int8 accuracy).",
                hint="Pass --data samples.npz (or a folder of .npy files or images), or choose another --precision.",
            )
        self.progress(f"reading {self.plan.model.name}")
        batch = min((p.profile.inputs.batch or 0 for p in self.plan.targets), default=1) or None
        self.source = open_source(
            self.plan.model,
            input_shapes=self.options.input_shapes,
            batch=batch,
            trust_code=self.options.trust_code,
        )
        self.original = self.source
        self.compression = self.compress(batch)
        if self.options.data is not None:
            from edgepack.calibration import load_dataset

            self.dataset = load_dataset(self.options.data, self.source.inputs, preprocess=self.preprocess())
            self.data_description = self.dataset.describe()
        if self.options.eval_data is not None:
            self.eval_dataset = load_dataset(self.options.eval_data, self.source.inputs, preprocess=self.preprocess())
            self.data_description = {**(self.data_description or {}), "eval": self.eval_dataset.describe()}
        validation = self.eval_dataset if self.eval_dataset is not None else self.dataset
        if validation is not None:
            self.samples = validation.take(self.options.validation_samples).as_lists()

    def compress(self, batch: int | None) -> list[dict[str, Any]]:
        """Run the requested compression methods on the source (distill, prune, clip), before any conversion.

        The compressed model becomes the source every target converts from and validates against; each
        method's report records its measured effect against the model before it.
        """
        from edgepack.source import open_source

        settings = compression_settings(self.options.compress, [t.profile for t in self.plan.targets])
        if not settings:
            return []
        from edgepack.compress import PIPELINE_ORDER, pipeline_step

        assert self.source is not None
        reports, current = [], self.source
        for method in (m for m in PIPELINE_ORDER if m in settings):
            self.progress(f"compressing: {method}")
            path, report = pipeline_step(
                current.path,
                current.format,
                settings={method: settings[method]},
                data=self.options.data,
                workdir=self.workdir / f"compress-{method}",
                progress=self.progress,
            )
            reports.append({"method": method, "settings": dict(settings[method]), **report})
            current = open_source(
                path, input_shapes=self.options.input_shapes, batch=batch, trust_code=self.options.trust_code
            )
        self.source = current
        return reports

    def preprocess(self) -> Any:
        """Image preprocessing: --preprocess flags, else the profiles' [inputs.preprocess] (None: the loader's own)."""
        from edgepack.calibration import Preprocess

        if self.options.preprocess:
            return Preprocess.from_flags(**dict(self.options.preprocess))
        tables = [t.profile.inputs.preprocess for t in self.plan.targets if t.profile.inputs.preprocess]
        return (
            Preprocess.from_table(tables[0], source=f"profile {self.plan.targets[0].profile.name}") if tables else None
        )

    def quantize(self, target: TargetPlan, pre: Artifact, float_artifact: Artifact) -> tuple[Artifact, dict]:
        """Quantize for one target (edgepack.quantize): calibrate, gate on held-out data, repair, time."""
        from edgepack.quantize import QuantOptions, quantize_for_target

        profile = target.profile
        assert self.source is not None
        calibration, heldout = self.dataset, self.eval_dataset  # --eval: the gate uses the user's labelled set
        if self.dataset is not None and self.eval_dataset is None:
            calibration, heldout = self.dataset.split(profile.quantize.holdout, seed=self.options.seed)
        folder = self.workdir / f"quantize-{profile.name}"
        folder.mkdir(parents=True, exist_ok=True)
        self.progress(f"{profile.name}: quantizing to {profile.precision.value}")
        return quantize_for_target(
            source=self.source,
            pre=pre,
            float_artifact=float_artifact,
            profile=profile,
            calibration=calibration,
            heldout=heldout,
            workdir=folder,
            options=QuantOptions.from_profile(profile, trust_code=self.options.trust_code),
            allow_drop=self.options.allow_accuracy_drop,
            progress=self.progress,
            seed=self.options.seed,
        )

    def reference(self) -> Any:
        """The source model's session, opened once per run and shared by every target's validation."""
        from edgepack.runtimes import open_session

        assert self.source is not None
        if self._reference is None:
            self._reference = open_session(self.source, threads=1)
        return self._reference

    def _memo(self, key: tuple[Any, ...], make: Callable[[Path], tuple[Artifact, dict[str, Any]]]):
        if key not in self.cache:
            folder = self.workdir / f"step{len(self.cache):03d}"
            folder.mkdir(parents=True)
            self.cache[key] = make(folder)
        return self.cache[key]

    def hop(self, src: Artifact, dst: ModelFormat, profile: Profile) -> tuple[Artifact, dict[str, Any]]:
        from edgepack.convert import ConvertOptions, convert_once

        final = dst is profile.format
        conv = profile.options(Step.CONVERT)
        opts = ConvertOptions(
            opset=self.plan.onnx_opset,
            # fp16 is a property of the .tflite file; TensorRT's fp16 is a build flag on the same fp32 ONNX.
            precision="fp16" if final and dst is ModelFormat.TFLITE and profile.precision.value == "fp16" else "fp32",
            compress_to_fp16=bool(conv.get("compress_to_fp16", False)) if final else False,
            select_tf_ops=bool(conv.get("select_tf_ops", False)),
            trust_code=self.options.trust_code,
        )

        def make(folder: Path) -> tuple[Artifact, dict[str, Any]]:
            self.progress(f"converting {src.format.value} -> {dst.value}")
            out = convert_once(src, dst, folder, opts)
            return out, {"name": "convert", "from": src.format.value, "to": dst.value, **_tool(out)}

        return self._memo(("convert", src.sha256, dst, opts), make)

    def prepare_onnx(self, onnx: Artifact, profile: Profile) -> list[tuple[Artifact, dict[str, Any]]]:
        """Fix shapes/opset for the profile, then simplify (if the profile has the step)."""
        from edgepack.convert import ConvertOptions, convert_once

        opset = profile.target_opset
        records = []
        fix_opts = ConvertOptions(opset=opset, trust_code=self.options.trust_code)

        def fix(folder: Path) -> tuple[Artifact, dict[str, Any]]:
            out = convert_once(onnx, ModelFormat.ONNX, folder, fix_opts)
            return out, {"name": "convert", "from": "onnx", "to": "onnx", **_tool(out)}

        current, record = self._memo(("fix", onnx.sha256, opset), fix)
        if current.sha256 != onnx.sha256:
            records.append((current, record))
        if Step.SIMPLIFY in profile.steps:
            tool = str(profile.options(Step.SIMPLIFY).get("tool", "auto"))

            def simplify(folder: Path, src: Artifact = current) -> tuple[Artifact, dict[str, Any]]:
                from edgepack.simplify import simplify as run_simplify

                self.progress("simplifying the ONNX graph")
                out, report = run_simplify(src, folder, tool=tool, samples=self.samples, seed=self.options.seed)
                return out, {"name": "simplify", **report.to_dict()}

            records.append(self._memo(("simplify", current.sha256, tool), simplify))
        return records

    def artifact_for(
        self, target: TargetPlan, source: Artifact | None = None
    ) -> tuple[Artifact, list[dict[str, Any]], Artifact]:
        """Run the conversion chain for one target (from ``source``, default the run's source).

        Returns the final artifact, the step records, and the artifact the final hop started from (what a
        quantizer that re-converts, like TFLite's, needs).
        """
        assert self.source is not None
        current, records = source or self.source, []
        pre = current
        chain: list[ModelFormat | None] = [None, *target.route]
        for fmt in chain:
            if fmt is not None:
                pre = current
                current, record = self.hop(current, fmt, target.profile)
                records.append(record)
            if current.format is ModelFormat.ONNX:
                prepared = self.prepare_onnx(current, target.profile)
                records.extend(record for _, record in prepared)
                current = prepared[-1][0] if prepared else current
        return current, records, pre


def compression_settings(flags: Mapping[str, Any], profiles: Sequence[Profile]) -> dict[str, Any]:
    """Compression for the run: the flags, else the profiles' ``[step_options.compress]`` (which must agree)."""
    if flags:
        return dict(flags)
    asked = {json.dumps(p.options(Step.COMPRESS), sort_keys=True) for p in profiles if Step.COMPRESS in p.steps}
    asked.discard("{}")
    if len(asked) > 1:
        from edgepack.errors import UsageError

        raise UsageError(
            "the chosen targets ask for different compression in their profiles.",
            hint="Package them in separate runs, or give --prune/--clip/--distill-student.",
        )
    return json.loads(asked.pop()) if asked else {}


def _tool(artifact: Artifact) -> dict[str, Any]:
    return {k: v for k, v in artifact.meta.items() if k in ("tool", "tool_version", "opset", "precision", "note")}


def run_plan(plan: Plan, options: Options, *, progress: Progress | None = None) -> PackageResult:
    """Execute a plan: every target is attempted; failures are collected per target."""
    from edgepack.targetrun import package_target

    progress = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="edgepack-") as tmp:
        run = _Run(plan, options, Path(tmp), progress)
        run.open()
        results = []
        for target in plan.targets:
            try:
                results.append(package_target(run, target))
            except EdgepackError as exc:
                results.append(TargetResult(target.profile.name, None, None, None, exc.one_line(), exc.exit_code))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a bug; reported per target, with --debug the cause
                if os.environ.get("EDGEPACK_DEBUG"):
                    raise
                err = InternalError(
                    f"internal error while packaging {target.profile.name}: {exc!r}.",
                    hint="Rerun with --debug and report it.",
                )
                results.append(TargetResult(target.profile.name, None, None, None, err.one_line(), err.exit_code))
    return PackageResult(plan, tuple(results))
