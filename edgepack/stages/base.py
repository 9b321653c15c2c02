"""The stage interface: one signature for every step of a target's pipeline.

A stage reads the run context (shared, never edited) and the target's cell
state so far (its current artifact and what earlier stages recorded), and
returns a :class:`StageResult`: the artifact it produced (or the one it was
given) and its record. :func:`edgepack.stages.run_target` folds the results
into the next state; no stage edits its input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.context import RunContext
    from edgepack.plans import TargetPlan


@dataclass(frozen=True)
class CellState:
    """One target's progress through its stages (immutable; each stage's result makes the next)."""

    target: TargetPlan
    artifact: Artifact
    pre: Artifact  # what the final conversion hop started from (TFLite's quantizer re-converts from it)
    steps: tuple[dict[str, Any], ...] = ()  # the manifest's "steps" list
    sections: Mapping[str, Any] = field(default_factory=dict)  # manifest sections (validation, quantization...)
    measurements: Mapping[str, Any] = field(default_factory=dict)  # volatile figures, for report/ only
    staging: Path | None = None  # the bundle folder being built (bundle stages only)

    def section(self, name: str, default: Any = None) -> Any:
        return self.sections.get(name, default)


@dataclass(frozen=True)
class StageResult:
    """What a stage made: the artifact after it, and what it records."""

    artifact: Artifact | None = None  # None: unchanged
    steps: tuple[dict[str, Any], ...] = ()  # entries appended to the manifest's "steps"
    sections: Mapping[str, Any] = field(default_factory=dict)  # manifest sections it sets
    measurements: Mapping[str, Any] = field(default_factory=dict)  # volatile figures it measured
    pre: Artifact | None = None  # the artifact the last conversion hop started from (convert only)

    def apply(self, state: CellState) -> CellState:
        """The state after this result."""
        changes: dict[str, Any] = {
            "steps": state.steps + self.steps,
            "sections": {**state.sections, **self.sections},
            "measurements": {**state.measurements, **self.measurements},
        }
        if self.artifact is not None:
            changes["artifact"] = self.artifact
        if self.pre is not None:
            changes["pre"] = self.pre
        return dataclasses.replace(state, **changes)


@runtime_checkable
class Stage(Protocol):
    """A pipeline step: ``name`` (the profile's step name it implements) and ``run``."""

    name: str

    def applies(self, ctx: RunContext, state: CellState) -> bool:
        """Whether the stage runs for this target (its step is in the target's plan, options allow it)."""
        ...

    def run(self, ctx: RunContext, state: CellState) -> StageResult:
        """Do the step; raise an :class:`edgepack.errors.EdgepackError` subclass on failure."""
        ...
