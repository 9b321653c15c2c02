"""Where the built-in data (target profiles, sample calibration sets) lives.

In a wheel the data is installed inside the package as ``edgepack/_data``;
in a source checkout it is the repository's top-level ``targets/`` and
``calibration/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The built-in data folder ``name`` ("targets" or "calibration")."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgepack's built-in {name}/ folder is missing; reinstall edgepack")


def targets_dir() -> Path:
    return data_dir("targets")


def calibration_dir() -> Path:
    return data_dir("calibration")
