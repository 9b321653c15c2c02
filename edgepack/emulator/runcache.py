"""Share identical emulated runs: one result per (model bytes, runner, ``-cpu``, inputs, run arguments).

Under QEMU the outputs and the instruction count of a run depend only on what goes in: the
bundle's model files and run.py, the guest environment (wheels, sysroot, qemu and its plugin),
the emulated CPU, the inputs and run.py's arguments. Two targets that package the same artifact
for the same CPU (``rpi4-arm64`` and ``android-arm64``, say) would run the same thing twice;
:func:`digest` names that run and :func:`load`/:func:`store` keep its files under
``<cache root>/runs/<digest>/`` so the second one is read back instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgepack.emulator.base import RunResult
from edgepack.emulator.cache import cache_root

FILES = ("stats.json", "out.npz")


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def digest(*, bundle: Path, manifest: dict[str, Any], runner: dict[str, Any], inputs: Path, args: list[str]) -> str:
    """The name of a run: a sha256 of everything that decides its outputs and counts.

    Args:
        bundle: The bundle folder (its model files and Python files are hashed, not its manifest: the
            manifest names the target, which does not change what runs).
        manifest: The bundle's manifest (model, runtime, inputs and outputs are used).
        runner: The runner's identity (:meth:`edgepack.emulator.QemuRunner.identity`).
        inputs: The .npz of inputs given to run.py.
        args: run.py's arguments other than file paths.
    """
    scripts = {p.name for p in bundle.glob("*.py")}  # run.py and any module it imports from beside it
    files = sorted(set(manifest["model"].get("files") or []) | {manifest["model"]["file"], "run.py"} | scripts)
    key = {
        "files": {name: _file_digest(bundle / name) for name in files},
        "model": {k: manifest["model"].get(k) for k in ("file", "format")},
        "runtime": manifest["runtime"].get("name"),
        "io": [manifest["inputs"], manifest["outputs"]],
        "runner": runner,
        "inputs": _file_digest(inputs),
        "args": args,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


_CLAIMS: dict[str, threading.Lock] = {}
_CLAIMS_LOCK = threading.Lock()


def claim(name: str) -> threading.Lock:
    """The lock of run ``name`` in this process: concurrent device checks do an identical run once."""
    with _CLAIMS_LOCK:
        return _CLAIMS.setdefault(name, threading.Lock())


def load(name: str, dest: Path, root: Path | None = None) -> RunResult | None:
    """Copy a stored run's files into ``dest`` and return its result, or None if there is none."""
    entry = (root or cache_root()) / "runs" / name
    try:
        result = RunResult(**json.loads((entry / "result.json").read_text()))
        for file in FILES:
            shutil.copyfile(entry / file, dest / file)
    except (OSError, ValueError, TypeError):
        return None
    return result


def store(name: str, src: Path, result: RunResult, root: Path | None = None) -> None:
    """Keep a successful run's result and files (atomically; a concurrent identical run may win)."""
    if not result.ok or not all((src / f).is_file() for f in FILES):
        return
    runs = (root or cache_root()) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name[:16]}.", dir=runs))
    try:
        for file in FILES:
            shutil.copyfile(src / file, tmp / file)
        (tmp / "result.json").write_text(json.dumps(asdict(result)))
        os.rename(tmp, runs / name)
    except OSError:  # the same run was stored meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
