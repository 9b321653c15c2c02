"""Measure which ONNX operators a runtime runs, with the node test cases the ``onnx`` package ships.

The onnx wheel carries the generators of its backend node tests
(``onnx.backend.test.case.node``): one small model per operator feature, with
inputs and expected outputs. :func:`write_cases` writes each case (except the
``*_expanded`` ones, which test an op's function body rather than the op) to a
cache folder; :func:`measure` runs them in one runtime, in a worker process
(:mod:`edgepack.compat.runners`) that is restarted when a case crashes or
hangs it, and caches every result; :func:`summarize` groups the results by
operator. An operator "ran" when at least one test model that contains it
loaded and ran, whether its outputs agreed with the expected ones or not
(``wrong`` records the second kind).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx2tf": "onnx2tf"}
OLDER_OPSET = 21  # the opset that test cases newer than it are also converted down to
DEFAULT_CACHE = Path.home() / ".cache" / "edgepack" / "compat-measure"


@dataclass(frozen=True)
class Case:
    """One node test case on disk: its folder, the operators at its top level, and its ai.onnx opset."""

    name: str
    folder: Path
    ops: tuple[str, ...]
    opset: int


@dataclass
class OpResult:
    """What the test models containing one operator did in one runtime."""

    ran: set[int] = field(default_factory=set)  # opsets of models that ran with the expected outputs
    wrong: set[int] = field(default_factory=set)  # opsets of models that ran with other outputs
    failed: list[str] = field(default_factory=list)  # "case: first line of the error"

    @property
    def runs(self) -> bool:
        """Whether the runtime ran at least one of the op's test models."""
        return bool(self.ran or self.wrong)


def op_key(domain: str, op_type: str) -> str:
    """``Conv`` for ai.onnx, ``com.microsoft.FusedConv`` elsewhere (the compat tables' spelling)."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def _nodes(graph: Any) -> Iterable[Any]:
    """Every node of ``graph``, those of If/Loop/Scan bodies included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _nodes(sub)


def _lowest_opset(model: Any) -> int:
    """Lower the model's ai.onnx opset to the lowest at which each of its nodes means the same; return it.

    onnx writes most node tests at its newest opset, which a runtime released
    before it rejects although it runs the same op, unchanged since an older opset.
    """
    from onnx import defs

    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if entry is None:
        return 0
    since = [1]
    for node in _nodes(model.graph):
        if node.domain in ("", "ai.onnx") and defs.has(node.op_type):
            try:
                since.append(defs.get_schema(node.op_type, entry.version, "").since_version)
            except defs.SchemaError:
                return int(entry.version)
    entry.version = max(since)
    return int(entry.version)


def _plain(value: Any) -> Any:
    """A test value as the runtimes take it: numpy scalars as arrays, TensorProtos as numpy, sequences as lists."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_cases(cache: Path = DEFAULT_CACHE) -> list[Case]:
    """Write onnx's node test cases to ``cache/cases-onnx<version>`` (once) and list them.

    Each case folder holds ``model.onnx`` and ``data.pkl`` (input names, inputs,
    expected outputs, rtol, atol).
    """
    import onnx

    root = cache / f"cases-onnx{onnx.__version__}"
    index = root / "index.json"
    if not index.exists():
        _generate(root)
        index = root / "index.json"
    entries = json.loads(index.read_text())
    return [Case(e["name"], root / e["name"], tuple(e["ops"]), e["opset"]) for e in entries]


def _generate(root: Path) -> None:
    import pickle
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    from edgepack.compat.probes import probes

    root.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    entries = []
    for case in _with_older_opsets(sorted(cases, key=lambda c: c.name) + probes()):
        if "_expanded" in case.name or not case.data_sets:
            continue
        folder = root / case.name
        folder.mkdir(exist_ok=True)
        opset = _lowest_opset(case.model)
        (folder / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        data = {
            "input_names": [i.name for i in case.model.graph.input][: len(inputs)],
            "inputs": [_plain(v) for v in inputs],
            "outputs": [_plain(v) for v in outputs],
            "rtol": float(case.rtol),
            "atol": float(case.atol),
        }
        with (folder / "data.pkl").open("wb") as fh:
            pickle.dump(data, fh)
        ops = sorted({op_key(n.domain, n.op_type) for n in case.model.graph.node})
        entries.append({"name": case.name, "ops": ops, "opset": opset})
    (root / "index.json").write_text(json.dumps(entries, indent=0))


def _with_older_opsets(cases: list[Any]) -> list[Any]:
    """The cases, each one newer than opset :data:`OLDER_OPSET` followed by its conversion to that opset.

    onnx tests an op at its newest version; a runtime that runs the op but not
    yet that version would otherwise count as not running it at all.
    """
    from types import SimpleNamespace

    import onnx
    from onnx import version_converter

    out = []
    for case in cases:
        out.append(case)
        opset = next((o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset <= OLDER_OPSET or "_expanded" in case.name:
            continue
        try:
            older = version_converter.convert_version(case.model, OLDER_OPSET)
            onnx.checker.check_model(older)
        except Exception:  # noqa: BLE001 - no adapter down to that opset: the op is newer, or changed incompatibly
            continue
        out.append(SimpleNamespace(**{**vars(case), "name": f"{case.name}_opset{OLDER_OPSET}", "model": older}))
    return out


def by_op(cases: Iterable[Case], only: Iterable[str] | None = None) -> dict[str, list[Case]]:
    """Operator -> the cases that contain it, in :func:`_plainness` order (one-op models test the op alone)."""
    wanted = set(only) if only is not None else None
    grouped: dict[str, list[Case]] = {}
    for case in cases:
        for op in case.ops:
            if wanted is None or op in wanted:
                grouped.setdefault(op, []).append(case)
    return {op: sorted(found, key=_plainness) for op, found in sorted(grouped.items())}


_EXOTIC = ("bfloat16", "float8", "e4m3", "e5m2", "float4", "int4", "int2", "fnuz")


def _plainness(case: Case) -> tuple[bool, int, bool, bool, str]:
    """Sort key: models at their own opset, one-op, float32-ish, "default" ones first (the likeliest to convert)."""
    name = case.name.lower()
    exotic = any(t in name for t in _EXOTIC)
    return name.endswith(f"_opset{OLDER_OPSET}"), len(case.ops), exotic, "default" not in name, name


# --------------------------------------------------------------------------- the worker process


class _Worker:
    """One runner process, restarted after a crash, a hang or ``restart_every`` cases."""

    def __init__(self, runtime: str, timeout_s: float, restart_every: int) -> None:
        self.runtime, self.timeout_s, self.restart_every = runtime, timeout_s, restart_every
        self.proc: subprocess.Popen[bytes] | None = None
        self.served = 0

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, CI="true", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        cmd = [sys.executable, "-m", "edgepack.compat.runners", self.runtime]
        cwd = Path(os.environ.get("TMPDIR", "/tmp"))
        pipe = subprocess.PIPE
        return subprocess.Popen(cmd, stdin=pipe, stdout=pipe, stderr=subprocess.DEVNULL, env=env, cwd=cwd)

    def ask(self, case: Case) -> dict[str, Any]:
        if self.proc is None or self.served >= self.restart_every:
            self.close()
            self.proc, self.served = self._start(), 0
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.served += 1
        try:
            self.proc.stdin.write(f"{case.folder}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._lost(case, "the worker died")
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            return self._lost(case, f"no answer within {self.timeout_s:.0f} s" if not ready else "the runtime crashed")
        return json.loads(line)

    def _lost(self, case: Case, why: str) -> dict[str, Any]:
        self.close()
        return {"case": case.name, "status": "failed", "error": why}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------- measuring


def _results_file(cache: Path, runtime: str) -> Path:
    from importlib.metadata import version

    import onnx

    dist = DISTRIBUTIONS[runtime]
    return cache / f"results-{runtime}-{version(dist)}-onnx{onnx.__version__}.jsonl"


def measure(
    runtime: str,
    grouped: Mapping[str, list[Case]],
    *,
    cache: Path | None = DEFAULT_CACHE,
    per_op: int | None = None,
    timeout_s: float = 120,
    restart_every: int = 10_000,
    budget_s: float | None = None,
    progress: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run the cases of each operator in ``runtime``; case name -> result.

    Args:
        runtime: ``onnxruntime``, ``openvino`` or ``onnx2tf`` (onnx2tf conversion, then LiteRT).
        grouped: operator -> its cases (:func:`by_op`).
        cache: folder of result files (one per runtime and version); None measures afresh.
        per_op: when set, try at most this many cases of an op, and stop at the first that runs.
        timeout_s: a case that takes longer counts as failed (its worker is restarted).
        restart_every: restart the worker after this many cases (onnx2tf leaks TensorFlow graphs).
        budget_s: stop starting cases after this long; ops not reached have no results.
        progress: called with each result, if given.
    """
    results: dict[str, dict[str, Any]] = {}
    store = _results_file(cache, runtime) if cache is not None else None
    if store is not None and store.exists():
        for line in store.read_text().splitlines():
            entry = json.loads(line)
            results[entry["case"]] = entry
    worker, started = _Worker(runtime, timeout_s, restart_every), time.monotonic()
    try:
        for cases in grouped.values():
            for case in cases[:per_op] if per_op else cases:
                if per_op and any(results.get(c.name, {}).get("status") in ("ran", "wrong") for c in cases):
                    break
                if case.name in results:
                    continue
                if budget_s is not None and time.monotonic() - started > budget_s:
                    return results
                results[case.name] = entry = worker.ask(case)
                if store is not None:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    with store.open("a") as fh:
                        fh.write(json.dumps(entry) + "\n")
                if progress is not None:
                    progress(entry)
    finally:
        worker.close()
    return results


def summarize(grouped: Mapping[str, list[Case]], results: Mapping[str, Mapping[str, Any]]) -> dict[str, OpResult]:
    """Operator -> what its measured cases did; operators with no measured case are left out."""
    summary: dict[str, OpResult] = {}
    for op, cases in grouped.items():
        done = [(c, results[c.name]) for c in cases if c.name in results]
        if not done:
            continue
        found = summary[op] = OpResult()
        for case, entry in done:
            if entry["status"] == "ran":
                found.ran.add(case.opset)
            elif entry["status"] == "wrong":
                found.wrong.add(case.opset)
            else:
                found.failed.append(f"{case.name}: {entry.get('error', '')}")
    return summary
