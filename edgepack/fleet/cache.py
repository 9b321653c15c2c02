"""The batch cache: finished cells stored by the digest of everything that decides their bundle.

A cell's key is a sha256 over the model's bytes (and file name), the resolved profile's canonical
digest, the data and eval bytes, the cell's options, the edgepack version and the versions of the
tools that convert, quantize and run it. A finished cell is committed to ``ROOT/<key[:2]>/<key>/``
(``<target>/``, ``<target>.tar.gz`` and ``cell.json``) by an atomic rename the moment it ends, so an
interrupted batch resumes where it stopped. A cached bundle is reused only after it verifies against
its manifest and its archive's digest matches the record; one that does not is dropped and rebuilt.
Failed cells are not cached: a failure may be the machine's, not the cell's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import cache
from pathlib import Path
from typing import Any

from edgepack.fleet.jobs import CellSpec
from edgepack.fleet.records import RECORD, CellRecord

# Distributions whose versions decide a bundle (converters, simplifiers, quantizers, runtimes).
TOOLS = (
    "tensorflow",
    "tf-keras",
    "keras",
    "tf2onnx",
    "onnx2tf",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "onnxslim",
    "openvino",
    "nncf",
    "ai-edge-litert",
    "numpy",
)


def default_root() -> Path:
    """``batch/`` in edgepack's cache (``$EDGEPACK_CACHE``, else ``~/.cache/edgepack``): ``~/.cache/edgepack/batch``."""
    if os.environ.get("EDGEPACK_CACHE"):
        return Path(os.environ["EDGEPACK_CACHE"]).expanduser() / "batch"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgepack" / "batch"


@cache
def tool_versions() -> tuple[tuple[str, str], ...]:
    from edgepack.deps import version_of

    return tuple((name, version_of(name) or "-") for name in TOOLS)


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative file names and contents (sorted, links refused)."""
    from edgepack.artifact import sha256_file

    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode() + b"\n")
    return digest.hexdigest()


class Digests:
    """Content digests of the batch's files, each computed once (a model is shared by all its cells)."""

    def __init__(self) -> None:
        self._known: dict[Path, str] = {}

    def __call__(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in self._known:
            self._known[path] = content_digest(path)
        return self._known[path]


def cell_key(spec: CellSpec, digests: Digests) -> str:
    """The cell's content key: a hex sha256 of :func:`key_inputs`."""
    return key_of(key_inputs(spec, digests))


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def key_inputs(spec: CellSpec, digests: Digests) -> dict[str, Any]:
    """Everything that decides a cell's bundle, as digests and values (kept as ``keys/<key>.json``)."""
    from edgepack.version import __version__

    return {
        "model": [spec.model_path.name, digests(spec.model_path)],
        "profile": spec.profile.sha256,
        "data": digests(spec.data),
        "eval": digests(spec.eval_data),
        "options": {
            "input_shapes": {k: list(v) for k, v in sorted(spec.input_shapes.items())},
            "precision": spec.precision,
            "device_check": spec.device_check,
        },
        "edgepack": __version__,
        "tools": dict(tool_versions()),
    }


class Cache:
    """The cache folder: lookup (verified), staging folders for running cells, atomic commits."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def remember(self, key: str, inputs: dict[str, Any]) -> None:
        """Keep what a key was made of (``keys/<key>.json``), to tell why a cell was rebuilt by diffing two."""
        path = self.root / "keys" / f"{key}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")

    def lookup(self, key: str) -> CellRecord | None:
        """The record of a passed, cached cell whose bundle still verifies; None otherwise."""
        from edgepack.artifact import sha256_file
        from edgepack.errors import EdgepackError
        from edgepack.integrity import verify_bundle

        entry = self.entry(key)
        try:
            record = CellRecord.from_dict(json.loads((entry / RECORD).read_text()))
            verify_bundle(entry / record.target)
            archive = entry / f"{record.target}.tar.gz"
            if record.archive_sha256 is not None and sha256_file(archive) != record.archive_sha256:
                raise ValueError("archive digest differs")
        except FileNotFoundError:
            return None
        except (EdgepackError, ValueError, TypeError, OSError):  # damaged: rebuild it
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return record.but(cached=True) if record.ok and record.key == key else None

    def staging(self, key: str) -> Path:
        """A fresh folder for a running cell, named for its process so a dead run's leftovers can be removed."""
        folder = self.root / ".staging" / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, record: CellRecord) -> Path | None:
        """Move a passed cell's staging folder into the cache (atomically); drop a failed one's."""
        if not record.ok:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        (staging / RECORD).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
        entry = self.entry(record.key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():  # --force, or another run finished the same cell first: the newest wins
            old = staging.with_name(staging.name + ".old")
            os.replace(entry, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, entry)
        return entry

    def clean_stale(self) -> None:
        """Remove staging folders left by processes that no longer run (an interrupted or killed run)."""
        staging = self.root / ".staging"
        for folder in staging.glob("*") if staging.is_dir() else ():
            parts = folder.name.split("-")
            pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
            if pid is None or not _alive(pid):
                shutil.rmtree(folder, ignore_errors=True)


def publish(entry: Path, record: CellRecord, out: Path) -> CellRecord:
    """Copy a cached cell into ``out/<model>/`` (replacing what was there); the record with OUT paths."""
    dest = out / record.model
    dest.mkdir(parents=True, exist_ok=True)
    bundle, archive = dest / record.target, dest / f"{record.target}.tar.gz"
    _remove(bundle)
    _remove(archive)
    shutil.copytree(entry / record.target, bundle, symlinks=True)
    if (entry / archive.name).is_file():
        shutil.copy2(entry / archive.name, archive)
    report = bundle / "report" / "report.html"
    return record.but(
        bundle=bundle.relative_to(out).as_posix(),
        archive=archive.relative_to(out).as_posix() if archive.is_file() else None,
        report=report.relative_to(out).as_posix() if report.is_file() else None,
    )


def unpublish(record: CellRecord, out: Path) -> None:
    """Remove a failed cell's stale bundle from an earlier run, so OUT never shows an outdated success."""
    _remove(out / record.model / record.target)
    _remove(out / record.model / f"{record.target}.tar.gz")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
