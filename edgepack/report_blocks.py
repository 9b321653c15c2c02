"""The building blocks of a bundle's report (headings, paragraphs, lists, tables, charts) and the figure
formatting that the report's sections and its markdown and HTML renderers share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NOT_FASTER = "INT8 IS NOT FASTER than float on the host: int8 must pay for its accuracy loss, and here it does not"


@dataclass(frozen=True)
class Heading:
    """A section title (level 1 is the page title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    """A paragraph; ``loud`` ones are warnings the reader must not miss."""

    text: str
    loud: bool = False


@dataclass(frozen=True)
class Items:
    """A bullet list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of preformatted cells; ``long`` names the column holding long identifiers."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    long: int | None = None


@dataclass(frozen=True)
class Chart:
    """A chart of ``kind`` ("layers", "sizes", "latency"), drawn only in the HTML page."""

    kind: str
    title: str
    data: Mapping[str, Any] = field(default_factory=dict)


Block = Heading | Para | Items | Table | Chart


def fmt(value: Any) -> str:
    """A manifest value as short text: 4 significant digits, thousands separators, yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or "-"
    return "-" if value is None else str(value)


def ms_text(value: Any) -> str:
    return f"{value:.3g} ms" if isinstance(value, int | float) else "-"


def bytes_text(value: Any) -> str:
    return f"{value:,} B = {value / 1024:.1f} KiB" if isinstance(value, int) else "-"


def pct_text(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def output_rows(outputs: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], ...]:
    """Per-output error rows; cosine with 6 decimals, since 4 significant digits round 0.99996 to 1."""
    rows = [
        {**o, "cosine": f"{o['cosine']:.6f}" if isinstance(o.get("cosine"), float) else o.get("cosine")}
        for o in outputs
    ]
    return record_rows(rows, ("name", "max_abs_error", "mean_abs_error", "cosine", "sqnr_db", "top1_agreement"))


def record_rows(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(fmt(r.get(key)) for key in keys) for r in records)


def table_block(columns: Sequence[str], rows: tuple[tuple[str, ...], ...], long: int | None = None) -> Block:
    """A table, or a sentence when there are no rows."""
    return Table(tuple(columns), rows, long) if rows else Para("(none)")


OUTPUT_COLUMNS = ("output", "max abs error", "mean abs error", "cosine", "SQNR dB", "top-1 agreement")


def verdict_blocks(what: str, report: Mapping[str, Any]) -> list[Block]:
    if report.get("passed"):
        return [Para(f"{what} PASSED.")]
    failures = "; ".join(str(f) for f in report.get("failures") or []) or "see the table"
    return [Para(f"{what} FAILED: {failures}", loud=True)]


def pass_text(record: Mapping[str, Any]) -> str:
    return "pass" if record.get("passed") else "FAIL"
