"""PyTorch backend: the source model itself (a ``.pt2`` program or a trusted module), run eagerly on the CPU.

It is the reference every artifact made from a PyTorch source is validated against, so the
figures compare each bundle with PyTorch, not with the ONNX exported on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgepack.runtimes import cast_feed, check_feeds

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact


class TorchSession:
    """A PyTorch module run under ``torch.no_grad`` with positional numpy feeds."""

    runtime = "pytorch"
    precision = "f32"

    def __init__(self, source: Any, version: str, declared: Artifact) -> None:
        self._source = source
        self.version = version
        self.inputs = tuple(declared.inputs)
        self.outputs = tuple(declared.outputs)

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        from edgepack.torchio import run

        arrays = [cast_feed(s, a) for s, a in zip(self.inputs, check_feeds(self.inputs, feeds), strict=True)]
        return run(self._source, arrays)


def open_session(
    artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False
) -> TorchSession:
    """Load the PyTorch source (trusted as the run was told: ``artifact.meta["trust_code"]``).

    ``threads`` sets PyTorch's intra-op threads (process-wide); ``precision`` and ``raw_outputs`` are ignored.
    """
    del precision, raw_outputs
    from edgepack.deps import require
    from edgepack.torchio import load

    source = load(artifact.path, trust_code=bool(artifact.meta.get("trust_code", False)))
    torch = require("torch")
    torch.set_num_threads(threads)
    return TorchSession(source, torch.__version__, artifact)
