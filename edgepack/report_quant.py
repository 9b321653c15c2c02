"""Report sections for int8 (the accuracy gate, speed, repaired layers, per-layer errors) and compression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgepack.layer_names import display_name, short_converter_name
from edgepack.report_blocks import (
    NOT_FASTER,
    OUTPUT_COLUMNS,
    Block,
    Chart,
    Heading,
    Items,
    Para,
    Table,
    bytes_text,
    fmt,
    ms_text,
    output_rows,
    pass_text,
    pct_text,
    record_rows,
    table_block,
    verdict_blocks,
)


def gate_blocks(gate: Mapping[str, Any]) -> list[Block]:
    labels = f"labels scored on output '{gate['label_output']}'" if gate.get("label_output") else "no labels"
    blocks: list[Block] = [
        Heading("Accuracy gate: int8 against the float model"),
        Para(f"{gate.get('samples', '?')} held-out samples, not used for calibration; {labels}."),
        table_block(OUTPUT_COLUMNS, output_rows(gate.get("outputs") or []), 0),
    ]
    if gate.get("float_accuracy") is not None:
        drop = gate.get("accuracy_drop")
        accuracy = [f"float accuracy: {pct_text(gate['float_accuracy'])}"]
        accuracy.append(f"int8 accuracy: {pct_text(gate.get('quantized_accuracy'))}")
        accuracy.append(f"accuracy drop: {100 * drop:.2f} points" if drop is not None else "accuracy drop: -")
        blocks.append(Items(tuple(accuracy)))
    checks = [
        {**c, "kind": str(c.get("kind")).replace("_", " "), "passed": pass_text(c)} for c in gate.get("checks") or []
    ]
    blocks += [
        Para("Budget (a check passes when value >= floor; the floor is the budget rounded to whole samples):"),
        table_block(
            ("check", "output", "value", "floor", "budget", "result"),
            record_rows(checks, ("kind", "output", "value", "threshold", "budget", "passed")),
        ),
    ]
    blocks += [Items(tuple(str(n) for n in gate["notes"]))] if gate.get("notes") else []
    return blocks + verdict_blocks("Accuracy gate", gate)


def quantization_blocks(quant: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    s, size, mode = quant.get("settings") or {}, quant.get("size") or {}, str(quant.get("mode"))
    items = (
        f"tool: {quant.get('tool')} {quant.get('tool_version')}",
        f"method {fmt(s.get('method'))}; per-channel weights: {fmt(s.get('per_channel'))}; "
        f"symmetric activations: {fmt(s.get('symmetric_activations'))}; model I/O: {fmt(s.get('io'))}",
        f"calibration samples: {fmt(s.get('calibration_samples'))}; held-out samples: "
        f"{fmt(s.get('holdout_samples'))} (fraction {fmt(s.get('holdout_fraction'))}); seed {fmt(s.get('seed'))}",
        f"layers excluded by the user: {fmt(s.get('exclude'))}; repair keeps at most "
        f"{fmt(s.get('max_float_layers'))} layers in float",
        f"size: float {bytes_text(size.get('float_bytes'))} -> {mode} {bytes_text(size.get('quantized_bytes'))} "
        f"(float / {mode} = {fmt(size.get('ratio'))})",
    )
    blocks: list[Block] = [Heading(f"Quantization ({mode})"), *speed_blocks(latency), Items(items)]
    if isinstance(size.get("ratio"), int | float) and size["ratio"] < 1:
        blocks.append(Para(f"The {mode} model file is LARGER than the float one.", loud=True))
    io = [{"tensor": name, **params} for name, params in sorted((quant.get("io") or {}).items())]
    blocks += [
        Heading("Input and output quantization parameters", 3),
        table_block(
            ("tensor", "dtype", "scale", "zero point"), record_rows(io, ("tensor", "dtype", "scale", "zero_point")), 0
        ),
    ]
    repaired, layers = quant.get("repaired") or {}, quant.get("layers") or []
    blocks += repair_blocks(repaired, layers) + layer_blocks(layers, repaired.get("float_layers") or [])
    bars = [{"label": "float", "bytes": size.get("float_bytes")}, {"label": mode, "bytes": size.get("quantized_bytes")}]
    blocks.append(Chart("sizes", f"Model size: float vs {mode}", {"bars": bars}))
    if quant.get("warnings"):
        blocks += [Heading("Warnings", 3), Items(tuple(str(w) for w in quant["warnings"]))]
    return blocks


def speed_blocks(latency: Mapping[str, Any] | None) -> list[Block]:
    """The host's int8 vs float latency, with a loud line when int8 does not pay for itself."""
    if not latency:
        return [Para("Host latency of int8 vs float: not measured.")]
    runs, ratio = latency.get("runs") or {}, latency.get("ratio")
    int8_ms, float_ms = ms_text(latency.get("int8_ms")), ms_text(latency.get("float_ms"))
    text = (
        f"Host latency, {latency.get('label')}: int8 {int8_ms} vs float {float_ms} "
        f"({latency.get('statistic', 'median')} of {fmt(runs.get('int8'))} and {fmt(runs.get('float'))} runs, "
        f"{latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s)); speed-up float / int8 = {fmt(ratio)}x."
    )
    if not (isinstance(ratio, int | float) and ratio <= 1):
        return [Para(text)]
    loud = f"{NOT_FASTER}: int8 {int8_ms} vs float {float_ms} (speed-up {ratio:.3g}x on the host; measure the device)."
    return [Para(loud, loud=True), Para(text)]


def _sources(repaired: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Converter layer name -> source layer name, where the manifest knows it."""
    known = {str(x.get("name")): x.get("source") for x in layers}
    for a in [repaired, *(repaired.get("attempts") or [])]:
        names = a.get("float_layers") if a is repaired else a.get("excluded")
        sources = a.get("float_layers_source") if a is repaired else a.get("excluded_source")
        if isinstance(names, list) and isinstance(sources, list) and len(sources) == len(names):
            known.update({str(n): s for n, s in zip(names, sources, strict=True) if s})
    return {name: str(source) for name, source in known.items() if source}


def repair_blocks(repaired: Mapping[str, Any], layers: Sequence[Mapping[str, Any]] = ()) -> list[Block]:
    """The layers kept in float (source names first, the converter's after) and every attempt's cost."""
    sources = _sources(repaired, layers)
    kept = [display_name(str(name), sources.get(str(name))) for name in repaired.get("float_layers") or []]
    attempts = [
        {
            **a,
            "n": i,
            "excluded": [sources.get(str(n)) or short_converter_name(str(n)) for n in a.get("excluded") or []] or "-",
            "passed": pass_text(a),
            "size": bytes_text(a.get("size_bytes")),
            "int8": pct_text(a.get("quantized_accuracy")),
            "float": pct_text(a.get("float_accuracy")),
        }
        for i, a in enumerate(repaired.get("attempts") or [], 1)
    ]
    return [
        Heading("Layers kept in float (repair)", 3),
        Items(tuple(kept)) if kept else Para("None: every layer is quantized."),
        Para("Each attempt and what it cost:"),
        table_block(
            ("attempt", "layers in float", "kept in float", "int8 accuracy", "float accuracy", "size", "gate"),
            record_rows(attempts, ("n", "float_layers", "excluded", "int8", "float", "size", "passed")),
            2,
        ),
    ]


def _source_text(layer: Mapping[str, Any]) -> str | None:
    """``relu1 (fused: bn1, conv1)``: the source layer, and the others the converter fused into this op."""
    if not layer.get("source"):
        return None
    fused = [str(f) for f in layer.get("source_fused") or []]
    return f"{layer['source']} (fused: {', '.join(fused)})" if fused else str(layer["source"])


def layer_blocks(layers: Sequence[Mapping[str, Any]], kept: Sequence[str]) -> list[Block]:
    """The per-layer error table (source layer first, the converter's name shortened beside it) and its chart."""
    if not layers:
        return []
    rows = [
        {
            **layer,
            "float": layer.get("name") in kept,
            "layer": _source_text(layer),
            "converter": short_converter_name(str(layer.get("name"))),
        }
        for layer in layers
    ]
    bars = [
        {
            "name": r.get("name"),
            "source": r.get("source"),
            "op": r.get("op_type"),
            "sqnr_db": r.get("sqnr_db"),
            "float": r["float"],
        }
        for r in rows
    ]
    return [
        Heading(f"Per-layer error (the {len(rows)} worst layers of the fully quantized model)", 3),
        Para(
            "layer: the source model's layer (- where no source layer matches); converter name: the one the "
            "backend uses, which quantize exclusions take."
        ),
        table_block(
            ("layer", "converter name", "op", "SQNR dB", "RMSE / scale", "MSE", "kept in float"),
            record_rows(rows, ("layer", "converter", "op_type", "sqnr_db", "rmse_over_scale", "mse", "float")),
            1,
        ),
        Chart("layers", "Per-layer quantization error (SQNR in dB; lower is worse)", {"layers": bars}),
    ]


_COMPRESSION_METRICS = (
    ("file size", "file_bytes", bytes_text),
    ("gzip archive size", "archive_bytes", bytes_text),
    ("parameters", "params", fmt),
    ("nonzero parameters", "nonzero_params", fmt),
    ("sparsity", "sparsity", pct_text),
    ("MACs per inference", "macs", fmt),
    ("accuracy", "accuracy", pct_text),
    ("top-1 agreement with the original", "agreement", pct_text),
)


def compression_blocks(n: int, step: Mapping[str, Any], latency: Mapping[str, Any] | None) -> list[Block]:
    before, after, method = step.get("before") or {}, step.get("after") or {}, step.get("method")
    rows = [(name, f(before.get(key)), f(after.get(key))) for name, key, f in _COMPRESSION_METRICS]
    if latency:
        label = (
            f"host latency ({latency.get('runtime')}, {fmt(latency.get('threads'))} thread(s), median of "
            f"{fmt(latency.get('runs'))} runs on this host, not the device)"
        )
        speedup = f" (speed-up {fmt(latency.get('speedup'))}x)"
        rows.append((label, ms_text(latency.get("before_ms")), ms_text(latency.get("after_ms")) + speedup))
    layers = [
        {
            **x,
            "p": f"{fmt(x.get('params_before'))} -> {fmt(x.get('params_after'))}",
            "s": pct_text(x.get("sparsity")),
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
        table_block(
            ("layer", "op", "parameters", "channels", "sparsity"), record_rows(layers, ("name", "op", "p", "c", "s")), 0
        ),
        *([Items(tuple(str(x) for x in step["notes"]))] if step.get("notes") else []),
        Chart("sizes", f"Model size before and after {method}", {"bars": bars}),
    ]


def compression_device_blocks(device: Mapping[str, Any]) -> list[Block]:
    """Before/after compression on the emulated device: instruction counts (and estimates) decide."""
    before, after = device.get("before") or {}, device.get("after") or {}
    rows = (
        ("model size", bytes_text(before.get("size_bytes")), bytes_text(after.get("size_bytes"))),
        (
            "guest instructions per inference (regression metric)",
            fmt(before.get("instructions_per_inference")),
            fmt(after.get("instructions_per_inference")),
        ),
        (
            "device latency, estimate (not measured)",
            ms_text(before.get("estimate_ms")),
            ms_text(after.get("estimate_ms")),
        ),
        (
            f"wall time, EMULATED ({before.get('emulated_label') or 'emulated'})",
            ms_text(before.get("emulated_median_ms")),
            ms_text(after.get("emulated_median_ms")),
        ),
    )
    return [
        Heading("Compression on the emulated device"),
        Para(str(device.get("label", ""))),
        Table(("figure", "before", "after"), rows),
    ]
