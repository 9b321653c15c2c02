"""Running a plan: build the run context once, then run every target as an isolated cell.

``package`` = :func:`edgepack.plans.make_plan` -> :func:`run_plan`:

1. pre-flight checks that need no framework (destinations), per target;
2. :func:`edgepack.context.build_context`: the source (compressed when asked), the data, the samples;
3. for each target, :func:`edgepack.stages.run_target` runs its stages and writes its bundle atomically.

A target's failure is its own: it is recorded as that target's error (an
:class:`~edgepack.errors.EdgepackError`, a bug wrapped as
:class:`~edgepack.errors.InternalError`), and every other target runs exactly as
it would have without it. Intermediates shared by several targets are made once;
a failed one fails exactly the targets that need it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

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
            for target in todo:
                results[target.name] = _run_cell(ctx, target, run_target, options.debug)
    return PackageResult(plan, tuple(results[t.name] for t in plan.targets))


def _run_cell(ctx: object, target: TargetPlan, run: Callable[..., TargetResult], debug: bool) -> TargetResult:
    try:
        return run(ctx, target)
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
