"""Worker functions for the local pool's tests: module-level, so spawned workers can import them."""

from __future__ import annotations

import os
from pathlib import Path

from edgepack.fleet.jobs import CellSpec
from edgepack.fleet.local import _work
from edgepack.fleet.records import CellRecord


def die_once(spec: CellSpec, key: str, cache_root: Path) -> CellRecord:
    """The first cell to start kills its own worker (as the OOM killer would); every later one packages."""
    try:
        os.close(os.open(cache_root / "died-once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _work(spec, key, cache_root)
    os._exit(137)


def net0_always_dies(spec: CellSpec, key: str, cache_root: Path) -> CellRecord:
    """Every cell of model ``net0`` kills its worker, every time; the others package."""
    if spec.model == "net0":
        os._exit(137)
    return _work(spec, key, cache_root)
