"""What a ``package`` call will do and what it did: the typed plan, options and results.

The plan is resolved from the model's detected format and the target profiles
alone (no framework runs), so ``--dry-run`` prints it in a second. Each target
of a plan is a *cell*: a function of the run's inputs that runs, fails and can
be retried on its own (see :mod:`edgepack.pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import ModelFormat
from edgepack.profiles import EmulationMode, Profile, Step

if TYPE_CHECKING:
    from edgepack.errors import EdgepackError

_TF2ONNX_MAX_OPSET = 18
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class Options:
    """Run-wide options of ``package`` (the CLI flags), frozen once built."""

    input_shapes: Mapping[str, Any] = field(default_factory=dict)
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
    debug: bool = False  # let unexpected exceptions (bugs) propagate with their traceback
    device_workers: int | None = None  # device checks at once (None: one per core that memory allows)


@dataclass(frozen=True)
class TargetPlan:
    """What will run for one target: its route of formats and its stages, in order."""

    profile: Profile
    route: tuple[ModelFormat, ...]
    steps: tuple[str, ...]
    out_dir: Path
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.profile.name

    def has(self, step: Step) -> bool:
        return step.value in self.steps

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
class TargetResult:
    """One target's outcome: its bundle and sealed manifest, or the error that stopped it."""

    target: str
    bundle: Path | None
    archive: Path | None
    manifest: Mapping[str, Any] | None
    failure: EdgepackError | None = None
    measurements: Mapping[str, Any] | None = None  # volatile figures (also in the bundle's report/)

    def summary(self) -> dict[str, Any]:
        """The decision figures: precision, size, accuracy, agreement, device estimate, warnings."""
        from edgepack.summary import summarize

        return summarize(self.manifest, self.measurements)

    @property
    def error(self) -> str | None:
        """The failure as the one line the CLI prints (None when the target succeeded)."""
        return None if self.failure is None else self.failure.one_line()

    @property
    def named_error(self) -> str | None:
        """The failure's line, led by the target's name (once, whether or not the error already names it)."""
        line = self.error
        if line is None or line.startswith(f"{self.target}:"):
            return line
        return f"{self.target}: {line}"

    @property
    def exit_code(self) -> int:
        return 0 if self.failure is None else self.failure.exit_code

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "ok": self.failure is None}
        out["bundle"] = str(self.bundle) if self.bundle else None
        out["archive"] = str(self.archive) if self.archive else None
        if self.manifest:
            out["validation"] = self.manifest.get("validation")
            out["model"] = self.manifest.get("model")
            out["summary"] = self.summary()
        if self.failure is not None:
            out["error"] = self.error
            out["error_kind"] = self.failure.kind
            out["exit_code"] = self.exit_code
        return out


@dataclass(frozen=True)
class PackageResult:
    plan: Plan
    targets: tuple[TargetResult, ...]

    @property
    def ok(self) -> bool:
        return all(t.failure is None for t in self.targets)

    @property
    def failures(self) -> tuple[TargetResult, ...]:
        return tuple(t for t in self.targets if t.failure is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "plan": self.plan.to_dict(), "targets": [t.to_dict() for t in self.targets]}


def make_plan(model: Path, profiles: Sequence[Profile], out: Path) -> Plan:
    """Resolve routes and steps for each profile, from the model's detected format only."""
    from edgepack.source import detect_format

    # A TorchScript or pickled .pt is planned like a trusted one; opening it (the run, --dry-run's input check)
    # refuses it without --trust-model-code.
    source_format = detect_format(model, trust_code=True)
    opsets = [p.target_opset for p in profiles if p.target_opset]
    opset = min([_TF2ONNX_MAX_OPSET, *opsets]) if opsets else DEFAULT_OPSET
    return Plan(model, source_format, out, opset, tuple(_target_plan(source_format, p, out) for p in profiles))


def _target_plan(source_format: ModelFormat, profile: Profile, out: Path) -> TargetPlan:
    from edgepack.convert import route

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
    if profile.emulation.mode is EmulationMode.NONE:
        notes.append(f"device-check: {profile.emulation.reason}")
    return TargetPlan(profile, hops, tuple(steps), out / profile.name, tuple(notes))
