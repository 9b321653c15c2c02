"""The interface every quantization backend module implements (LiteRT, ONNX Runtime QDQ, NNCF).

A backend is a module registered in :data:`edgepack.quantize.BACKENDS`; it is
imported only when a target needs it. ``tests/test_architecture.py`` imports
every registered backend and checks it against :class:`QuantizeBackend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.calibration import Dataset
    from edgepack.profiles import Profile
    from edgepack.quantize import LayerError, QuantOptions


@runtime_checkable
class QuantizeBackend(Protocol):
    """What :func:`edgepack.quantize.quantize_for_target` calls on a backend module."""

    def quantize(
        self,
        *,
        pre: Artifact,
        float_artifact: Artifact,
        calibration: Dataset,
        workdir: Path,
        options: QuantOptions,
        profile: Profile,
    ) -> Artifact:
        """Quantize into ``workdir``; ``pre`` is what the final conversion hop started from (a backend that
        re-converts, like TFLite's, quantizes from it; one that rewrites the target format ignores it), and
        ``profile`` supplies the target's extras (``[step_options.quantize]``, TensorRT's Q/DQ rules)."""
        ...

    def layer_errors(
        self,
        *,
        pre: Artifact,
        float_artifact: Artifact,
        quantized: Artifact,
        samples: Dataset,
        options: QuantOptions,
        profile: Profile,
    ) -> list[LayerError]:
        """Per-layer quantization error, worst first; names usable in ``options.exclude``."""
        ...
