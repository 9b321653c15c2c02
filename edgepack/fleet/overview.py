"""The overview of a batch (or of one ``package --target all``): OUT/index.html, summary.json, summary.csv.

The model x target matrix: each cell's status, precision, size, accuracy against float, agreement,
instruction count and estimated latency with its band (labelled as an estimate), a link to the
bundle's report, and a failed cell's one line. The page is self-contained (inline CSS, no scripts,
no external assets), so it opens offline from the folder.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.fleet.records import FAILED, PASSED, CellRecord

if TYPE_CHECKING:
    from edgepack.plans import PackageResult

COLUMNS = (
    "model",
    "target",
    "status",
    "cached",
    "precision",
    "size_bytes",
    "size_ratio",
    "accuracy_float",
    "accuracy_quantized",
    "accuracy_drop",
    "top1_agreement",
    "max_abs_error",
    "min_cosine",
    "instructions_per_inference",
    "estimate_ms",
    "estimate_low_ms",
    "estimate_high_ms",
    "estimate_label",
    "device_check",
    "report",
    "bundle",
    "archive",
    "error",
)


def figures(record: CellRecord) -> dict[str, Any]:
    """One flat row of a cell's figures (the CSV columns), from its record's summary."""
    summary = record.summary or {}
    accuracy, agreement = summary.get("accuracy") or {}, summary.get("agreement") or {}
    device = summary.get("device") or {}
    band = device.get("band_ms") or [None, None]
    check = "ran" if device.get("ran") else (device.get("reason") or None)
    return {
        "model": record.model,
        "target": record.target,
        "status": record.status,
        "cached": record.cached,
        "precision": summary.get("precision") or record.precision,
        "size_bytes": summary.get("size_bytes"),
        "size_ratio": summary.get("size_ratio"),
        "accuracy_float": accuracy.get("float"),
        "accuracy_quantized": accuracy.get("quantized"),
        "accuracy_drop": accuracy.get("drop"),
        "top1_agreement": agreement.get("top1_agreement"),
        "max_abs_error": agreement.get("max_abs_error"),
        "min_cosine": agreement.get("min_cosine"),
        "instructions_per_inference": device.get("instructions_per_inference"),
        "estimate_ms": device.get("estimate_ms"),
        "estimate_low_ms": band[0],
        "estimate_high_ms": band[1],
        "estimate_label": device.get("estimate_label"),
        "device_check": check if record.ok else None,
        "report": record.report,
        "bundle": record.bundle,
        "archive": record.archive,
        "error": record.error,
    }


def write_overview(out_dir: str | Path, cells: Sequence[CellRecord] | PackageResult) -> dict[str, Path]:
    """Write ``index.html``, ``summary.json`` and ``summary.csv`` into ``out_dir``; returns their paths.

    Args:
        out_dir: The run's output folder (bundle and report links are relative to it).
        cells: A batch's records, or the :class:`~edgepack.plans.PackageResult` of a ``package`` run
            (its one model).
    """
    out_dir = Path(out_dir)
    records = list(cells) if isinstance(cells, Sequence) else records_of_package(cells, out_dir)
    rows = [figures(r) for r in records]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("index.html", "summary.json", "summary.csv")}
    from edgepack.atomic import atomic_write_text  # each file whole or not at all

    atomic_write_text(paths["summary.json"], json.dumps(summary_doc(records, rows), indent=2, sort_keys=True) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths["summary.csv"], text.getvalue())
    atomic_write_text(paths["index.html"], render_html(records, rows))
    return paths


def summary_doc(records: Sequence[CellRecord], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from edgepack.version import __version__

    models, targets = _axes(records)
    return {
        "edgepack_version": __version__,
        "ok": all(r.ok for r in records),
        "counts": {
            "cells": len(records),
            "passed": sum(r.ok for r in records),
            "cached": sum(r.cached for r in records),
            "failed": sum(not r.ok for r in records),
        },
        "models": models,
        "targets": targets,
        "cells": [{**row, "summary": r.summary, "cpu_seconds": r.cpu_seconds} for r, row in zip(records, rows)],
        "failures": [r.error for r in records if not r.ok],
    }


def records_of_package(result: PackageResult, out_dir: Path) -> list[CellRecord]:
    """A ``package`` run's targets as cell records of its one model (paths relative to ``out_dir``)."""
    model = result.plan.model.name.split(".")[0]

    def rel(path: Path | None) -> str | None:
        if path is None or not path.exists():
            return None
        try:
            return path.resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            return str(path)

    records = []
    for target in result.targets:
        report = target.bundle / "report" / "report.html" if target.bundle else None
        records.append(
            CellRecord(
                model=model,
                target=target.target,
                status=PASSED if target.failure is None else FAILED,
                key="",
                precision=((target.manifest or {}).get("model") or {}).get("precision"),
                summary=target.summary() if target.manifest else {},
                error=target.named_error,
                error_kind=target.failure.kind if target.failure else None,
                exit_code=target.exit_code,
                bundle=rel(target.bundle),
                archive=rel(target.archive),
                report=rel(report),
            )
        )
    return records


def _axes(records: Sequence[CellRecord]) -> tuple[list[str], list[str]]:
    return list(dict.fromkeys(r.model for r in records)), list(dict.fromkeys(r.target for r in records))


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cell_html(record: CellRecord, row: dict[str, Any]) -> str:
    esc = html.escape
    if not record.ok:
        return f'<td class="failed"><b>failed</b><div class="err">{esc(record.error or "")}</div></td>'
    status = "cached" if record.cached else "passed"
    accuracy = "-"
    if row["accuracy_float"] is not None:
        accuracy = f"{row['accuracy_float']:.3f} &rarr; {row['accuracy_quantized']:.3f}"
    latency = "-"
    if row["estimate_ms"] is not None:
        latency = (
            f"~{row['estimate_ms']:.2f} ms ({_num(row['estimate_low_ms'], '.2f')}&ndash;"
            f"{_num(row['estimate_high_ms'], '.2f')}) <i>estimate</i>"
        )
    size = "-" if row["size_bytes"] is None else f"{row['size_bytes'] / 1024:.1f} KiB"
    if row["size_ratio"] is not None:
        size += f" (x{row['size_ratio']:.2f} of float)"
    link = f'<a href="{esc(record.report)}">report</a>' if record.report else ""
    bundle = f' &middot; <a href="{esc(record.archive)}">archive</a>' if record.archive else ""
    lines = [
        f"<b>{status}</b> {esc(str(row['precision'] or '-'))}",
        f"size {size}",
        f"accuracy (float &rarr; this) {accuracy}",
        f"top-1 agreement {_num(row['top1_agreement'], '.3f')}, max |err| {_num(row['max_abs_error'], '.2g')}",
        f"instructions/inference {_num(row['instructions_per_inference'], ',')}",
        f"latency {latency}",
        f"device check: {esc(str(row['device_check'] or '-'))}",
        link + bundle,
    ]
    return f'<td class="{status}">' + "<br>".join(lines) + "</td>"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "th,td{border:1px solid #bbb;padding:.4em .6em;vertical-align:top;font-size:.85em}"
    "td.passed{background:#eefbea}td.cached{background:#eef4fb}td.failed{background:#fdecea}"
    ".err{max-width:28em;white-space:normal;color:#7a1f14}th{background:#f3f3f3}"
)


def render_html(records: Sequence[CellRecord], rows: Sequence[dict[str, Any]]) -> str:
    """The self-contained overview page: the model x target matrix."""
    esc = html.escape
    models, targets = _axes(records)
    by_cell = {(r.model, r.target): (r, row) for r, row in zip(records, rows)}
    head = "".join(f"<th>{esc(t)}</th>" for t in targets)
    body = []
    for model in models:
        cells = "".join(
            _cell_html(*by_cell[(model, t)]) if (model, t) in by_cell else "<td>-</td>" for t in targets
        )
        body.append(f"<tr><th>{esc(model)}</th>{cells}</tr>")
    failed = sum(not r.ok for r in records)
    verdict = "all cells passed" if not failed else f"{failed} of {len(records)} cells failed"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgepack overview</title>'
        f"<style>{_CSS}</style></head><body><h1>edgepack overview</h1>"
        f"<p>{len(models)} model(s) x {len(targets)} target(s): {esc(verdict)}. Latencies are estimates "
        "(with their band), not measurements on the device. Figures per cell: summary.json / summary.csv.</p>"
        f"<table><tr><th>model \\ target</th>{head}</tr>{''.join(body)}</table></body></html>\n"
    )
