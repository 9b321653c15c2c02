"""The Python API: everything the CLI does, as functions with keyword-only options."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError, UsageError
from edgepack.pipeline import run_plan
from edgepack.plans import Options, PackageResult, Plan, make_plan
from edgepack.profiles import Profile, builtin_names, load_all, load_profile

if TYPE_CHECKING:  # the result types live beside their (heavier) producers, imported when called
    from edgepack.devicecheck import CheckResult
    from edgepack.emulator.qemu import EmuEnv
    from edgepack.inspection import InspectReport
    from edgepack.integrity import VerifyReport
    from edgepack.source import ShapeValue

TargetLike = str | Path | Profile

__all__ = ["inspect", "load_profile", "package", "plan", "preflight", "resolve_targets", "targets", "verify"]


def targets() -> list[Profile]:
    """Every built-in target profile, sorted by name."""
    return load_all()


def resolve_targets(names: Sequence[TargetLike]) -> list[Profile]:
    """Profiles for names, paths or Profile values; ``"all"`` means every built-in profile."""
    if not names:
        raise UsageError("no target given.", hint=f"Use --target NAME (one of: {', '.join(builtin_names())}) or all.")
    profiles: list[Profile] = []
    expanded: list[TargetLike] = []
    for name in names:  # --target a,b and repeated --target flags alike (an existing path is taken whole)
        if isinstance(name, str) and "," in name and not Path(name).exists():
            expanded.extend(part.strip() for part in name.split(",") if part.strip())
        else:
            expanded.append(name)
    for name in expanded:
        if isinstance(name, Profile):
            profiles.append(name)
        elif str(name) == "all":
            profiles.extend(load_all())
        else:
            profiles.append(load_profile(name))
    seen: dict[str, Profile] = {}
    for profile in profiles:
        seen.setdefault(profile.name, profile)
    return list(seen.values())


def with_precision(profiles: Sequence[Profile], precision: str | None) -> list[Profile]:
    """Profiles with ``precision`` where they accept it (their ``precisions``); the others keep their default."""
    if precision is None:
        return list(profiles)
    from edgepack.profiles import Precision

    try:
        wanted = Precision(precision)
    except ValueError as exc:
        known = ", ".join(p.value for p in Precision)
        raise UsageError(f"unknown precision {precision!r}.", hint=f"Use one of: {known}.") from exc
    chosen = [p.model_copy(update={"precision": wanted}) if wanted in p.precisions else p for p in profiles]
    if not any(p.precision is wanted for p in chosen):
        raise UsageError(
            f"no chosen target accepts precision {precision!r}.",
            hint="See each target's precisions with `edgepack targets show NAME`.",
        )
    return chosen


def with_quantize(profiles: Sequence[Profile], settings: Mapping[str, Any] | None) -> list[Profile]:
    """Profiles with their ``[quantize]`` settings overridden (method, per_channel, samples, ...), validated."""
    if not settings:
        return list(profiles)
    from pydantic import ValidationError

    from edgepack.profiles import Quantize

    out = []
    for profile in profiles:
        try:
            quantize = Quantize.model_validate({**profile.quantize.model_dump(), **settings})
        except ValidationError as exc:
            raise UsageError(
                f"bad quantization option: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc'][0]}).",
                hint="See `edgepack package --help`.",
            ) from exc
        out.append(profile.model_copy(update={"quantize": quantize}))
    return out


def _shapes(input_shapes: Mapping[str, Sequence[Any]] | Sequence[str] | None) -> dict[str, ShapeValue]:
    from edgepack.source import parse_input_shapes

    if input_shapes is None:
        return {}
    if isinstance(input_shapes, Mapping):  # sizes, with (min, opt, max) for a dim that stays dynamic
        from edgepack.shapes import InputShape

        shapes: dict[str, ShapeValue] = {}
        for name, value in input_shapes.items():
            shape = InputShape.from_value(name, value)
            shapes[name] = shape if shape.is_dynamic else shape.opt()
        return shapes
    return parse_input_shapes(list(input_shapes))


def plan(
    model: str | Path, *, targets: Sequence[TargetLike], out: str | Path = "out", precision: str | None = None
) -> Plan:
    """The resolved plan of :func:`package` without running it (``--dry-run``)."""
    return make_plan(Path(model), with_precision(resolve_targets(targets), precision), Path(out))


def preflight(
    model: str | Path,
    *,
    targets: Sequence[TargetLike],
    out: str | Path = "out",
    precision: str | None = None,
    input_shapes: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    preprocess: Mapping[str, Any] | None = None,
    force: bool = False,
    trust_code: bool = False,
) -> tuple[Plan, dict[str, EdgepackError]]:
    """What :func:`package` would refuse before converting anything (``--dry-run``), without writing.

    Raises the run-wide problems (bad shapes, data that does not fit, int8 without data, ``out`` a file);
    returns the plan and, per target, the error that would stop it (its destination exists or is locked).
    """
    from edgepack.context import check_inputs
    from edgepack.pipeline import preflight as destinations

    options = Options(
        input_shapes=_shapes(input_shapes),
        data=Path(data) if data is not None else None,
        eval_data=Path(eval_data) if eval_data is not None else None,
        preprocess=dict(preprocess or {}),
        force=force,
        trust_code=trust_code,
    )
    the_plan = plan(model, targets=targets, out=out, precision=precision)
    refused = destinations(the_plan, options)
    check_inputs(the_plan, options)
    return the_plan, refused


def package(
    model: str | Path | Any,
    *,
    targets: Sequence[TargetLike],
    example_inputs: Sequence[Any] | None = None,
    out: str | Path = "out",
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    data: str | Path | None = None,
    force: bool = False,
    trust_code: bool = False,
    device_check: bool = True,
    sign_key: str | Path | None = None,
    seed: int = 0,
    precision: str | None = None,
    allow_accuracy_drop: bool = False,
    compress: Mapping[str, Mapping[str, Any]] | None = None,
    quantize: Mapping[str, Any] | None = None,
    eval_data: str | Path | None = None,
    preprocess: Mapping[str, Any] | None = None,
    timestamp: bool = False,
    debug: bool = False,
    device_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> PackageResult:
    """Convert, validate and bundle ``model`` for each target into ``out/<target>/``.

    ``model`` is a model file (or SavedModel folder), or a live ``torch.nn.Module`` with ``example_inputs``
    (a tuple of tensors at the shapes to package for); the module is exported to ONNX checked against
    itself, and every bundle is validated against it.

    Every target is attempted, each on its own: one target's failure leaves the others as they would
    be without it. If any failed, an error of the first failure's class is raised with every target's
    failure in its message; ``error.result`` holds the :class:`PackageResult` (the bundles that did
    succeed are written) and ``error.__cause__`` the first failure itself. ``debug`` lets an unexpected
    exception (a bug) propagate with its traceback instead of being reported as an internal error.
    """
    if not isinstance(model, str | Path):  # a live torch.nn.Module: written once for the run, then as a file
        import tempfile

        from edgepack.torchio import save_live

        with tempfile.TemporaryDirectory(prefix="edgepack-module-") as tmp:
            saved = save_live(model, example_inputs or (), Path(tmp))
            arguments = {k: v for k, v in locals().items() if k in _PACKAGE_ARGS}
            return package(saved, **{**arguments, "trust_code": True})  # our own file of the caller's live module
    if example_inputs is not None:
        raise UsageError(
            "example_inputs is for a live torch.nn.Module; a model file declares its own inputs.",
            hint="Drop example_inputs, or give shapes with input_shapes={'x': (1, 3, 224, 224)}.",
        )
    options = Options(
        input_shapes=_shapes(input_shapes),
        data=Path(data) if data is not None else None,
        force=force,
        trust_code=trust_code,
        device_check=device_check,
        sign_key=Path(sign_key) if sign_key is not None else None,
        seed=seed,
        allow_accuracy_drop=allow_accuracy_drop,
        compress=dict(compress or {}),
        eval_data=Path(eval_data) if eval_data is not None else None,
        preprocess=dict(preprocess or {}),
        timestamp=timestamp,
        debug=debug,
        device_workers=device_workers,
    )
    profiles = with_quantize(with_precision(resolve_targets(targets), precision), quantize)
    result = run_plan(plan(model, targets=profiles, out=out), options, progress=progress)
    if len(result.targets) > 1 and len(result.failures) < len(result.targets):
        from edgepack.fleet.overview import write_overview  # OUT/index.html, summary.json/.csv, as batch writes

        write_overview(out, result)
    failed = result.failures
    if failed:
        first = failed[0].failure
        assert first is not None
        message = "; ".join(t.named_error or "" for t in failed)
        if len(result.targets) > 1:
            message = f"{len(failed)} of {len(result.targets)} targets failed: {message}"
        error = type(first)(message)
        error.result = result
        raise error from first
    return result


_PACKAGE_ARGS = (
    "targets", "out", "input_shapes", "data", "force", "device_check", "sign_key", "seed", "precision",
    "allow_accuracy_drop", "compress", "quantize", "eval_data", "preprocess", "timestamp", "debug", "progress",
    "device_workers",
)


def inspect(
    model: str | Path, *, input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None
) -> InspectReport:
    """Inputs, outputs, operators, parameters, MACs and per-target compatibility of a model."""
    from edgepack.inspection import inspect_model

    return inspect_model(Path(model), input_shapes=_shapes(input_shapes) or None)


def verify(bundle: str | Path, *, public_key: str | Path | None = None) -> VerifyReport:
    """Check a bundle folder or archive against its manifest (and signature, with a key)."""
    from edgepack.integrity import verify_bundle

    return verify_bundle(Path(bundle), public_key=Path(public_key) if public_key else None)


def check(
    bundle: str | Path,
    *,
    runner: str | None = None,
    target: TargetLike | None = None,
    data: str | Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CheckResult:
    """Run a bundle's own run.py on its device (emulated by default) and compare with the host.

    ``runner``: ``qemu`` (default for ARM targets), ``native``, ``docker`` or ``ssh://user@host``.
    ``target`` overrides the profile recorded in the bundle's manifest. Nothing in the bundle is changed.
    """
    import json
    import tempfile

    from edgepack.devicecheck import check_bundle
    from edgepack.emulator import parse_runner
    from edgepack.integrity import archive_root, verify_bundle

    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as tmp:
        folder = bundle
        if bundle.is_file():
            from edgepack.archive import safe_extract

            safe_extract(bundle, Path(tmp) / "x")
            folder = archive_root(Path(tmp) / "x")
        verify_bundle(folder)  # never run a bundle that does not match its manifest
        manifest = json.loads((folder / "manifest.json").read_text())
        profile = _bundle_profile(manifest, target)
        samples = None
        if data is not None:
            from edgepack.calibration import load_dataset
            from edgepack.devicecheck import manifest_specs

            samples = load_dataset(data, manifest_specs(manifest)).take(32).as_lists()  # every sample, checked at once
        kind, options = parse_runner(runner)
        return check_bundle(
            folder, profile, samples=samples, seed=seed, runner=kind, runner_options=options, progress=progress
        )


def _bundle_profile(manifest: Mapping[str, Any], target: TargetLike | None) -> Profile:
    from edgepack.errors import ProfileError

    if target is not None:
        return resolve_targets([target])[0]
    try:
        return Profile.model_validate(manifest["profile"])
    except Exception as exc:  # noqa: BLE001 - a manifest from another edgepack version
        raise ProfileError(
            "the bundle's manifest holds a profile this edgepack cannot read.",
            hint="Pass --target NAME to check it against a profile.",
        ) from exc


def emulator_setup(target: TargetLike, *, progress: Callable[[str], None] | None = None) -> EmuEnv:
    """Build (or find in the cache) the emulated environment of a target."""
    from edgepack.emulator import qemu

    return qemu.setup(resolve_targets([target])[0], progress=progress)


def emulator_list() -> list[dict[str, Any]]:
    """The cached emulated environments and tools."""
    from edgepack.emulator.cache import list_envs

    return list_envs()


def emulator_remove(name: str) -> bool:
    """Remove a cached environment, by target name or cache entry name; returns whether one existed."""
    from edgepack.emulator.cache import remove_env
    from edgepack.emulator.qemu import env_name

    if name in builtin_names() or name.endswith(".toml"):
        profile = resolve_targets([name])[0]
        if profile.emulation.mode != "qemu-user":
            raise UsageError(f"target {profile.name} is not emulated with qemu (nothing cached).")
        name = env_name(profile)[0]
    return remove_env(name)
