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


def _ms(value: Any) -> str:
    return f"{value:.3g} ms" if isinstance(value, int | float) else "-"


def _bytes(value: Any) -> str:
    return f"{value:,} B ({value / 1024:.1f} KiB)" if isinstance(value, int) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def _table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], long: int | None = None) -> Block:
    """Table of ``rows`` with ``columns`` (key -> header); a sentence when there are none."""
    if not rows:
        return Para("(none)")
    cells = tuple(tuple(fmt(r.get(key)) for key in columns) for r in rows)
    return Table(tuple(columns.values()), cells, long)


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
        items.append(f"data: {data.get('source')} ({fmt(data.get('samples'))} samples, labels: {fmt(data.get('labels'))})")
    items.append(f"edgepack {manifest.get('edgepack_version', '?')}; manifest sha256 "
                 f"{str(manifest.get('manifest_sha256'))[:16]}...")
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
    return [Heading("Steps"), Table(("step", "from -> to", "tool and version", "details"), tuple(rows), 3)]


_OUTPUT_COLUMNS = {"name": "output", "max_abs_error": "max abs error", "mean_abs_error": "mean abs error",
                   "cosine": "cosine", "sqnr_db": "SQNR dB", "top1_agreement": "top-1 agreement"}


def _validation(validation: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Validation against the source model")]
    if not validation:
        return [*blocks, Para("Not validated.")]
    blocks.append(Para(
        f"{validation.get('samples', '?')} samples; source run in {validation.get('reference_runtime', '?')} "
        f"{validation.get('reference_version') or ''}, artifact in {validation.get('candidate_runtime', '?')} "
        f"{validation.get('candidate_version') or ''}"
        + (f" (precision {validation['precision']})" if validation.get("precision") else "") + "."
    ))
    blocks.append(_table(validation.get("outputs") or [], _OUTPUT_COLUMNS, 0))
    tol = validation.get("tolerance") or {}
    if tol:
        blocks.append(Para(f"Budget: max abs error <= {fmt(tol.get('max_abs_error'))}, cosine >= "
                           f"{fmt(tol.get('min_cosine'))}, top-1 agreement >= {fmt(tol.get('min_top1_agreement'))}."))
    return blocks + _verdict("Validation", validation)


def _verdict(what: str, report: Mapping[str, Any]) -> list[Block]:
    if report.get("passed"):
        return [Para(f"{what} PASSED.")]
    failures = "; ".join(str(f) for f in report.get("failures") or []) or "see the table"
    return [Para(f"{what} FAILED: {failures}", loud=True)]


def _gate(gate: Mapping[str, Any]) -> list[Block]:
    labels = f"labels scored on output '{gate['label_output']}'" if gate.get("label_output") else "no labels"
    blocks: list[Block] = [
        Heading("Accuracy gate: int8 against the float model"),
        Para(f"{gate.get('samples', '?')} held-out samples, not used for calibration; {labels}."),
        _table(gate.get("outputs") or [], _OUTPUT_COLUMNS, 0),
    ]
    if gate.get("float_accuracy") is not None:
        drop = gate.get("accuracy_drop")
        blocks.append(Items((f"float accuracy: {_pct(gate['float_accuracy'])}",
                             f"int8 accuracy: {_pct(gate.get('quantized_accuracy'))}",
                             f"accuracy drop: {100 * drop:.2f} points" if drop is not None else "accuracy drop: -")))
    rows = [{**c, "kind": str(c.get("kind", "")).replace("_", " "), "passed": "pass" if c.get("passed") else "FAIL"}
            for c in gate.get("checks") or []]
    blocks += [Para("Budget (a check passes when value >= floor; the floor is the budget rounded to whole samples):"),
               _table(rows, {"kind": "check", "output": "output", "value": "value", "threshold": "floor",
                             "budget": "budget", "passed": "result"})]
    if gate.get("notes"):
        blocks.append(Items(tuple(str(n) for n in gate["notes"])))
    return blocks + _verdict("Accuracy gate", gate)


def _quantization(quant: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    settings, size = quant.get("settings") or {}, quant.get("size") or {}
    blocks: list[Block] = [Heading(f"Quantization ({quant.get('mode')})"), *_speed(latency)]
    blocks.append(Items((
        f"tool: {quant.get('tool')} {quant.get('tool_version')}",
        f"method {fmt(settings.get('method'))}; per-channel weights: {fmt(settings.get('per_channel'))}; "
        f"symmetric activations: {fmt(settings.get('symmetric_activations'))}; model I/O: {fmt(settings.get('io'))}",
        f"calibration samples: {fmt(settings.get('calibration_samples'))}; held-out samples: "
        f"{fmt(settings.get('holdout_samples'))} (fraction {fmt(settings.get('holdout_fraction'))}); "
        f"seed {fmt(settings.get('seed'))}",
        f"layers excluded by the user: {fmt(settings.get('exclude'))}; repair keeps at most "
        f"{fmt(settings.get('max_float_layers'))} layers in float",
        f"size: float {_bytes(size.get('float_bytes'))} -> {quant.get('mode')} {_bytes(size.get('quantized_bytes'))}"
        f" (float / quantized = {fmt(size.get('ratio'))})",
    )))
    if isinstance(size.get("ratio"), int | float) and size["ratio"] < 1:
        blocks.append(Para("The quantized model file is LARGER than the float one.", loud=True))
    io = [{"tensor": name, **params} for name, params in sorted((quant.get("io") or {}).items())]
    blocks += [Heading("Input and output quantization parameters", 3),
               _table(io, {"tensor": "tensor", "dtype": "dtype", "scale": "scale", "zero_point": "zero point"}, 0)]
    blocks += _repair(quant.get("repaired") or {})
    blocks += _layers(quant.get("layers") or [], (quant.get("repaired") or {}).get("float_layers") or [])
    bars = [{"label": "float", "bytes": size.get("float_bytes")},
            {"label": str(quant.get("mode")), "bytes": size.get("quantized_bytes")}]
    blocks.append(Chart("sizes", "Model size: float vs " + str(quant.get("mode")), {"bars": bars}))
    if quant.get("warnings"):
        blocks += [Heading("Warnings", 3), Items(tuple(str(w) for w in quant["warnings"]))]
    return blocks


def _speed(latency: Mapping[str, Any] | None) -> list[Block]:
    if not latency:
        return [Para("Host latency of int8 vs float: not measured.")]
    runs = latency.get("runs") or {}
    text = (f"Host latency, {latency.get('label')}: int8 {_ms(latency.get('int8_ms'))} vs float "
            f"{_ms(latency.get('float_ms'))} ({latency.get('statistic', 'median')} of {fmt(runs.get('int8'))} and "
            f"{fmt(runs.get('float'))} runs, {latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s)); "
            f"speed-up float / int8 = {fmt(latency.get('ratio'))}x.")
    ratio = latency.get("ratio")
    if isinstance(ratio, int | float) and ratio <= 1:
        return [Para(f"{NOT_FASTER}: int8 {_ms(latency.get('int8_ms'))} vs float {_ms(latency.get('float_ms'))} "
                     f"(speed-up {ratio:.3g}x on the host; the device may differ, measure it there).", loud=True),
                Para(text)]
    return [Para(text)]


def _repair(repaired: Mapping[str, Any]) -> list[Block]:
    kept = repaired.get("float_layers") or []
    blocks: list[Block] = [Heading("Layers kept in float (repair)", 3)]
    blocks.append(Items(tuple(kept)) if kept else Para("None: every layer is quantized."))
    rows = [{**a, "n": i, "excluded": a.get("excluded") or "-", "passed": "pass" if a.get("passed") else "FAIL",
             "size_bytes": _bytes(a.get("size_bytes")), "quantized_accuracy": _pct(a.get("quantized_accuracy")),
             "float_accuracy": _pct(a.get("float_accuracy"))}
            for i, a in enumerate(repaired.get("attempts") or [], 1)]
    columns = {"n": "attempt", "float_layers": "layers in float", "excluded": "kept in float",
               "quantized_accuracy": "int8 accuracy", "float_accuracy": "float accuracy", "size_bytes": "size",
               "passed": "gate"}
    return [*blocks, Para("Each attempt and what it cost:"), _table(rows, columns, 2)]


def _layers(layers: Sequence[Mapping[str, Any]], kept: Sequence[str]) -> list[Block]:
    rows = [{**layer, "float": "yes" if layer.get("name") in kept else "-"} for layer in layers]
    columns = {"name": "layer", "op_type": "op", "sqnr_db": "SQNR dB", "rmse_over_scale": "RMSE / scale",
               "mse": "MSE", "float": "kept in float"}
    chart = Chart("layers", "Per-layer quantization error (SQNR in dB; lower is worse)",
                  {"layers": [{"name": r.get("name"), "op": r.get("op_type"), "sqnr_db": r.get("sqnr_db"),
                               "float": r["float"] == "yes"} for r in rows]})
    return [Heading(f"Per-layer error (the {len(rows)} worst layers, fully quantized model)", 3),
            _table(rows, columns, 0), chart]


def _compression(n: int, step: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    before, after = step.get("before") or {}, step.get("after") or {}
    metrics = [("file size", "file_bytes", _bytes), ("gzip archive size", "archive_bytes", _bytes),
               ("parameters", "params", fmt), ("nonzero parameters", "nonzero_params", fmt),
               ("sparsity", "sparsity", _pct), ("MACs per inference", "macs", fmt),
               ("accuracy", "accuracy", _pct), ("top-1 agreement with the original", "agreement", _pct)]
    rows = [(name, f(before.get(key)), f(after.get(key))) for name, key, f in metrics]
    if latency:
        label = (f"host latency ({latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s), median of "
                 f"{fmt(latency.get('runs'))} runs on this host, not the device)")
        rows.append((label, _ms(latency.get("before_ms")), _ms(latency.get("after_ms")) +
                     f" (speed-up {fmt(latency.get('speedup'))}x)"))
    blocks: list[Block] = [
        Heading(f"Compression {n}: {step.get('method')}"),
        Items((f"settings: {fmt(step.get('settings'))}", f"training: {fmt(step.get('training'))}")),
        Table(("metric", "before", "after"), tuple(rows)),
    ]
    layer_rows = [{**x, "params": f"{fmt(x.get('params_before'))} -> {fmt(x.get('params_after'))}",
                   "channels": f"{fmt(x.get('channels_before'))} -> {fmt(x.get('channels_after'))}",
                   "sparsity": _pct(x.get("sparsity"))} for x in step.get("layers") or []]
    blocks += [_table(layer_rows, {"name": "layer", "op": "op", "params": "parameters", "channels": "channels",
                                   "sparsity": "sparsity"}, 0)]
    if step.get("notes"):
        blocks.append(Items(tuple(str(x) for x in step["notes"])))
    bars = [{"label": f"before ({before.get('format')})", "bytes": before.get("file_bytes"),
             "gzip": before.get("archive_bytes")},
            {"label": f"after {step.get('method')}", "bytes": after.get("file_bytes"), "gzip": after.get("archive_bytes")}]
    return [*blocks, Chart("sizes", f"Model size before and after {step.get('method')}", {"bars": bars})]


def _compatibility(compat: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Operator compatibility")]
    if not compat.get("checked"):
        return [*blocks, Para(f"Not checked: {compat.get('note', 'no table for this runtime')}.")]
    verdict = f"Verdict: {compat.get('verdict')} (table {compat.get('table')}, runtime {compat.get('runtime')})."
    blocks.append(Para(verdict, loud=not compat.get("ok")))
    items = [f"unsupported: {fmt(compat.get('unsupported'))}", f"unknown to the table: {fmt(compat.get('unknown'))}"]
    return [*blocks, Items(tuple(items + [str(n) for n in compat.get("notes") or []]))]


def _device(check: Mapping[str, Any], meas: Mapping[str, Any], profile: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Device check")]
    if not check.get("ran"):
        return [*blocks, Para(f"Not run: {check.get('reason', 'skipped')}.")]
    agreement = check.get("agreement") or {}
    items = [f"runner: {check.get('runner')} (machine {check.get('machine')})",
             f"emulated CPU: {check['cpu']}" if check.get("cpu") else "emulated CPU: none (not emulated)",
             f"runtime on the device: {check.get('runtime')} {check.get('runtime_version')}; python "
             f"{check.get('python')}; numpy {check.get('numpy_version')}",
             f"outputs agree with the host: {fmt(agreement.get('agree'))}"]
    items += [f"proxy: {check['proxy']}"] if check.get("proxy") else []
    items += [f"precision: {check['precision']}"] if check.get("precision") else []
    blocks += [Items(tuple(items)),
               _table(agreement.get("outputs") or [], {"output": "output", "max_abs_error": "max abs error vs host"}, 0)]
    return blocks + _figures(meas, (profile.get("latency") or {}).get("budget_ms"))


def wall_time_kind(label: str) -> str:
    """What a wall-clock label says the time is: "EMULATED", "measured" or "" (unknown)."""
    low = label.lower()
    if "emulat" in low:
        return "EMULATED"
    return "measured" if "measured" in low.replace("not measured", "") else ""


def _figures(meas: Mapping[str, Any], budget_ms: Any) -> list[Block]:
    figures, latency = meas.get("figures") or {}, meas.get("latency") or figures.get("emulated")
    rows, notes = [], []
    if latency:
        label = str(latency.get("label"))
        kind = wall_time_kind(label)
        rows.append((f"wall time per inference, {kind or 'see label'}",
                     f"median {_ms(latency.get('median_ms'))}, spread {_ms(latency.get('min_ms'))} - "
                     f"{_ms(latency.get('max_ms'))} (stdev {_ms(latency.get('stdev_ms'))}, {fmt(latency.get('runs'))}"
                     " runs)", label))
    instructions = figures.get("instructions")
    if instructions:
        rows.append(("instructions per inference (the regression metric)", fmt(instructions.get("per_inference")),
                     str(instructions.get("label"))))
    elif meas.get("instructions"):
        rows.append(("instructions per inference", "not counted", str(meas["instructions"].get("note"))))
    estimate, roofline = figures.get("estimate"), figures.get("roofline")
    if estimate:
        rows.append(("device latency, estimate", f"{_ms(estimate.get('value_ms'))} (band {_ms(estimate.get('low_ms'))}"
                     f" - {_ms(estimate.get('high_ms'))})", str(estimate.get("label"))))
        notes.append(f"estimate formula: {estimate.get('formula')}")
        if isinstance(budget_ms, int | float) and isinstance(estimate.get("value_ms"), int | float):
            within = "within" if estimate["value_ms"] <= budget_ms else "OVER"
            notes.append(f"latency budget {budget_ms:g} ms applies to the estimate: {within} budget")
    if roofline:
        rows.append(("device latency, roofline lower bound", f"{_ms(roofline.get('bound_ms'))} "
                     f"({roofline.get('limit')}-bound)", str(roofline.get("label"))))
        notes += [f"roofline formula: {roofline.get('formula')}", *map(str, roofline.get("notes") or [])]
    notes += [str(n) for n in figures.get("notes") or []]
    if not rows:
        return [Para("No latency figures were recorded.")]
    blocks: list[Block] = [Heading("Latency figures (each with the label it was recorded with)", 3),
                           Table(("figure", "value", "label as recorded"), tuple(rows), 2)]
    blocks += [Items(tuple(notes))] if notes else []
    if latency and latency.get("samples_ms"):
        blocks.append(Chart("latency", f"Wall time per inference: {latency.get('label')}",
                            {"samples_ms": list(latency["samples_ms"]), "median_ms": latency.get("median_ms")}))
    return blocks
