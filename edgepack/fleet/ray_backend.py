"""The Ray backend: cells as Ray tasks on an existing cluster (or a local instance), with the same cache.

Each cell is one task asking for one CPU and its estimated memory. Models and data travel through
Ray's object store (each put once, shared by all the cells that use it), so worker nodes need no
shared filesystem; a task returns its record and its output folder (bundle and archive) as a tar,
which the driver unpacks into the cache and publishes. ``max_retries`` reruns a task whose worker
died (killed, out of memory, a node lost); a task that still fails is that cell's failure alone.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepack.errors import MissingDependencyError, UsageError
from edgepack.fleet.cache import Cache
from edgepack.fleet.cells import package_cell, setup_worker
from edgepack.fleet.jobs import CellSpec
from edgepack.fleet.local import OnDone, OnStart, Todo, cell_memory, died
from edgepack.fleet.records import CellRecord

MAX_RETRIES = 3  # reruns of a task whose worker process died


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "ray is not installed.", hint="Install it with: pip install 'edgepack[ray]'"
        ) from exc
    return ray


def connect(address: str, workers: int | None = None) -> bool:
    """Join the cluster at ``address``; ``auto`` finds a running one or starts a local instance.

    Returns whether this call started (and so must stop) Ray. A Ray already initialised in this process
    (``ray.init(...)`` by the caller) is used as it is.
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if address != "auto":
            raise UsageError(
                f"no Ray cluster at {address} ({' '.join(str(exc).split())[:200]}).",
                hint="Start one with `ray start --head`, or pass --ray auto.",
            ) from exc
        ray.init(num_cpus=workers, **quiet)  # none running: a local instance for this batch
    return True


def pack(path: Path) -> bytes:
    """A file or folder as an uncompressed tar (named by its base name), for the object store."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(blob: bytes, dest: Path) -> Path:
    """Extract a :func:`pack` tar into ``dest`` (refusing links out and absolute names); the top entry."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    return dest / names[0].split("/")[0]


def edgepack_cell(spec: CellSpec, key: str, model: bytes, data: bytes | None, evals: bytes | None) -> tuple:
    """The Ray task: package one cell in a temporary folder; (record dict, output folder as a tar or None)."""
    setup_worker()
    with tempfile.TemporaryDirectory(prefix="edgepack-ray-") as tmp:
        root = Path(tmp)
        model_path = unpack(model, root / "model")
        data_path = unpack(data, root / "data") if data is not None else None
        eval_path = unpack(evals, root / "eval") if evals is not None else None
        out = root / "out"
        record = package_cell(spec, key, out, model_path=model_path, data=data_path, eval_data=eval_path)
        payload = None
        if record.ok:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for item in sorted(out.iterdir()):
                    tar.add(item, arcname=item.name)
            payload = buffer.getvalue()
        return record.to_dict(), payload


def run_ray(
    todo: Todo, cache: Cache, *, address: str, workers: int | None, on_start: OnStart, on_done: OnDone
) -> int:
    """Run every cell of ``todo`` as a Ray task; returns the cluster's CPU count."""
    ray = _ray()
    started_here = connect(address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        pending = _submit(ray, todo, on_start)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                spec, key = pending.pop(ref)
                on_done(_collect(ray, ref, spec, key, cache))
    finally:
        if started_here:
            ray.shutdown()
    return cpus


def _submit(ray: Any, todo: Sequence[tuple[CellSpec, str]], on_start: OnStart) -> dict[Any, tuple[CellSpec, str]]:
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    task = ray.remote(edgepack_cell)
    blobs: dict[Path, Any] = {}

    def put(path: Path | None) -> Any:
        if path is None:
            return None
        if path not in blobs:  # each model and data set enters the object store once
            blobs[path] = ray.put(pack(path))
        return blobs[path]

    pending = {}
    for spec, key in todo:
        memory = int(min(cell_memory(spec), largest * 0.9)) if largest else cell_memory(spec)
        options = {"num_cpus": 1, "memory": memory, "max_retries": MAX_RETRIES, "retry_exceptions": False}
        ref = task.options(**options).remote(spec, key, put(spec.model_path), put(spec.data), put(spec.eval_data))
        pending[ref] = (spec, key)
        on_start(spec)
    return pending


def _collect(ray: Any, ref: Any, spec: CellSpec, key: str, cache: Cache) -> CellRecord:
    try:
        data, payload = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task failed past its retries: this cell's failure only
        reason = " ".join(str(exc).split())[:300]
        return died(spec, key, f"the Ray task failed after {MAX_RETRIES} retries ({reason})", "Check the nodes.")
    record = CellRecord.from_dict(data)
    if record.ok and payload is not None:
        staging = cache.staging(key)
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r") as tar:
            tar.extractall(staging, filter="data")
        cache.commit(staging, record)
    return record
