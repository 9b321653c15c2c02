"""The interface every host-runtime backend module implements (TensorFlow, LiteRT, ONNX Runtime, OpenVINO).

Backends are registered in :data:`edgepack.runtimes.BACKENDS` by model format and
imported when a session is opened; ``tests/test_architecture.py`` checks each
against :class:`RuntimeBackend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.runtimes import Session


@runtime_checkable
class RuntimeBackend(Protocol):
    """What :func:`edgepack.runtimes.open_session` calls on a backend module."""

    def open_session(self, artifact: Artifact, *, threads: int, precision: str, raw_outputs: bool) -> Session:
        """Load ``artifact`` in this runtime, ready to run."""
        ...
