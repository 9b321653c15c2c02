"""A cell's record: what one (model, target) cell did, as plain values that cross process boundaries.

A leaf module (it imports nothing of edgepack), so the overview can be written from anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

PASSED, FAILED = "passed", "failed"
RECORD = "cell.json"  # the record beside a cached cell's bundle


@dataclass(frozen=True)
class CellRecord:
    """What a cell did: its status, figures (``summary``) and, once published, where its bundle is in OUT.

    ``bundle``, ``archive`` and ``report`` are relative to OUT; ``error`` is the failure's one line.
    """

    model: str
    target: str
    status: str
    key: str
    cached: bool = False
    precision: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    archive_sha256: str | None = None
    error: str | None = None
    error_kind: str | None = None
    exit_code: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    bundle: str | None = None
    archive: str | None = None
    report: str | None = None

    @property
    def id(self) -> str:
        return f"{self.model}/{self.target}"

    @property
    def ok(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def but(self, **changes: Any) -> CellRecord:
        return replace(self, **changes)
