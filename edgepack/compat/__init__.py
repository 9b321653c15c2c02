"""Per-target operator compatibility: which of a model's operators each runtime can run.

The operator tables are package data in ``edgepack/compat/data`` (each names
its source and version); :func:`check_compatibility` looks a model's operators
up in the table of a target's runtime. The ONNX Runtime, OpenVINO and onnx2tf
tables are measured by running onnx's node test models in each runtime
(``python -m edgepack.compat.refresh``, :mod:`edgepack.compat.measured`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CompatVerdict", "check_compatibility"]

if TYPE_CHECKING:  # pragma: no cover
    from edgepack.compat.check import CompatVerdict, check_compatibility


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m edgepack.compat.refresh`` runs where only the measured runtime is installed.
    if name in __all__:
        from edgepack.compat import check

        return getattr(check, name)
    raise AttributeError(f"module 'edgepack.compat' has no attribute {name!r}")
