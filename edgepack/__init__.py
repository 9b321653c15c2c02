"""edgepack: package a trained model for edge devices, verified.

The Python API is the product; the ``edgepack`` CLI is a thin layer over it::

    import edgepack
    result = edgepack.package("model.keras", targets=["rpi4-arm64"], out="out")

Heavy frameworks are imported only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgepack.version import __version__

__all__ = ["__version__", "batch", "check", "inspect", "load_profile", "package", "plan", "targets", "verify"]
_API = frozenset(__all__) - {"__version__", "batch"}

if TYPE_CHECKING:  # pragma: no cover
    from edgepack.api import check, inspect, load_profile, package, plan, targets, verify
    from edgepack.fleet import batch


def __getattr__(name: str) -> Any:
    if name == "batch":  # many models x many targets, cached by content (edgepack.fleet)
        from edgepack.fleet import batch

        return batch
    if name in _API:
        from edgepack import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
