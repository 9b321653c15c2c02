"""Human-readable reports written into ``report/`` of a bundle.

The manifest holds the deterministic facts (what ran, validation figures,
instruction counts); ``report/measurements.json`` holds what varies from run
to run (wall-clock latencies). Both are turned once into a list of typed
blocks (:func:`report_blocks`), which :func:`render_markdown` and
``edgepack.report_html.render_html`` only lay out, so the two pages say the
same thing. Every latency figure keeps the label it was recorded with: an
emulated time or an estimate is never shown as a measurement. Reports are not
part of the shipped archive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgepack.report_blocks import (  # the report's vocabulary (tests and report_html read it here)
    NOT_FASTER,
    Block,
    Chart,
    Heading,
    Items,
    Para,
    Table,
    fmt,
)
from edgepack.report_blocks import OUTPUT_COLUMNS as _OUTPUTS
from edgepack.report_blocks import bytes_text as _bytes
from edgepack.report_blocks import ms_text as _ms
from edgepack.report_blocks import output_rows as _outputs
from edgepack.report_blocks import record_rows as _rows
from edgepack.report_blocks import table_block as _table
from edgepack.report_blocks import verdict_blocks as _verdict
from edgepack.report_quant import compression_blocks as _compression
from edgepack.report_quant import compression_device_blocks as _compression_device
from edgepack.report_quant import gate_blocks as _gate
from edgepack.report_quant import quantization_blocks as _quantization
from edgepack.summary import executed_as


def report_blocks(manifest: Mapping[str, Any], measurements: Mapping[str, Any] | None = None) -> list[Block]:
    """The report's content, in order, from a sealed manifest and the run's measurements.

    Args:
        manifest: The bundle's manifest (deterministic facts).
        measurements: ``report/measurements.json`` (volatile figures), or None.

    Returns:
        The blocks of the page: header, steps, validation or the int8 gate, quantization,
        compression, operator compatibility and the device check (the last five when present).
    """
    meas = measurements or {}
    blocks = _header(manifest, meas)
    blocks += _steps(manifest.get("steps") or [])
    validation = manifest.get("validation") or {}
    blocks += _gate(validation) if "checks" in validation else _validation(validation)
    if manifest.get("quantization"):
        blocks += _quantization(manifest["quantization"], (meas.get("quantization") or {}).get("latency"))
    for i, step in enumerate(manifest.get("compression") or []):
        extra = (meas.get("compression") or [])[i : i + 1]
        blocks += _compression(i + 1, step, (extra[0] if extra else {}).get("latency"))
    if meas.get("compression_device"):
        blocks += _compression_device(meas["compression_device"])
    blocks += _compatibility(manifest.get("compatibility") or {})
    blocks += _device(manifest.get("device_check") or {}, meas, manifest.get("profile") or {})
    return blocks


def render_markdown(manifest: Mapping[str, Any], measurements: Mapping[str, Any] | None = None) -> str:
    """report.md: the blocks of :func:`report_blocks` as Markdown (charts are in report.html only)."""
    lines: list[str] = []
    for block in report_blocks(manifest, measurements):
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [f"> **WARNING: {block.text}**" if block.loud else block.text, ""]
        elif isinstance(block, Items):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += [_md_row(block.columns), "|" + "---|" * len(block.columns)]
            lines += [_md_row(row) for row in block.rows] + [""]
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _header(manifest: Mapping[str, Any], meas: Mapping[str, Any]) -> list[Block]:
    target, model, runtime = manifest["target"], manifest["model"], manifest["runtime"]
    source, device = manifest.get("source") or {}, (manifest.get("profile") or {}).get("device") or {}
    items = [
        f"model: {model['file']} ({model['format']}, {model['precision']}, {_bytes(model.get('size_bytes'))})",
        f"runtime: {runtime['name']} {runtime['version']} on {runtime['arch']} ({runtime.get('delegate') or '-'})",
        f"source: {source.get('file')} ({source.get('format')}), sha256 {str(source.get('sha256'))[:16]}...",
    ]
    if device:
        items.append(f"device: {device.get('name')} ({device.get('cpu')}, {fmt(device.get('clock_ghz'))} GHz)")
    data = manifest.get("data") or {}
    if data:
        items.append(
            f"data: {data.get('source')} ({fmt(data.get('samples'))} samples, labels: {fmt(data.get('labels'))})"
        )
    items.append(
        f"edgepack {manifest.get('edgepack_version', '?')}; manifest sha256 "
        f"{str(manifest.get('manifest_sha256'))[:16]}..."
    )
    blocks: list[Block] = [Heading(f"edgepack bundle: {target['name']}", 1), Para(f"{target['description']}.")]
    ratio = ((meas.get("quantization") or {}).get("latency") or {}).get("ratio")
    if isinstance(ratio, int | float) and ratio <= 1:
        blocks.append(Para(f"{NOT_FASTER} (speed-up {ratio:.3g}x, see Quantization).", loud=True))
    if (manifest.get("validation") or {}).get("passed") is False:
        blocks.append(Para("VALIDATION FAILED (see below).", loud=True))
    return [*blocks, Items(tuple(items))]


def _steps(steps: Sequence[Mapping[str, Any]]) -> list[Block]:
    rows = []
    for step in steps:
        tool = " ".join(fmt(step.get(k)) for k in ("tool", "tool_version") if step.get(k))
        tool = tool or fmt(step.get("tool_versions") or step.get("runtime"))
        io = f"{step['from']} -> {step['to']}" if step.get("from") else "-"
        known = {"name", "from", "to", "tool", "tool_version", "tool_versions", "runtime"}
        details = "; ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in step.items() if k not in known and v)
        rows.append((fmt(step.get("name")), io, tool, details or "-"))
    return [Heading("Steps"), Table(("step", "from -> to", "tool and version", "details"), tuple(rows))]


def _validation(validation: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Validation against the source model")]
    if not validation:
        return [*blocks, Para("Not validated.")]
    v = validation
    precision = f" (precision {v['precision']})" if v.get("precision") else ""
    blocks += [
        Para(
            f"{v.get('samples', '?')} samples; source run in {v.get('reference_runtime')} "
            f"{v.get('reference_version') or ''}, artifact in {v.get('candidate_runtime')} "
            f"{v.get('candidate_version') or ''}{precision}."
        ),
        _table(_OUTPUTS, _outputs(v.get("outputs") or []), 0),
    ]
    if str(v.get("inputs", "")).startswith("random"):
        blocks.append(Para(f"Inputs were {v['inputs']}: they say little about real data; pass --data.", loud=True))
    tol = v.get("tolerance") or {}
    if tol:
        budget = (
            f"Budget: max abs error <= {fmt(tol.get('max_abs_error'))}, cosine >= {fmt(tol.get('min_cosine'))}, "
            f"top-1 agreement >= {fmt(tol.get('min_top1_agreement'))}."
        )
        blocks.append(Para(budget))
    return blocks + _verdict("Validation", v)


def _compatibility(compat: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Operator compatibility")]
    if not compat.get("checked"):
        return [*blocks, Para(f"Not checked: {compat.get('note', 'no table for this runtime')}.")]
    verdict = f"Verdict: {compat.get('verdict')} (table {compat.get('table')}, runtime {compat.get('runtime')})."
    items = [f"unsupported: {fmt(compat.get('unsupported'))}", f"unknown to the table: {fmt(compat.get('unknown'))}"]
    return [*blocks, Para(verdict, loud=not compat.get("ok")), Items(tuple(items + list(compat.get("notes") or [])))]


def _device(check: Mapping[str, Any], meas: Mapping[str, Any], profile: Mapping[str, Any]) -> list[Block]:
    if not check.get("ran"):
        return [Heading("Device check"), Para(f"Not run: {check.get('reason', 'skipped')}.")]
    agreement = check.get("agreement") or {}
    items = [
        f"runner: {check.get('runner')} (machine {check.get('machine')})",
        f"emulated CPU: {check['cpu']}" if check.get("cpu") else "emulated CPU: none (not emulated)",
        f"runtime on the device: {check.get('runtime')} {check.get('runtime_version')}; python "
        f"{check.get('python')}; numpy {check.get('numpy_version')}",
        f"outputs agree with the host: {fmt(agreement.get('agree'))}"
        + (
            f" (on {agreement.get('samples')} of the {agreement['of']} validation samples: the emulation's cap, "
            "[emulation] samples; the others were validated on the host)"
            if agreement.get("of")
            else ""
        ),
    ]
    items += [f"{key}: {check[key]}" for key in ("proxy", "precision") if check.get(key)]
    executed = executed_as(check.get("delegation"))
    if executed:
        items.append(f"executed as: {executed}")
    if meas.get("shared_run"):
        items.append("run shared with an identical earlier check (same model bytes, runner, -cpu and inputs)")
    outputs = _rows(agreement.get("outputs") or [], ("output", "max_abs_error"))
    return [
        Heading("Device check"),
        Items(tuple(items)),
        _table(("output", "max abs error vs host"), outputs, 0),
        *_figures(meas, (profile.get("latency") or {}).get("budget_ms")),
    ]


def wall_time_kind(label: str) -> str:
    """What a wall-clock label says the time is: "EMULATED", "measured" or "" (the label does not say)."""
    low = label.lower()
    if "emulat" in low:
        return "EMULATED"
    return "measured" if "measured" in low.replace("not measured", "") else ""


def _figures(meas: Mapping[str, Any], budget_ms: Any) -> list[Block]:
    """The latency figures, each beside the label it was recorded with, then formulas and the chart."""
    figures = meas.get("figures") or {}
    latency, estimate, roofline = (
        meas.get("latency") or figures.get("emulated"),
        figures.get("estimate"),
        figures.get("roofline"),
    )
    rows, notes = [], []
    if latency:
        label = str(latency.get("label"))
        spread = f"{_ms(latency.get('min_ms'))} - {_ms(latency.get('max_ms'))}"
        value = f"median {_ms(latency.get('median_ms'))}, spread {spread} (stdev {_ms(latency.get('stdev_ms'))}, "
        rows.append(
            (f"wall time, {wall_time_kind(label) or 'see label'}", f"{value}{fmt(latency.get('runs'))} runs)", label)
        )
    if figures.get("instructions"):
        count = figures["instructions"]
        rows.append(("instructions per inference", fmt(count.get("per_inference")), str(count.get("label"))))
    elif meas.get("instructions"):
        rows.append(("instructions per inference", "not counted", str(meas["instructions"].get("note"))))
    if estimate:
        band = f"band {_ms(estimate.get('low_ms'))} - {_ms(estimate.get('high_ms'))}"
        rows.append(
            ("device latency, estimate", f"{_ms(estimate.get('value_ms'))} ({band})", str(estimate.get("label")))
        )
        notes.append(f"estimate formula: {estimate.get('formula')}")
        if isinstance(budget_ms, int | float) and isinstance(estimate.get("value_ms"), int | float):
            verdict = "within the budget" if estimate["value_ms"] <= budget_ms else "OVER the budget"
            notes.append(f"latency budget {budget_ms:g} ms, applied to the estimate: {verdict}")
    if roofline:
        bound = f"{_ms(roofline.get('bound_ms'))} ({roofline.get('limit')}-bound)"
        rows.append(("device latency, roofline lower bound", bound, str(roofline.get("label"))))
        notes += [f"roofline formula: {roofline.get('formula')}", *map(str, roofline.get("notes") or [])]
    notes += [str(n) for n in figures.get("notes") or []]
    if not rows:
        return [Para("No latency figures were recorded.")]
    blocks: list[Block] = [
        Heading("Latency figures (each with the label it was recorded with)", 3),
        Table(("figure", "value", "label as recorded"), tuple(rows)),
    ]
    blocks += [Items(tuple(notes))] if notes else []
    if latency and latency.get("samples_ms"):
        data = {"samples_ms": list(latency["samples_ms"]), "median_ms": latency.get("median_ms")}
        blocks.append(Chart("latency", f"Wall time per inference\n{latency.get('label')}", data))
    return blocks
