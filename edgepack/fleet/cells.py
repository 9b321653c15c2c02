"""One cell's run and its record: an ordinary ``package`` of one model for one target.

:func:`package_cell` is what a worker runs, in a local pool process or a Ray task alike:
it writes ``<out>/<target>/`` and ``<out>/<target>.tar.gz`` exactly as ``package`` would,
and returns a :class:`CellRecord` of plain values (it crosses process boundaries).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from edgepack.fleet.jobs import CellSpec
from edgepack.fleet.records import FAILED, PASSED, CellRecord

# Telemetry opt-outs and quiet logs, as the CLI sets for its own process (workers are fresh processes).
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "NNCF_CI": "1", "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "tensorflow"}


def setup_worker() -> None:
    """Environment of a worker process: telemetry off, framework logs quiet (set before any import)."""
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("CI", "true")  # OpenVINO's converter skips telemetry only when CI=true


def package_cell(
    spec: CellSpec,
    key: str,
    out: Path,
    *,
    model_path: Path | None = None,
    data: Path | None = None,
    eval_data: Path | None = None,
) -> CellRecord:
    """Package ``spec`` into ``out`` (``out/<target>/`` and its archive) and describe the outcome.

    ``model_path``/``data``/``eval_data`` replace the spec's paths where the worker has its own copies
    (a Ray task unpacks them from the object store). A failure is recorded, never raised.
    """
    from edgepack import api
    from edgepack.errors import EdgepackError, InternalError

    setup_worker()
    started, cpu = time.monotonic(), _cpu_seconds()
    manifest, measurements, failure = None, None, None
    try:
        result = api.package(
            model_path or spec.model_path,
            targets=[spec.profile],
            out=out,
            input_shapes=spec.input_shapes or None,
            data=data or spec.data,
            eval_data=eval_data or spec.eval_data,
            device_check=spec.device_check,
            force=True,
        )
        target = result.targets[0]
        manifest, measurements = target.manifest, target.measurements
    except EdgepackError as exc:
        failure = exc
    except Exception as exc:  # noqa: BLE001 - a bug in one cell is that cell's failure, never the batch's
        failure = InternalError(f"internal error in {spec.id}: {exc!r}.", hint="Rerun the cell alone with --debug.")
    record = CellRecord(
        model=spec.model,
        target=spec.target_name,
        status=PASSED if failure is None else FAILED,
        key=key,
        precision=(manifest or {}).get("model", {}).get("precision") or spec.profile.precision.value,
        cpu_seconds=round(_cpu_seconds() - cpu, 3),
        wall_seconds=round(time.monotonic() - started, 3),
    )
    if failure is not None:
        line = failure.one_line()
        line = line if line.startswith(f"{spec.target_name}:") else f"{spec.target_name}: {line}"
        return record.but(error=line, error_kind=failure.kind, exit_code=failure.exit_code)
    from edgepack.artifact import sha256_file
    from edgepack.summary import summarize

    archive = out / f"{spec.target_name}.tar.gz"
    return record.but(
        summary=summarize(manifest, measurements), archive_sha256=sha256_file(archive) if archive.is_file() else None
    )


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (converters and emulators run as children)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
