"""The local backend: cells on a pool of spawned worker processes, one cell per worker at a time.

Workers are started with ``spawn`` (never ``fork``: a forked TensorFlow or OpenVINO is unsafe), so no
two cells ever share a framework process at the same time; a worker keeps its imports warm for its
next cell. Each worker commits its finished cell into the cache itself; the driver publishes it.
A worker that dies (killed, out of memory) breaks the pool: the cells then in flight are rerun, each alone.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from edgepack import memory
from edgepack.fleet.cache import Cache
from edgepack.fleet.cells import package_cell, setup_worker
from edgepack.fleet.jobs import CellSpec
from edgepack.fleet.records import FAILED, CellRecord
from edgepack.memory import model_bytes

GIB = 1 << 30
Cell = tuple[CellSpec, str]
Todo = Sequence[Cell]
Work = Callable[[CellSpec, str, Path], CellRecord]
OnStart = Callable[[CellSpec], None]
OnDone = Callable[[CellRecord], None]


def cell_memory(spec: CellSpec) -> int:
    """A cell's peak memory, estimated: TensorFlow routes need about 2 GiB, ONNX-only ones 1 GiB, plus the model."""
    from edgepack.artifact import ModelFormat
    from edgepack.errors import EdgepackError
    from edgepack.source import detect_format

    tf_formats = {ModelFormat.KERAS, ModelFormat.H5, ModelFormat.SAVEDMODEL, ModelFormat.TFLITE}
    try:
        uses_tf = spec.profile.format in tf_formats or detect_format(spec.model_path) in tf_formats
    except EdgepackError:  # an unreadable model fails in its own cell, not here
        uses_tf = True
    return (2 if uses_tf else 1) * GIB + 4 * model_bytes(spec.model_path)


def available_memory() -> int:
    """Memory available for new processes, or the physical memory where that is unknown."""
    return memory.available_memory() or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_workers(cells: Sequence[CellSpec]) -> int:
    """One worker per core, fewer when the largest cell times the workers would not fit in available memory."""
    if not cells:
        return 1
    per_cell = max(cell_memory(c) for c in cells)
    return max(1, min(memory.usable_cores(), available_memory() // per_cell, len(cells)))


def run_local(
    todo: Todo, cache: Cache, *, workers: int, on_start: OnStart, on_done: OnDone, work: Work | None = None
) -> None:
    """Run every cell of ``todo`` on ``workers`` processes; ``on_done`` gets each record as it finishes.

    A worker that dies breaks its pool. The cells in flight then are suspects: each is rerun alone on a
    pool of one, so a cell that kills its worker every time fails by itself and takes no other cell with
    it. Cells not yet started go on in parallel on a fresh pool. ``work`` replaces the worker's function.
    """
    work = work or _work
    pending, suspects = list(todo), []
    idle_breaks = 0
    while pending:
        started, pending = _run_pool(pending, cache, workers, on_start, on_done, work)
        suspects.extend(started)
        idle_breaks = 0 if started else idle_breaks + 1
        if idle_breaks == 2:  # pools that break with no cell in flight: workers cannot even start here
            for spec, key in pending:
                on_done(died(spec, key, "no worker process could start", "Check memory and --workers."))
            pending = []
    for spec, key in suspects:
        started, _ = _run_pool([(spec, key)], cache, 1, on_start, on_done, work)
        if started:
            on_done(died(spec, key, "its worker process died twice (killed or out of memory)", "Use fewer --workers."))


def died(spec: CellSpec, key: str, what: str, hint: str) -> CellRecord:
    """The record of a cell that failed outside ``package`` (its worker, its task), as an internal error."""
    from edgepack.errors import InternalError

    return CellRecord(
        spec.model,
        spec.target_name,
        FAILED,
        key,
        error=f"{spec.target_name}: {what}. {hint}",
        error_kind=InternalError.kind,
        exit_code=InternalError.exit_code,
    )


def _run_pool(todo: list[Cell], cache: Cache, workers: int, on_start: OnStart, on_done: OnDone, work: Work):
    """One pool's run. Returns ``([], [])``, or if a worker died: the cells then in flight, and those not started."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    logs = cache.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, lost = deque(todo), list[Cell]()
    running: dict[Future[CellRecord], Cell] = {}
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(logs,)
    )
    try:
        while queue or running:
            while queue and len(running) < workers:  # only as many in flight as workers: submitted = running
                spec, key = queue[0]
                try:  # a worker that died since the last wait may already have marked the pool broken
                    running[pool.submit(work, spec, key, cache.root)] = (spec, key)
                except BrokenProcessPool:
                    break
                queue.popleft()
                on_start(spec)
            if not running:  # broken with nothing in flight (its lost cells were handed back below)
                return lost, list(queue)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    lost.append(cell)
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. the cache folder became unwritable: this cell only
                    record = died(*cell, f"the worker could not store the cell ({exc!r})", "Check --cache.")
                on_done(record)
            if lost:  # the pool is unusable: what was in flight is suspect, the rest was never started
                return lost + list(running.values()), list(queue)
    except BaseException:
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return lost, list(queue)


def _terminate(pool: object) -> None:
    """Stop running workers now (Python 3.11 has no public way; ``shutdown`` would let them finish their cells)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()


def _init(logs: Path) -> None:
    """Worker start: quiet environment; the frameworks' C++ log lines go to a log file, not the user's terminal.

    Each worker leads its own session, as a Ray worker does: where the kernel shares CPU between sessions
    (``sched_autogroup``, the default on desktop and many server kernels), workers in the driver's session
    would share one session's slice between them and run no faster than one. A terminal's Ctrl-C then
    reaches the driver only, which stops its workers itself.
    """
    os.setsid()
    setup_worker()
    log = os.open(logs / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _work(spec: CellSpec, key: str, cache_root: Path) -> CellRecord:
    cache = Cache(cache_root)
    staging = cache.staging(key)
    record = package_cell(spec, key, staging)
    cache.commit(staging, record)
    return record
