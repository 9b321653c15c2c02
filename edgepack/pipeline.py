"""Running a plan: build the run context once, then run every target as an isolated cell.

``package`` = :func:`edgepack.plans.make_plan` -> :func:`run_plan`:

1. pre-flight checks that need no framework (destinations), per target;
2. :func:`edgepack.context.build_context`: the source (compressed when asked), the data, the samples;
3. for each target, :func:`edgepack.stages.run_target` runs its stages and writes its bundle atomically.
   Conversion, quantization and validation run one target after another on the host; the device
   checks (mostly an emulator process each) run on up to :func:`device_workers` worker threads while
   the next targets convert (:func:`checks_first` orders them), and each bundle is sealed as soon as
   its check is back.

A target's failure is its own: it is recorded as that target's error (an
:class:`~edgepack.errors.EdgepackError`, a bug wrapped as
:class:`~edgepack.errors.InternalError`), and every other target runs exactly as
it would have without it. Intermediates shared by several targets are made once;
a failed one fails exactly the targets that need it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, InternalError, OutputExistsError, UsageError
from edgepack.plans import (  # noqa: F401 - the plan types are part of this module's interface
    Options,
    PackageResult,
    Plan,
    TargetPlan,
    TargetResult,
    make_plan,
)

Progress = Callable[[str], None]


def preflight(plan: Plan, options: Options) -> dict[str, EdgepackError]:
    """What can be refused before any framework runs: the output folder, and each target's destination.

    Raises:
        UsageError: ``--out`` is an existing file (every target would fail the same way).

    Returns:
        Target name -> the error that stops that target (its destination exists and ``force`` is off).
    """
    from edgepack.atomic import is_locked

    if plan.out.exists() and not plan.out.is_dir():
        raise UsageError(f"--out {plan.out} is a file, not a folder.", hint="Choose a folder for the bundles.")
    refused: dict[str, EdgepackError] = {}
    for target in plan.targets:
        archive = target.out_dir.parent / f"{target.name}.tar.gz"
        existing = [p for p in (target.out_dir, archive) if p.exists() or p.is_symlink()]
        if existing and not options.force:
            refused[target.name] = OutputExistsError(
                f"{existing[0]} already exists.", hint="Use --force to replace it, or another --out."
            )
        elif target.out_dir.parent.is_dir() and is_locked(target.out_dir):
            refused[target.name] = OutputExistsError(
                f"another edgepack run is writing {target.out_dir}.", hint="Wait for it, or choose another --out."
            )
    return refused


def run_plan(plan: Plan, options: Options, *, progress: Progress | None = None) -> PackageResult:
    """Execute a plan: every target is attempted; each failure is recorded on its own target."""
    from edgepack.context import build_context
    from edgepack.stages import run_target

    say: Progress = progress or (lambda message: None)
    refused = preflight(plan, options)
    results: dict[str, TargetResult] = {
        name: TargetResult(name, None, None, None, failure) for name, failure in refused.items()
    }
    todo = [t for t in plan.targets if t.name not in refused]
    if todo:
        with tempfile.TemporaryDirectory(prefix="edgepack-") as tmp:
            ctx = build_context(plan, options, Path(tmp), say)
            checks = sum(1 for t in todo if _has_device_check(t, options))
            workers = device_workers(options.device_workers, checks, model_bytes=_model_bytes(ctx.source.path))
            if workers <= 1:
                for target in todo:
                    results[target.name] = _run_cell(target, functools.partial(run_target, ctx, target), options.debug)
            else:
                say(f"device checks: up to {workers} at a time, while the next targets convert")
                order = checks_first(todo, options, ctx.source.format)
                results.update(_run_overlapped(ctx, order, workers, options.debug))
    return PackageResult(plan, tuple(results[t.name] for t in plan.targets))


def device_workers(requested: int | None, checks: int, *, model_bytes: int = 0) -> int:
    """How many device checks run at once: ``requested``, else one per core that memory allows.

    Each emulated check holds a guest runtime and the model (taken as 1.5 GiB plus 8x the model
    file) while the host converts the next target (taken as 4 GiB); never more than ``checks``.
    """
    from edgepack.memory import available_memory, usable_cores

    if requested is not None:
        return max(1, min(requested, checks))
    per_check = 1.5 * 2**30 + 8 * model_bytes
    available = available_memory() or 0  # unknown: one check at a time
    by_memory = int(max(0.0, available - 4 * 2**30) // per_check)
    return max(1, min(usable_cores(), by_memory, checks))


def checks_first(targets: list[TargetPlan], options: Options, source_format: Any) -> list[TargetPlan]:
    """The order targets are prepared in while device checks overlap (results keep the plan's order).

    Targets with a device check come first, and among them those that need no conversion (their
    format is the source's: ONNX Runtime targets of an ONNX model): their emulators start within
    seconds and run while the other targets convert, instead of leaving a last check to run alone.
    """
    return sorted(targets, key=lambda t: (not _has_device_check(t, options), t.profile.format != source_format))


def _model_bytes(path: Path) -> int:
    from edgepack.memory import model_bytes

    try:
        return model_bytes(Path(path))
    except OSError:
        return 0


def _has_device_check(target: TargetPlan, options: Options) -> bool:
    from edgepack.profiles import EmulationMode, Step

    emulated = target.profile.emulation.mode is not EmulationMode.NONE
    return options.device_check and target.has(Step.DEVICE_CHECK) and emulated


def _run_overlapped(ctx: Any, targets: list[TargetPlan], workers: int, debug: bool) -> dict[str, TargetResult]:
    """Targets prepared in plan order on this thread; their device checks on ``workers`` threads meanwhile.

    Everything but the device checks stays on this thread (frameworks, the atomic output, signals).
    An interruption stops the running emulators before it propagates.
    """
    from edgepack.emulator.process import allow, stop_all
    from edgepack.stages import device_check, prepare_target

    results: dict[str, TargetResult] = {}
    pending: dict[str, tuple[Any, Future[Any]]] = {}

    def finish(block: bool) -> None:
        for name, (state, future) in list(pending.items()):
            if block or future.done():
                del pending[name]
                results[name] = _run_cell(state.target, functools.partial(_finish, ctx, state, future), debug)

    allow()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgepack-device-check")
    try:
        for target in targets:
            finish(block=False)
            prepared = _run_cell(target, functools.partial(prepare_target, ctx, target), debug)
            if isinstance(prepared, TargetResult):  # it failed before its device check
                results[target.name] = prepared
            else:
                pending[target.name] = (prepared, pool.submit(device_check, ctx, prepared))
        finish(block=True)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True)
    return results


def _finish(ctx: Any, state: Any, check: Future[Any]) -> TargetResult:
    from edgepack.stages import finish_target

    return finish_target(ctx, state, check.result())


def _run_cell(target: TargetPlan, run: Callable[[], Any], debug: bool) -> Any:
    """``run()``'s value, or the target's failed result: the target's error is its own."""
    try:
        return run()
    except EdgepackError as exc:
        return TargetResult(target.name, None, None, None, exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a bug: reported on this target only; with debug, raised with its traceback
        if debug:
            raise
        error = InternalError(
            f"internal error while packaging {target.name}: {exc!r}.", hint="Rerun with --debug and report it."
        )
        error.__cause__ = exc
        return TargetResult(target.name, None, None, None, error)
