"""PyTorch -> ONNX, checked against PyTorch, with the TorchScript exporter as the fallback.

``torch.onnx.export`` has used the dynamo exporter by default since torch 2.9, and it can
produce graphs that run but compute something else (a branch taken only while exporting, a
wrong translation), or fail outright on code ``torch.export`` cannot trace. So each attempt's
ONNX is run in ONNX Runtime on the validation inputs (seeded random ones without data) and
compared with PyTorch's own outputs under the profile's tolerances (the rule of
:func:`edgepack.validate.check_metrics`). The dynamo exporter goes first; when it fails or
disagrees, the TorchScript-based exporter (``dynamo=False``) is tried. The artifact's meta names
the exporter that made the graph and keeps both attempts' figures (``export_attempts``); when
no attempt agrees with PyTorch, nothing is returned: a broken export is never shipped.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, Layout, ModelFormat, TensorSpec
from edgepack.errors import ConversionError, EdgepackError

if TYPE_CHECKING:
    import numpy as np

    from edgepack.convert import ConvertOptions
    from edgepack.profiles import Accuracy

DYNAMO, TORCHSCRIPT = "dynamo", "torchscript"
_DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes opset 18 and up; the ONNX fix step lowers it per target
_DEFAULT_TS_OPSET = 17
_TORCH_LOGGERS = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")
_REDUCE_AXES_INPUT_18 = {
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
}


@dataclass
class Attempt:
    """One exporter's try: its error, or its figures against PyTorch."""

    exporter: str
    error: str | None = None
    max_abs_error: float | None = None
    min_cosine: float | None = None
    failures: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exporter": self.exporter, "ok": self.ok}
        if self.error is not None:
            out["error"] = self.error
        else:
            out.update(max_abs_error=self.max_abs_error, min_cosine=self.min_cosine, failures=list(self.failures))
        return out

    def line(self) -> str:
        return f"{self.exporter}: {self.error or '; '.join(self.failures)}"


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """The conversion hop (``HOPS``): export checked on seeded random inputs with the default tolerances."""
    return export_checked(src, workdir, options)


def export_checked(
    src: Artifact,
    workdir: Path,
    options: ConvertOptions,
    *,
    samples: Sequence[Sequence[np.ndarray]] | None = None,
    tolerance: Accuracy | None = None,
    seed: int = 0,
    count: int = 8,
) -> Artifact:
    """Export ``src`` (a PyTorch source) to one ONNX file that agrees with PyTorch, trying dynamo first.

    Args:
        src: The PyTorch source artifact (static input shapes).
        workdir: The step's folder; each attempt writes in a sub-folder, the chosen model is ``model.onnx``.
        options: Conversion options (opset, trust_code, shape ranges).
        samples: Validation inputs in the source's input order; None: ``count`` seeded random ones.
        tolerance: The profile's accuracy tolerances (defaults: :class:`edgepack.profiles.Accuracy`).
        seed: Seed of the random inputs.
        count: How many random inputs.

    Raises:
        ConversionError: no exporter produced a graph that agrees with PyTorch (each attempt's reason named).
        ModelError: PyTorch cannot load or run the source.
        MissingDependencyError: torch or onnxscript is not installed (``pip install 'edgepack[torch]'``).
    """
    from edgepack import torchio
    from edgepack.deps import require
    from edgepack.profiles import Accuracy
    from edgepack.tools import fresh_dir
    from edgepack.validate import random_samples

    require("onnxscript")  # the dynamo exporter's; missing, every export would silently take the fallback
    workdir = fresh_dir(workdir)
    tolerance = tolerance or Accuracy()
    trust = bool(options.trust_code or src.meta.get("trust_code", False))
    source = torchio.load(src.path, trust_code=trust)
    if samples is None:
        feeds, origin = random_samples(src.inputs, seed=seed, count=count), f"random (seed {seed})"
    else:
        feeds, origin = [list(s) for s in samples], "validation inputs"
    reference = [torchio.run(source, feed) for feed in feeds]
    attempts = []
    for exporter in (DYNAMO, TORCHSCRIPT):
        attempt = _attempt(exporter, source, src, workdir / exporter, options)
        if attempt.error is None:
            _judge(attempt, src, feeds, reference, tolerance)
        attempts.append(attempt)
        if attempt.ok:
            break
    chosen = next((a for a in attempts if a.ok), None)
    if chosen is None:
        tried = " | ".join(a.line() for a in attempts)
        raise ConversionError(
            f"no ONNX export of {Path(src.path).name} reproduces PyTorch's outputs ({tried}).",
            hint="Nothing was packaged. Check the model for code that behaves differently while exporting or tracing "
            "(data-dependent branches, torch.compiler.is_exporting()), or raise the profile's accuracy tolerances.",
        )
    return _artifact(src, chosen, attempts, workdir, origin, len(feeds))


def _artifact(src: Artifact, chosen: Attempt, attempts: list[Attempt], workdir: Path, origin: str, n: int) -> Artifact:
    from edgepack.deps import version_of
    from edgepack.modelio import read_specs
    from edgepack.runtimes import merge_specs

    assert chosen.path is not None
    path = workdir / "model.onnx"
    shutil.copyfile(chosen.path, path)
    _, outputs = read_specs(path, ModelFormat.ONNX)
    inputs = tuple(replace(spec, layout=Layout.NCHW) if len(spec.shape) == 4 else spec for spec in src.inputs)
    return Artifact.from_file(
        path,
        ModelFormat.ONNX,
        inputs,  # PyTorch tensors are channels-first: a 4-D input is NCHW whatever its sizes suggest
        merge_specs(outputs, src.outputs) if outputs else src.outputs,
        meta={
            "tool": f"torch.onnx ({chosen.exporter})",
            "tool_version": version_of("torch") or "unknown",
            "opset": _opset(path),
            "exporter": chosen.exporter,
            "export_attempts": [a.to_dict() for a in attempts],
            "export_check": {"inputs": origin, "samples": n},
        },
    )


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _attempt(exporter: str, source: Any, src: Artifact, folder: Path, options: ConvertOptions) -> Attempt:
    """Run one exporter quietly; its exceptions become the attempt's error line."""
    from edgepack.tools import first_line, quiet

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    error: Exception | None = None
    with quiet(), _torch_logs_quiet():
        try:
            _export(exporter, source, src, path, options)
            _fold_external_data(path)
            _lower_opset(path, options.opset, src.inputs)
        except Exception as exc:  # noqa: BLE001 - any exporter failure (or an opset it cannot meet) fails the attempt
            error = exc
    if error is not None:
        return Attempt(exporter, error=first_line(error))
    return Attempt(exporter, path=path)


@contextlib.contextmanager
def _torch_logs_quiet() -> Iterator[None]:
    """PyTorch's loggers keep the stream they were made with (the terminal under the CLI), which ``quiet()`` cannot
    redirect: their warnings (e.g. "torchvision is not installed") are held back while an exporter runs."""
    loggers = [logging.getLogger(name) for name in _TORCH_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(exporter: str, source: Any, src: Artifact, path: Path, options: ConvertOptions) -> None:
    import torch

    args = tuple(torch.zeros(tuple(d or 1 for d in s.shape), dtype=getattr(torch, s.dtype)) for s in src.inputs)
    names = [s.name for s in src.inputs]
    outputs = [s.name for s in src.outputs]
    if exporter == DYNAMO:
        model = source.program if source.program is not None else source.module
        program = torch.onnx.export(
            model,
            args if source.program is None else (),
            dynamo=True,
            input_names=names,
            output_names=outputs,
            opset_version=max(options.opset or 0, _DYNAMO_MIN_OPSET),
            external_data=False,
            dynamic_shapes=_dynamic_shapes(src, options) if source.program is None else None,
            verbose=False,
        )
        if program is None:  # dynamo=True always returns the program; None only with dynamo=False
            raise RuntimeError("torch.onnx.export returned no ONNX program")
        program.save(str(path), external_data=False)
        return
    torch.onnx.export(
        source.module,
        args,
        str(path),
        dynamo=False,
        input_names=names,
        output_names=outputs,
        opset_version=min(options.opset or _DEFAULT_TS_OPSET, _DEFAULT_TS_OPSET),
        dynamic_axes=_dynamic_axes(src, options),
        training=torch.onnx.TrainingMode.PRESERVE,  # a program's module cannot switch modes; sources are in eval
        verbose=False,
    )


def _dynamic_shapes(src: Artifact, options: ConvertOptions) -> dict[str, Any] | None:
    """torch.export dims for the inputs given with a range (min..max), where the target keeps them dynamic."""
    if not options.shape_ranges:
        return None
    import torch

    ranged = {r.name: r for r in options.shape_ranges}
    shapes: dict[str, Any] = {}
    for spec in src.inputs:
        shape = ranged.get(spec.name)
        dims = {}
        for axis, dim in enumerate(shape.dims if shape else ()):
            if not isinstance(dim, int):
                dims[axis] = torch.export.Dim(f"{spec.name}_{axis}", min=max(dim.min, 2), max=dim.max)
        shapes[spec.name] = dims or None
    return shapes


def _dynamic_axes(src: Artifact, options: ConvertOptions) -> dict[str, dict[int, str]] | None:
    ranged = {r.name: r for r in options.shape_ranges}
    axes = {
        name: {axis: f"{name}_{axis}" for axis, dim in enumerate(shape.dims) if not isinstance(dim, int)}
        for name, shape in ranged.items()
    }
    return {k: v for k, v in axes.items() if v} or None


def _lower_opset(path: Path, opset: int | None, inputs: Sequence[TensorSpec]) -> None:
    """The dynamo exporter writes opset 18 at least: lower it to the run's opset, or fail this attempt."""
    import onnx

    from edgepack.convert.onnx_opset import cap_opset, model_opset

    model = onnx.load(str(path))
    if opset is None or model_opset(model) <= opset:
        return
    if opset < _DYNAMO_MIN_OPSET:
        _reduce_axes_as_attributes(model)
    lowered, _ = cap_opset(model, opset, inputs)
    onnx.save_model(lowered, str(path))


def _reduce_axes_as_attributes(model: Any) -> None:
    """Opset 18 moved the Reduce ops' ``axes`` from an attribute to an input; onnx's version converter cannot
    move a constant one back, so it is done here (an ``axes`` that is not an initializer is left as it is)."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _REDUCE_AXES_INPUT_18 or len(node.input) < 2 or node.input[1] not in constants:
            continue
        axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
        kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("axes", axes)])
        del node.input[1:]


def _fold_external_data(path: Path) -> None:
    """One self-contained file: weights an exporter wrote beside the model (``.onnx.data``) folded in."""
    beside = [p for p in path.parent.iterdir() if p != path]
    if not beside:
        return
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for extra in beside:
        extra.unlink() if extra.is_file() else shutil.rmtree(extra)
    onnx.save_model(model, str(path), save_as_external_data=False)


def _judge(
    attempt: Attempt,
    src: Artifact,
    feeds: Sequence[Sequence[np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    tolerance: Accuracy,
) -> None:
    """Run the attempt's ONNX in ONNX Runtime on ``feeds`` and compare with PyTorch's outputs."""
    import numpy as np

    from edgepack.runtimes import open_session
    from edgepack.validate import check_metrics, compare_outputs

    assert attempt.path is not None
    try:
        onnx_src = Artifact.from_file(attempt.path, ModelFormat.ONNX, src.inputs, src.outputs)
        session = open_session(onnx_src, threads=1)
        runs = [session.run(feed) for feed in feeds]
        names = [s.name for s in src.outputs] or [f"output_{i}" for i in range(len(reference[0]))]
        stacked_ref = [np.concatenate([r[i] for r in reference]) for i in range(len(reference[0]))]
        stacked = [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]
        metrics = compare_outputs(stacked_ref, stacked, names)
    except EdgepackError as exc:
        attempt.error = f"its ONNX does not run like the model ({exc.message[:200]})"
        return
    attempt.max_abs_error = max(m.max_abs_error for m in metrics)
    attempt.min_cosine = min(m.cosine for m in metrics)
    attempt.failures = check_metrics(metrics, tolerance)
