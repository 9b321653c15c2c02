"""Simplify an ONNX graph with onnxsim and/or onnxslim, keeping only a correct, smaller result.

A candidate is rejected when its tool fails, when ``onnx.checker`` (full check)
refuses it, when it is larger than the original beyond a small slack for shape
annotations (constant folding can inflate a model: ``Expand`` of a scalar becomes a
full tensor), when it has neither fewer nodes nor fewer bytes, or when its outputs
differ from the original's in onnxruntime on the given samples (or seeded random
inputs) beyond rtol 1e-4 / atol 1e-5. With no candidate left the original is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert.onnx_fix import load_onnx, save_onnx
from edgepack.convert.ortcheck import compare, random_feeds, run_onnx
from edgepack.deps import require, version_of
from edgepack.errors import DataError, EdgepackError, UsageError
from edgepack.tools import first_line, fresh_dir, quiet, run_tool, tool_meta

# A result may grow by shape annotations (value_info) and metadata; more than this is constant folding
# inflating the weights (onnxsim turns Expand/Tile of a small constant into the full tensor).
SIZE_SLACK, SIZE_SLACK_BYTES = 0.01, 4096
RANDOM_SAMPLES = 2
MAX_SAMPLES = 8

Sample = Sequence[np.ndarray] | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class SimplifyReport:
    """What simplification did: the tool kept (None: the original), sizes, and why others were rejected."""

    tool: str | None
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    tried: tuple[str, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    max_abs_diff: float | None = None
    samples: int = 0

    @property
    def kept_original(self) -> bool:
        return self.tool is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(tried=list(self.tried), rejected=dict(self.rejected), tool_versions=dict(self.tool_versions))
        data["kept_original"] = self.kept_original
        return data


def _onnxsim(model: Any) -> Any:
    onnxsim = require("onnxsim")
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ValueError("onnxsim's own output check failed")
    return simplified


def _onnxslim(model: Any) -> Any:
    return require("onnxslim").slim(model)


# tool name -> function taking a ModelProto (a copy it may change) and returning the simplified one
TOOLS: dict[str, Callable[[Any], Any]] = {"onnxsim": _onnxsim, "onnxslim": _onnxslim}
CHOICES: dict[str, tuple[str, ...]] = {
    "auto": ("onnxsim", "onnxslim"),
    "onnxsim": ("onnxsim",),
    "onnxslim": ("onnxslim",),
}


# --------------------------------------------------------------------------- running models


def _feeds(inputs: Sequence[TensorSpec], samples: Sequence[Sample] | None, seed: int) -> list[dict[str, np.ndarray]]:
    """Input dicts from the caller's samples (lists in input order, or dicts by name), else seeded random."""
    if samples:
        feeds = []
        for sample in list(samples)[:MAX_SAMPLES]:
            arrays = [sample[s.name] for s in inputs] if isinstance(sample, Mapping) else list(sample)
            if len(arrays) != len(inputs):
                raise DataError(f"a sample has {len(arrays)} arrays; the model has {len(inputs)} inputs.")
            feeds.append({s.name: _fit(s, a) for s, a in zip(inputs, arrays, strict=True)})
        return feeds
    return random_feeds(inputs, seed, RANDOM_SAMPLES)


def _fit(spec: TensorSpec, array: Any) -> np.ndarray:
    array = np.asarray(array)
    if spec.shape[:1] == (1,) and tuple(array.shape) == tuple(spec.shape[1:]):
        array = array[np.newaxis]  # one sample without its batch dim
    if tuple(array.shape) != tuple(spec.shape):
        raise DataError(
            f"a sample for input {spec.name} has shape {list(array.shape)}; the model wants {list(spec.shape)}."
        )
    return array.astype(spec.dtype, copy=False)


# --------------------------------------------------------------------------- choosing


@dataclass
class _Candidate:
    tool: str
    model: Any
    size: int
    nodes: int
    diff: float


def _try(name: str, model: Any, reference: list[list[np.ndarray]], feeds: list, size_before: int) -> _Candidate | str:
    """A checked candidate from tool ``name``, or the reason it is rejected."""
    onnx = require("onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        with quiet():
            simplified = TOOLS[name](copy)
    except EdgepackError:
        raise
    except Exception as exc:  # noqa: BLE001
        return f"failed: {first_line(exc)}"
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"onnx.checker refused the result: {first_line(exc)}"
    size, nodes = simplified.ByteSize(), len(simplified.graph.node)
    if size > size_before * (1 + SIZE_SLACK) + SIZE_SLACK_BYTES:
        return f"larger than the original ({size} > {size_before} bytes)"
    if size >= size_before and nodes >= len(model.graph.node):
        return f"no gain ({nodes} nodes, {size} bytes)"
    try:
        outputs = run_onnx(simplified, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"the result does not run in onnxruntime: {first_line(exc)}"
    diff, mismatch = compare(reference, outputs)
    if mismatch:
        return mismatch
    return _Candidate(name, simplified, size, nodes, diff)


def simplify(
    src: Artifact,
    workdir: Path,
    *,
    tool: str = "auto",
    samples: Sequence[Sample] | None = None,
    seed: int = 0,
) -> tuple[Artifact, SimplifyReport]:
    """Simplify an ONNX artifact; returns the smallest correct result, or ``src`` itself when none is.

    Args:
        src: an ONNX artifact with static input shapes.
        workdir: this step's folder (the simplified model is written as ``model.onnx``).
        tool: "auto" (try onnxsim and onnxslim, keep the smallest), "onnxsim" or "onnxslim".
        samples: inputs to compare outputs on: lists in ``src.inputs`` order, or dicts by input name.
        seed: seed of the random inputs used when no samples are given.

    Raises:
        UsageError: unknown tool, or ``src`` is not ONNX.
        ModelError: ``src`` is not a readable ONNX model.
        DataError: a sample does not fit the model's inputs.
    """
    if tool not in CHOICES:
        raise UsageError(f"unknown simplifier {tool!r}.", hint=f"Use one of: {', '.join(CHOICES)}.")
    if src.format is not ModelFormat.ONNX:
        raise UsageError(f"simplify takes an ONNX model, not {src.format.value}.")
    started = time.perf_counter()
    model = load_onnx(src.path)
    feeds = _feeds(src.inputs, samples, seed)
    names = CHOICES[tool]
    accepted, rejected = _candidates(model, names, feeds)
    best = min(accepted, key=lambda c: (c.size, c.nodes)) if accepted else None
    for other in accepted:
        if best is not None and other is not best:
            rejected[other.tool] = f"correct but not the smallest ({other.size} >= {best.size} bytes)"
    size, nodes = model.ByteSize(), len(model.graph.node)
    report = SimplifyReport(
        tool=best.tool if best else None,
        nodes_before=nodes,
        nodes_after=best.nodes if best else nodes,
        bytes_before=size,
        bytes_after=best.size if best else size,
        tried=names,
        rejected=rejected,
        tool_versions={n: version_of(n) or "unknown" for n in names},
        max_abs_diff=best.diff if best else None,
        samples=len(feeds),
    )
    return (_save(src, best, Path(workdir), started) if best else src), report


def _candidates(model: Any, names: Sequence[str], feeds: list) -> tuple[list[_Candidate], dict[str, str]]:
    """The correct, not larger results of the tools ``names``, and why the others were rejected."""
    try:
        reference = run_onnx(model, feeds)
    except Exception as exc:  # noqa: BLE001 - without reference outputs nothing can be checked
        reason = f"the original does not run in onnxruntime ({first_line(exc)}); nothing to compare with"
        return [], dict.fromkeys(names, reason)
    results = {name: _try(name, model, reference, feeds, model.ByteSize()) for name in names}
    accepted = [r for r in results.values() if isinstance(r, _Candidate)]
    return accepted, {name: r for name, r in results.items() if isinstance(r, str)}


def _save(src: Artifact, best: _Candidate, workdir: Path, started: float) -> Artifact:
    path = fresh_dir(workdir) / "model.onnx"
    files = run_tool(
        lambda: save_onnx(best.model, path),
        failure=f"cannot write the simplified model to {path}",
        hint="Check free disk space.",
    )
    meta = tool_meta(
        best.tool,
        source_format=src.format.value,
        source_sha256=src.sha256,
        nodes=best.nodes,
        seconds=round(time.perf_counter() - started, 3),
    )
    return Artifact.from_file(path, ModelFormat.ONNX, src.inputs, src.outputs, files=files, meta=meta)
