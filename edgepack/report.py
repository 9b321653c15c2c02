"""Human-readable reports written into ``report/`` of a bundle.

The manifest holds the deterministic facts (what ran, validation figures,
instruction counts); ``report/measurements.json`` holds what varies from run
to run (wall-clock latencies). Reports are rendered from both and are not
part of the shipped archive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _table(rows: list[Mapping[str, Any]], columns: list[str]) -> list[str]:
    if not rows:
        return ["(none)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def render_markdown(manifest: Mapping[str, Any], measurements: Mapping[str, Any] | None = None) -> str:
    """report.md: target, model, steps, validation, compatibility, device check."""
    target, model, runtime = manifest["target"], manifest["model"], manifest["runtime"]
    lines = [
        f"# edgepack bundle: {target['name']}",
        "",
        f"{target['description']}.",
        "",
        f"- model: `{model['file']}` ({model['format']}, {model['precision']}, {model['size_bytes']:,} bytes)",
        f"- runtime: {runtime['name']} {runtime['version']} on {runtime['arch']} ({runtime['delegate']})",
        f"- source: `{manifest['source']['file']}` ({manifest['source']['format']}), sha256 "
        f"`{manifest['source']['sha256'][:16]}...`",
        "",
        "## Steps",
        "",
        *_table(list(manifest.get("steps", [])), ["name", "from", "to", "tool", "tool_version"]),
        "",
        "## Validation against the source model",
        "",
    ]
    validation = manifest.get("validation") or {}
    lines.append(
        f"{validation.get('samples', '?')} samples; source run in {validation.get('reference_runtime', '?')}, "
        f"artifact in {validation.get('candidate_runtime', '?')}"
        + (f" (precision {validation['precision']})" if validation.get("precision") else "")
        + "."
    )
    lines += [
        "",
        *_table(list(validation.get("outputs", [])), ["name", "max_abs_error", "cosine", "sqnr_db", "top1_agreement"]),
        "",
    ]
    compat = manifest.get("compatibility") or {}
    lines += ["## Operator compatibility", "", _compat_line(compat), ""]
    lines += ["## Device check", "", *_device_lines(manifest.get("device_check") or {}, measurements or {}), ""]
    return "\n".join(lines)


def _compat_line(compat: Mapping[str, Any]) -> str:
    if not compat.get("checked"):
        return compat.get("note", "not checked")
    if compat.get("ok"):
        notes = "; ".join(compat.get("notes", []))
        return "Every operator is supported by the target runtime." + (f" Notes: {notes}" if notes else "")
    return "Unsupported: " + ", ".join(compat.get("unsupported", []))


def _device_lines(check: Mapping[str, Any], measurements: Mapping[str, Any]) -> list[str]:
    if not check.get("ran"):
        return [f"Not run: {check.get('reason', 'skipped')}."]
    lines = [
        f"- runner: {check.get('runner')} ({check.get('machine')}"
        + (f", emulated CPU {check['cpu']}" if check.get("cpu") else "")
        + ")",
        f"- runtime on the device: {check.get('runtime')} {check.get('runtime_version')}",
        f"- outputs agree with the host: {check.get('agreement', {}).get('agree')}",
    ]
    latency = measurements.get("latency")
    if latency:
        lines.append(
            f"- latency ({latency['label']}): median {latency['median_ms']:.3f} ms "
            f"(min {latency['min_ms']:.3f}, max {latency['max_ms']:.3f}, {latency['runs']} runs)"
        )
    for key in ("instructions", "estimate", "roofline"):
        if check.get(key):
            lines.append(f"- {key}: {check[key]}")
    return lines
