"""The decision figures of one target, read from its sealed manifest and its measurements.

The CLI's table and ``--json`` print the same :func:`summarize` output, so the
terminal tells whether to ship without opening the report: precision, size
(and its ratio to the float model), accuracy float -> int8 with the drop and
the gate's budget as applied, agreement with the source, and the device
estimate with its band and the latency budget. Warnings (a loosened budget,
random validation inputs, int8 not faster) travel with the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _accuracy(validation: Mapping[str, Any]) -> dict[str, Any] | None:
    float_acc, quant_acc = _number(validation.get("float_accuracy")), _number(validation.get("quantized_accuracy"))
    if float_acc is None or quant_acc is None:
        return None
    budget = next((c for c in validation.get("checks") or [] if c.get("kind") == "relative_accuracy"), None) or {}
    return {
        "float": float_acc,
        "quantized": quant_acc,
        "drop": float_acc - quant_acc,
        "samples": validation.get("samples"),
        "budget_relative": _number(budget.get("budget")),
        "budget_applied": _number(budget.get("threshold")),
    }


def _agreement(validation: Mapping[str, Any]) -> dict[str, Any] | None:
    outputs = [o for o in validation.get("outputs") or [] if isinstance(o, Mapping)]
    if not outputs:
        return None
    errors = [e for o in outputs if (e := _number(o.get("max_abs_error"))) is not None]
    cosines = [c for o in outputs if (c := _number(o.get("cosine"))) is not None]
    top1 = [t for o in outputs if (t := _number(o.get("top1_agreement"))) is not None]
    return {
        "max_abs_error": max(errors) if errors else None,
        "min_cosine": min(cosines) if cosines else None,
        "top1_agreement": min(top1) if top1 else None,
        "inputs": validation.get("inputs"),
    }


def executed_as(delegation: Mapping[str, Any] | None) -> str | None:
    """One line on what actually executed on the device: delegated ops, reference kernels, int8 or not."""
    if not delegation:
        return None
    if delegation.get("error"):
        return f"not recorded ({delegation['error']})"
    int8 = "int8 kernels ran" if delegation.get("int8") else "no int8 kernels"
    if delegation.get("runtime") == "litert":
        reference = delegation.get("reference_ops") or {}
        fallen = ", ".join(f"{name}x{n}" for name, n in reference.items()) or "none"
        return (
            f"{delegation.get('delegated_ops')}/{delegation.get('model_ops')} ops delegated; "
            f"reference kernels: {fallen}; {int8}"
        )
    if delegation.get("runtime") == "openvino":
        precisions = delegation.get("exec_precisions") or {}
        return "layers by precision: " + (", ".join(f"{k} {v}" for k, v in precisions.items()) or "-") + f"; {int8}"
    if delegation.get("runtime") == "onnxruntime":
        providers = ", ".join(delegation.get("providers") or []) or "-"
        return f"{providers}; {delegation.get('int8_ops', 0)} int8 op(s); {int8}"
    return int8


def _device(manifest: Mapping[str, Any], measurements: Mapping[str, Any]) -> dict[str, Any]:
    check = manifest.get("device_check") or {}
    figures = measurements.get("figures") or {}
    estimate = figures.get("estimate") or {}
    budget = _number(((manifest.get("profile") or {}).get("latency") or {}).get("budget_ms"))
    value = _number(estimate.get("value_ms"))
    return {
        "ran": bool(check.get("ran")),
        "runner": check.get("runner"),
        "reason": None if check.get("ran") else check.get("reason"),
        "agree": (check.get("agreement") or {}).get("agree"),
        "estimate_ms": value,
        "band_ms": [_number(estimate.get("low_ms")), _number(estimate.get("high_ms"))] if value is not None else None,
        "estimate_label": estimate.get("label"),
        "budget_ms": budget,
        "headroom": (budget / value) if budget is not None and value else None,
        "instructions_per_inference": (measurements.get("instructions") or {}).get("per_inference"),
        "executed_as": executed_as(check.get("delegation")),
    }


def summarize(manifest: Mapping[str, Any] | None, measurements: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The decision figures of a target (never raises on odd or missing values)."""
    manifest, measurements = manifest or {}, measurements or {}
    model = manifest.get("model") or {}
    validation = manifest.get("validation") or {}
    quantization = manifest.get("quantization") or {}
    size = quantization.get("size") or {}
    warnings = [str(w) for w in quantization.get("warnings") or []]
    latency = (measurements.get("quantization") or {}).get("latency") or {}
    warnings += [str(w) for w in latency.get("warnings") or []]
    if str(validation.get("inputs", "")).startswith("random"):
        warnings.append(
            f"validation used {validation.get('inputs')} inputs, which say little about real data: pass --data"
        )
    return {
        "precision": model.get("precision"),
        "size_bytes": model.get("size_bytes"),
        "float_size_bytes": size.get("float_bytes"),
        "size_ratio": _number(size.get("ratio")),
        "accuracy": _accuracy(validation),
        "agreement": _agreement(validation),
        "device": _device(manifest, measurements),
        "warnings": list(dict.fromkeys(warnings)),
    }
