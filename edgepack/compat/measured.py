"""The ONNX operator tables measured by running test models: ONNX Runtime CPU, OpenVINO CPU, onnx2tf -> LiteRT.

For each operator in onnx's node tests (and edgepack's probes), a table lists
it as ``supported`` when the runtime ran at least one test model containing
it, ``unsupported`` when it ran none, and ``unknown`` when nothing measured it
(no test model, or the time budget ran out). ``wrong_results`` names the
supported ops that ran only with outputs other than the expected ones
(random generators, DFT conventions); ``ran_opsets`` the opsets of the test
models that ran. The ONNX Runtime table keeps its CPU kernel registry
(``opsets``) for the ops no test model covers (``com.microsoft``).
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any

RUNTIME_OF = {"onnxruntime_cpu": "onnxruntime", "openvino_onnx": "openvino", "onnx2tf": "onnx2tf"}
DEFAULT_PER_OP = {"onnx2tf": 2}  # a conversion takes ~10 s: try two test models of an op, not all
TOOLS = {
    "onnxruntime_cpu": ["onnxruntime", "onnx"],
    "openvino_onnx": ["openvino", "onnx"],
    "onnx2tf": ["onnx2tf", "ai-edge-litert", "tensorflow", "onnx"],
}
_METHOD = {
    "onnxruntime_cpu": "onnxruntime.InferenceSession(model, providers=['CPUExecutionProvider']) and run",
    "openvino_onnx": "openvino.Core().compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}) and infer",
    "onnx2tf": "onnx2tf.convert (as edgepack.convert.onnx_tflite calls it) then ai_edge_litert Interpreter.invoke",
}


def refresh_command(kind: str) -> str:
    """The command that regenerates table ``kind`` in place."""
    return f"python -m edgepack.compat.refresh {kind} edgepack/compat/data/{kind}.toml"


def installed(kind: str) -> dict[str, str | None]:
    """Distribution -> installed version (None when missing) of the tools table ``kind`` is measured with."""
    from edgepack.deps import version_of

    return {dist: version_of(dist) for dist in TOOLS[kind]}


def _not_measured(kind: str, measured: set[str]) -> set[str]:
    """Ops the runtime may run that no test model measured: they are ``unknown``, not unsupported."""
    if kind == "onnx2tf":
        from edgepack.compat.tablefile import onnx2tf_ops

        bare = {op.rpartition(".")[2] for op in measured}
        return set(onnx2tf_ops()) - bare
    if kind == "openvino_onnx":
        from onnx import defs

        return {s.name for s in defs.get_all_schemas() if s.domain == "" and not s.deprecated} - measured
    return set()  # ONNX Runtime: the kernel registry (``opsets``) settles the rest


def measure_ops(
    kind: str, *, per_op: int | None, budget_s: float | None, cache: Path | None
) -> tuple[dict[str, Any], str]:
    """Measure table ``kind``'s runtime; return the table's ``[ops]`` contents and how many models an op got."""
    from edgepack.compat.measure import DEFAULT_CACHE, by_op, measure, summarize, write_cases

    cache = cache or DEFAULT_CACHE
    grouped = by_op(write_cases(cache))
    results = measure(RUNTIME_OF[kind], grouped, cache=cache, per_op=per_op, budget_s=budget_s)
    summary = summarize(grouped, results)
    ran = {op for op, found in summary.items() if found.runs}
    settled = {op for op, found in summary.items() if op in ran or _settled(found, len(grouped[op]))}
    unknown = (set(grouped) - settled) | (_not_measured(kind, set(summary)) - ran)
    ops: dict[str, Any] = {
        "supported": sorted(ran),
        "unsupported": sorted(settled - ran),
        "unknown": sorted(unknown),
        "wrong_results": sorted(op for op in ran if not summary[op].ran),
        "ran_opsets": {op: sorted(summary[op].ran | summary[op].wrong) for op in sorted(ran)},
    }
    if kind == "onnxruntime_cpu":
        from edgepack.compat.tablefile import onnxruntime_cpu_kernels

        ops["opsets"] = onnxruntime_cpu_kernels()
    if per_op is None:
        return ops, "all"
    return ops, (
        f"up to {per_op}, stopping at the first that runs; an op none of whose tried models ran is unsupported "
        "when all its models were tried or onnx2tf has no converter for it, else unknown"
    )


def _settled(found: Any, cases: int) -> bool:
    """Whether an op that ran no test model is known unsupported: every model failed, or none had a converter.

    With a time box (``per_op``) an op may fail on its oddest test models
    (batch-major LSTM, 1-D MatMul) and run on others: that is not settled.
    """
    no_converter = "No module named 'onnx2tf.ops."
    return len(found.failed) >= cases or all(no_converter in failure for failure in found.failed)


def table_text(
    kind: str, *, per_op: int | None = None, budget_s: float | None = None, cache: Path | None = None
) -> str:
    """Measure table ``kind`` and return its TOML text."""
    from edgepack.compat.tablefile import to_toml

    per_op = per_op if per_op is not None else DEFAULT_PER_OP.get(RUNTIME_OF[kind])
    ops, tried = measure_ops(kind, per_op=per_op, budget_s=budget_s, cache=cache)
    versions = installed(kind)
    tools = [f"{dist} {v}" for dist, v in versions.items()]
    meta = {
        "table": kind,
        "measured_with": tools[0],
        "tools": tools,
        "measured_on": datetime.date.today().isoformat(),
        "platform": platform.machine(),
        "test_models": f"onnx {versions['onnx']} node tests (not *_expanded) + edgepack.compat.probes",
        "models_per_op": tried,
    }
    comments = [
        f"Measured with {', '.join(tools)} on {platform.machine()} by: {refresh_command(kind)}",
        f"Each test model: {_METHOD[kind]}.",
        "supported: some test model containing the op ran; unsupported: none ran; unknown: not measured.",
        "wrong_results: ran, but only with outputs other than onnx's expected ones. ran_opsets: opsets that ran.",
        "Test models newer than opset 21 are also run converted down to opset 21; a failed one is rerun",
        "with its inputs after the first as initializers (as a real model holds weights and shapes).",
    ]
    if kind == "onnxruntime_cpu":
        comments.append("opsets: CPU kernel registry (get_all_opkernel_def), for ops no test model covers.")
    return to_toml(comments, meta, ops)
