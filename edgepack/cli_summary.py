"""What the packaging commands print: the plan (``--dry-run``) and the result table (or ``--json``).

The table holds the decision per target (see :mod:`edgepack.summary`); it fits
80 columns and becomes a plain list of lines on a narrower terminal. Failures
and warnings are printed in full under it, one per line.
"""

from __future__ import annotations

import json
from typing import Any

from edgepack.cli_options import out

NARROW = 80  # below this width the table becomes a list


def figure(value: Any) -> str:
    """A figure for a table: numbers in short scientific notation, anything else as it is (never raises)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.2e}"


def _size(s: dict[str, Any]) -> str:
    size = s.get("size_bytes")
    if not isinstance(size, int):
        return "-"
    text = f"{size / 1024:.1f} KB" if size < 1024**2 else f"{size / 1024**2:.1f} MB"
    ratio = s.get("size_ratio")
    return f"{text}, {1 / ratio:.2f}× float" if isinstance(ratio, float) and ratio > 0 else text


def _accuracy(s: dict[str, Any]) -> str:
    acc = s.get("accuracy")
    if acc:
        text = f"{acc['float']:.1%}→{acc['quantized']:.1%} ({-acc['drop'] * 100:+.1f}pt"
        if acc.get("budget_applied") is not None:
            text += f"; gate ≥{acc['budget_applied']:.1%} of float"
        return text + ")"
    agreement = s.get("agreement") or {}
    parts = []
    if agreement.get("top1_agreement") is not None:
        parts.append(f"top-1 {agreement['top1_agreement']:.0%}")
    if agreement.get("max_abs_error") is not None:
        parts.append(f"|err| {figure(agreement['max_abs_error'])}")
    return ", ".join(parts) or "-"


def _device(s: dict[str, Any]) -> str:
    device = s.get("device") or {}
    if not device.get("ran"):
        return "not run"
    verdict = "agrees" if device.get("agree") else "ran"
    value, band = device.get("estimate_ms"), device.get("band_ms") or [None, None]
    if value is None:
        return f"{verdict} ({device.get('runner')})"
    text = f"~{value:.3g} ms est."
    if None not in band:
        text += f" [{band[0]:.2g}–{band[1]:.2g}]"
    if device.get("budget_ms") is not None:
        text += f" of {device['budget_ms']:.4g}"
    return text


def rows(result: Any, summaries: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str, str]]:
    """One row per target: name, status, precision, size, accuracy or agreement, device."""
    table = []
    for t in result.targets:
        if t.error:
            table.append((t.target, "failed", "-", "-", "-", "-"))
            continue
        s = summaries[t.target]
        table.append((t.target, "ok", str(s.get("precision") or "-"), _size(s), _accuracy(s), _device(s)))
    return table


def print_plan(plan: Any) -> None:
    from rich.table import Table

    table = Table(title=f"plan for {plan.model} ({plan.source_format.value}); ONNX opset {plan.onnx_opset}")
    for column in ("target", "route", "steps", "out", "notes"):
        table.add_column(column)
    for t in plan.targets:
        route = " -> ".join([plan.source_format.value, *(f.value for f in t.route)])
        table.add_row(t.profile.name, route, ", ".join(t.steps), str(t.out_dir), "; ".join(t.notes))
    out.print(table)


def print_result(result: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
        return
    summaries = {t.target: t.summary() for t in result.targets if not t.error}  # read once per target
    lines = rows(result, summaries)
    if out.width < NARROW:
        for name, status, precision, size, accuracy, device in lines:
            out.print(f"{name}: {status}; {precision}, {size}; {accuracy}; device {device}", highlight=False)
    else:
        from rich.table import Table

        table = Table(title="edgepack bundles", pad_edge=False, collapse_padding=True)
        for column, style in (("target", None), ("status", None), ("prec.", None), ("size", None)):
            table.add_column(column, style=style, no_wrap=column in ("target", "status", "prec."))
        table.add_column("accuracy / agreement")
        table.add_column("device")
        for name, status, *rest in lines:
            table.add_row(name, "[red]failed[/red]" if status == "failed" else "[green]ok[/green]", *rest)
        out.print(table)
    _print_notes(result, summaries)


def _print_notes(result: Any, summaries: dict[str, dict[str, Any]]) -> None:
    for t in result.targets:
        if t.error:
            out.print(f"✗ {t.named_error}", highlight=False, markup=False)
    for t in result.targets:
        executed = None if t.error else (summaries[t.target].get("device") or {}).get("executed_as")
        if executed:
            out.print(f"· {t.target} executed as: {executed}", highlight=False, markup=False)
    for t in result.targets:
        if t.error:
            continue
        for warning in summaries[t.target].get("warnings", []):
            out.print(f"! {t.target}: {warning}", highlight=False, markup=False)
    archives = [str(t.archive) for t in result.targets if t.archive]
    if archives:
        folder = {a.rsplit("/", 1)[0] for a in archives}
        where = folder.pop() if len(folder) == 1 else "their folders"
        out.print(f"{len(archives)} bundle(s) and archive(s) in {where}", highlight=False)
