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

from edgepack.summary import executed_as

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
    return f"{value:,} B = {value / 1024:.1f} KiB" if isinstance(value, int) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def _outputs(outputs: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], ...]:
    """Per-output error rows; cosine with 6 decimals, since 4 significant digits round 0.99996 to 1."""
    rows = [
        {**o, "cosine": f"{o['cosine']:.6f}" if isinstance(o.get("cosine"), float) else o.get("cosine")}
        for o in outputs
    ]
    return _rows(rows, ("name", "max_abs_error", "mean_abs_error", "cosine", "sqnr_db", "top1_agreement"))


def _rows(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(fmt(r.get(key)) for key in keys) for r in records)


def _table(columns: Sequence[str], rows: tuple[tuple[str, ...], ...], long: int | None = None) -> Block:
    """A table, or a sentence when there are no rows."""
    return Table(tuple(columns), rows, long) if rows else Para("(none)")


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


_OUTPUTS = ("output", "max abs error", "mean abs error", "cosine", "SQNR dB", "top-1 agreement")


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
    tol = v.get("tolerance") or {}
    if tol:
        budget = (
            f"Budget: max abs error <= {fmt(tol.get('max_abs_error'))}, cosine >= {fmt(tol.get('min_cosine'))}, "
            f"top-1 agreement >= {fmt(tol.get('min_top1_agreement'))}."
        )
        blocks.append(Para(budget))
    return blocks + _verdict("Validation", v)


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
        _table(_OUTPUTS, _outputs(gate.get("outputs") or []), 0),
    ]
    if gate.get("float_accuracy") is not None:
        drop = gate.get("accuracy_drop")
        accuracy = [f"float accuracy: {_pct(gate['float_accuracy'])}"]
        accuracy.append(f"int8 accuracy: {_pct(gate.get('quantized_accuracy'))}")
        accuracy.append(f"accuracy drop: {100 * drop:.2f} points" if drop is not None else "accuracy drop: -")
        blocks.append(Items(tuple(accuracy)))
    checks = [{**c, "kind": str(c.get("kind")).replace("_", " "), "passed": _pass(c)} for c in gate.get("checks") or []]
    blocks += [
        Para("Budget (a check passes when value >= floor; the floor is the budget rounded to whole samples):"),
        _table(
            ("check", "output", "value", "floor", "budget", "result"),
            _rows(checks, ("kind", "output", "value", "threshold", "budget", "passed")),
        ),
    ]
    blocks += [Items(tuple(str(n) for n in gate["notes"]))] if gate.get("notes") else []
    return blocks + _verdict("Accuracy gate", gate)


def _pass(record: Mapping[str, Any]) -> str:
    return "pass" if record.get("passed") else "FAIL"


def _quantization(quant: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    s, size, mode = quant.get("settings") or {}, quant.get("size") or {}, str(quant.get("mode"))
    items = (
        f"tool: {quant.get('tool')} {quant.get('tool_version')}",
        f"method {fmt(s.get('method'))}; per-channel weights: {fmt(s.get('per_channel'))}; "
        f"symmetric activations: {fmt(s.get('symmetric_activations'))}; model I/O: {fmt(s.get('io'))}",
        f"calibration samples: {fmt(s.get('calibration_samples'))}; held-out samples: "
        f"{fmt(s.get('holdout_samples'))} (fraction {fmt(s.get('holdout_fraction'))}); seed {fmt(s.get('seed'))}",
        f"layers excluded by the user: {fmt(s.get('exclude'))}; repair keeps at most "
        f"{fmt(s.get('max_float_layers'))} layers in float",
        f"size: float {_bytes(size.get('float_bytes'))} -> {mode} {_bytes(size.get('quantized_bytes'))} "
        f"(float / {mode} = {fmt(size.get('ratio'))})",
    )
    blocks: list[Block] = [Heading(f"Quantization ({mode})"), *_speed(latency), Items(items)]
    if isinstance(size.get("ratio"), int | float) and size["ratio"] < 1:
        blocks.append(Para(f"The {mode} model file is LARGER than the float one.", loud=True))
    io = [{"tensor": name, **params} for name, params in sorted((quant.get("io") or {}).items())]
    blocks += [
        Heading("Input and output quantization parameters", 3),
        _table(("tensor", "dtype", "scale", "zero point"), _rows(io, ("tensor", "dtype", "scale", "zero_point")), 0),
    ]
    repaired = quant.get("repaired") or {}
    blocks += _repair(repaired) + _layers(quant.get("layers") or [], repaired.get("float_layers") or [])
    bars = [{"label": "float", "bytes": size.get("float_bytes")}, {"label": mode, "bytes": size.get("quantized_bytes")}]
    blocks.append(Chart("sizes", f"Model size: float vs {mode}", {"bars": bars}))
    if quant.get("warnings"):
        blocks += [Heading("Warnings", 3), Items(tuple(str(w) for w in quant["warnings"]))]
    return blocks


def _speed(latency: Mapping[str, Any] | None) -> list[Block]:
    """The host's int8 vs float latency, with a loud line when int8 does not pay for itself."""
    if not latency:
        return [Para("Host latency of int8 vs float: not measured.")]
    runs, ratio = latency.get("runs") or {}, latency.get("ratio")
    int8_ms, float_ms = _ms(latency.get("int8_ms")), _ms(latency.get("float_ms"))
    text = (
        f"Host latency, {latency.get('label')}: int8 {int8_ms} vs float {float_ms} "
        f"({latency.get('statistic', 'median')} of {fmt(runs.get('int8'))} and {fmt(runs.get('float'))} runs, "
        f"{latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s)); speed-up float / int8 = {fmt(ratio)}x."
    )
    if not (isinstance(ratio, int | float) and ratio <= 1):
        return [Para(text)]
    loud = f"{NOT_FASTER}: int8 {int8_ms} vs float {float_ms} (speed-up {ratio:.3g}x on the host; measure the device)."
    return [Para(loud, loud=True), Para(text)]


def _repair(repaired: Mapping[str, Any]) -> list[Block]:
    kept = repaired.get("float_layers") or []
    attempts = [
        {
            **a,
            "n": i,
            "excluded": a.get("excluded") or "-",
            "passed": _pass(a),
            "size": _bytes(a.get("size_bytes")),
            "int8": _pct(a.get("quantized_accuracy")),
            "float": _pct(a.get("float_accuracy")),
        }
        for i, a in enumerate(repaired.get("attempts") or [], 1)
    ]
    return [
        Heading("Layers kept in float (repair)", 3),
        Items(tuple(kept)) if kept else Para("None: every layer is quantized."),
        Para("Each attempt and what it cost:"),
        _table(
            ("attempt", "layers in float", "kept in float", "int8 accuracy", "float accuracy", "size", "gate"),
            _rows(attempts, ("n", "float_layers", "excluded", "int8", "float", "size", "passed")),
            2,
        ),
    ]


def _layers(layers: Sequence[Mapping[str, Any]], kept: Sequence[str]) -> list[Block]:
    if not layers:
        return []
    rows = [{**layer, "float": layer.get("name") in kept} for layer in layers]
    bars = [
        {"name": r.get("name"), "op": r.get("op_type"), "sqnr_db": r.get("sqnr_db"), "float": r["float"]} for r in rows
    ]
    return [
        Heading(f"Per-layer error (the {len(rows)} worst layers of the fully quantized model)", 3),
        _table(
            ("layer", "op", "SQNR dB", "RMSE / scale", "MSE", "kept in float"),
            _rows(rows, ("name", "op_type", "sqnr_db", "rmse_over_scale", "mse", "float")),
            0,
        ),
        Chart("layers", "Per-layer quantization error (SQNR in dB; lower is worse)", {"layers": bars}),
    ]


_COMPRESSION_METRICS = (
    ("file size", "file_bytes", _bytes),
    ("gzip archive size", "archive_bytes", _bytes),
    ("parameters", "params", fmt),
    ("nonzero parameters", "nonzero_params", fmt),
    ("sparsity", "sparsity", _pct),
    ("MACs per inference", "macs", fmt),
    ("accuracy", "accuracy", _pct),
    ("top-1 agreement with the original", "agreement", _pct),
)


def _compression(n: int, step: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    before, after, method = step.get("before") or {}, step.get("after") or {}, step.get("method")
    rows = [(name, f(before.get(key)), f(after.get(key))) for name, key, f in _COMPRESSION_METRICS]
    if latency:
        label = (
            f"host latency ({latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s), median of "
            f"{fmt(latency.get('runs'))} runs on this host, not the device)"
        )
        speedup = f" (speed-up {fmt(latency.get('speedup'))}x)"
        rows.append((label, _ms(latency.get("before_ms")), _ms(latency.get("after_ms")) + speedup))
    layers = [
        {
            **x,
            "p": f"{fmt(x.get('params_before'))} -> {fmt(x.get('params_after'))}",
            "s": _pct(x.get("sparsity")),
            "c": f"{fmt(x.get('channels_before'))} -> {fmt(x.get('channels_after'))}",
        }
        for x in step.get("layers") or []
    ]
    bars = [
        {
            "label": f"before ({before.get('format')})",
            "bytes": before.get("file_bytes"),
            "gzip": before.get("archive_bytes"),
        },
        {"label": f"after {method}", "bytes": after.get("file_bytes"), "gzip": after.get("archive_bytes")},
    ]
    return [
        Heading(f"Compression {n}: {method}"),
        Items((f"settings: {fmt(step.get('settings'))}", f"training: {fmt(step.get('training'))}")),
        Table(("metric", "before", "after"), tuple(rows)),
        _table(("layer", "op", "parameters", "channels", "sparsity"), _rows(layers, ("name", "op", "p", "c", "s")), 0),
        *([Items(tuple(str(x) for x in step["notes"]))] if step.get("notes") else []),
        Chart("sizes", f"Model size before and after {method}", {"bars": bars}),
    ]


def _compression_device(device: Mapping[str, Any]) -> list[Block]:
    """Before/after compression on the emulated device: instruction counts (and estimates) decide."""
    before, after = device.get("before") or {}, device.get("after") or {}
    rows = (
        ("model size", _bytes(before.get("size_bytes")), _bytes(after.get("size_bytes"))),
        (
            "guest instructions per inference (regression metric)",
            fmt(before.get("instructions_per_inference")),
            fmt(after.get("instructions_per_inference")),
        ),
        ("device latency, estimate (not measured)", _ms(before.get("estimate_ms")), _ms(after.get("estimate_ms"))),
        (
            f"wall time, EMULATED ({before.get('emulated_label') or 'emulated'})",
            _ms(before.get("emulated_median_ms")),
            _ms(after.get("emulated_median_ms")),
        ),
    )
    return [
        Heading("Compression on the emulated device"),
        Para(str(device.get("label", ""))),
        Table(("figure", "before", "after"), rows),
    ]


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
        f"outputs agree with the host: {fmt(agreement.get('agree'))}",
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
