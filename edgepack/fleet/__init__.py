"""Fleet-scale packaging: every model of a jobs file for every target, cached by content, local or on Ray.

::

    from edgepack.fleet import batch
    result = batch("JOBS.toml", "out")            # a local process pool, one worker per core
    result = batch("JOBS.toml", "out", ray="auto")  # Ray tasks on an existing cluster (or a local one)

Each (model, target) cell is an ordinary, isolated ``package`` writing ``OUT/<model>/<target>/`` and
``OUT/<model>/<target>.tar.gz``. Cells whose inputs did not change come from the cache (verified);
one cell's failure never stops the others. ``OUT/index.html`` and ``OUT/summary.{json,csv}`` hold
the matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import ALL_ERRORS, EdgepackError, InternalError, UsageError
from edgepack.fleet.cache import Cache
from edgepack.fleet.jobs import CellSpec, load_jobs
from edgepack.fleet.records import FAILED, CellRecord

__all__ = ["BatchResult", "CellRecord", "CellSpec", "batch", "load_jobs"]


@dataclass(frozen=True)
class BatchResult:
    """A batch's outcome: one record per cell, in jobs-file order, and where the overview is."""

    out: Path
    cells: tuple[CellRecord, ...]
    seconds: float
    workers: int
    backend: str

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    @property
    def failures(self) -> tuple[CellRecord, ...]:
        return tuple(c for c in self.cells if not c.ok)

    @property
    def cached(self) -> int:
        return sum(c.cached for c in self.cells)

    def error(self) -> EdgepackError | None:
        """An error of the first failure's class naming every failed cell (what the CLI exits with), or None."""
        failed = self.failures
        if not failed:
            return None
        kinds = {cls.kind: cls for cls in ALL_ERRORS}
        cls = kinds.get(failed[0].error_kind or "", InternalError)
        lines = "; ".join(f"{c.model}/{c.error}" for c in failed)
        error = cls(f"{len(failed)} of {len(self.cells)} cells failed: {lines}")
        error.result = self
        return error


def batch(
    jobs: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    ray: str | None = None,
    workers: int | None = None,
    cache: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BatchResult:
    """Package every cell of a jobs file into ``out``; returns every cell's record (failures included).

    Args:
        jobs: The JOBS.toml file (see :mod:`edgepack.fleet.jobs`).
        out: Output folder: ``out/<model>/<target>/``, the archives, ``index.html``, ``summary.json/.csv``.
        force: Recompute every cell even where the cache holds it.
        ray: ``"auto"`` or a Ray cluster address to run the cells as Ray tasks; None for the local pool.
        workers: Local worker processes (default: one per core, fewer when memory is short).
        cache: Cache folder (default ``~/.cache/edgepack/batch``).
        progress: Called with one line per event (cell cached, started, passed, failed) and the counts.

    Raises:
        UsageError: The jobs file is bad, ``out`` is a file, ``workers`` is below 1.
        ProfileError: A target is unknown or its profile file is bad.
        MissingDependencyError: ``ray`` was given and Ray is not installed.
    """
    from edgepack.fleet.cache import Digests, key_inputs, key_of
    from edgepack.fleet.overview import write_overview
    from edgepack.fleet.progress import Tracker

    started = time.monotonic()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder.", hint="Choose a folder for the bundles.")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers} is below 1.", hint="Give at least one worker, or leave it out.")
    specs = load_jobs(jobs)
    store = Cache(Path(cache) if cache is not None else None)
    store.clean_stale()
    digests = Digests()
    keyed = []
    for spec in specs:
        inputs = key_inputs(spec, digests)
        key = key_of(inputs)
        store.remember(key, inputs)
        keyed.append((spec, key))
    tracker = Tracker(len(specs), progress)
    records: dict[str, CellRecord] = {}
    todo = []
    for spec, key in keyed:  # cached cells are published at once; the others are the backend's
        hit = None if force else store.lookup(key)
        if hit is None:
            todo.append((spec, key))
        else:
            records[spec.id] = _publish(store, hit.but(model=spec.model), out)
            tracker.cached(spec.id)

    def on_done(record: CellRecord) -> None:
        records[record.id] = _publish(store, record, out)
        tracker.finished(record.id, record.ok, record.error, record.wall_seconds)

    def on_start(spec: CellSpec) -> None:
        tracker.started(spec.id)

    count = 0
    if todo and ray is not None:
        from edgepack.fleet.ray_backend import run_ray

        count = run_ray(todo, store, address=ray, workers=workers, on_start=on_start, on_done=on_done)
    elif todo:
        from edgepack.fleet.local import default_workers, run_local

        count = workers or default_workers([spec for spec, _ in todo])
        run_local(todo, store, workers=count, on_start=on_start, on_done=on_done)
    cells = tuple(records[spec.id] for spec in specs)
    write_overview(out, cells)
    return BatchResult(out, cells, time.monotonic() - started, count, "ray" if ray is not None else "local")


def _publish(store: Cache, record: CellRecord, out: Path) -> CellRecord:
    from edgepack.fleet.cache import publish, unpublish

    if record.ok:
        try:
            return publish(store.entry(record.key), record, out)
        except OSError as exc:  # OUT is full or unwritable: this cell fails, the batch goes on
            record = record.but(
                status=FAILED,
                error=f"{record.target}: could not copy the bundle into {out} ({exc}). Check the free space of --out.",
                error_kind=UsageError.kind,
                exit_code=UsageError.exit_code,
            )
    unpublish(record, out)
    return record
