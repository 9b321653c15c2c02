"""Automatic repair: keep the worst-quantized layers in float until the accuracy budget holds.

The layers are ranked by their own quantization error (lowest SQNR first, see
``layer_errors`` in each backend). Attempts keep the top 1, 2, 4, ... of them in float, up to
``max_float_layers`` (always trying that number itself last), and stop at the first attempt
that passes the gate. Every attempt is recorded with its accuracy and size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgepack.errors import EdgepackError

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.quantize import LayerError
    from edgepack.quantize.gate import GateReport


@dataclass(frozen=True)
class Attempt:
    """One quantized model and the gate's verdict on it.

    Attributes:
        excluded: Layers kept in float (empty: fully quantized).
        gate: The gate's report.
        artifact: The quantized model.
    """

    excluded: tuple[str, ...]
    gate: GateReport
    artifact: Artifact

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_layers": len(self.excluded),
            "excluded": list(self.excluded),
            "passed": self.gate.passed,
            "quantized_accuracy": self.gate.quantized_accuracy,
            "float_accuracy": self.gate.float_accuracy,
            "checks": [c.to_dict() for c in self.gate.checks],
            "size_bytes": self.artifact.size_bytes(),
        }


def schedule(max_float_layers: int, available: int) -> list[int]:
    """How many layers each attempt keeps in float: 1, 2, 4, ... then the cap itself.

    >>> schedule(6, 10)
    [1, 2, 4, 6]
    >>> schedule(8, 3)
    [1, 2, 3]
    """
    cap = min(max_float_layers, available)
    counts, k = [], 1
    while k < cap:
        counts.append(k)
        k *= 2
    return [*counts, cap] if cap > 0 else []


def repair(
    ranked: Sequence[LayerError],
    attempt: Callable[[tuple[str, ...]], Attempt],
    *,
    max_float_layers: int,
) -> tuple[list[Attempt], list[str]]:
    """Retry with the worst layers kept in float until an attempt passes the gate.

    Args:
        ranked: Per-layer errors, worst first.
        attempt: Quantizes with the given layers kept in float and gates the result.
        max_float_layers: The most layers any attempt keeps in float.

    Returns:
        The attempts made, in order (the last one passed if any did), and one line per attempt
        whose quantization failed (it is skipped; the next, larger one is still tried).
    """
    names = list(dict.fromkeys(e.name for e in ranked))
    made: list[Attempt] = []
    failed: list[str] = []
    for count in schedule(max_float_layers, len(names)):
        try:
            result = attempt(tuple(names[:count]))
        except EdgepackError as exc:
            failed.append(f"repair attempt with {count} float layer(s) failed: {exc.one_line()}")
            continue
        made.append(result)
        if result.gate.passed:
            break
    return made, failed


def best(attempts: Sequence[Attempt]) -> Attempt:
    """The first attempt that passed, else the one closest to the budget (fewest float layers on ties)."""
    for a in attempts:
        if a.gate.passed:
            return a
    return max(attempts, key=lambda a: (a.gate.margin, -len(a.excluded)))
