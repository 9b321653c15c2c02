"""The run context: everything a ``package`` call shares across its targets, built whole before any target runs.

:func:`build_context` opens the source model (compressing it first when asked),
loads the data sets and takes the validation samples; the stages of every
target then read the context and never edit it. Intermediate artifacts that
several targets share (the ONNX made from a Keras model, the fp32 .tflite of
two ARM boards) live in :class:`Intermediates`, memoised by content: each entry
gets a folder of its own, and a failed entry is remembered as its error, so a
failure reaches exactly the targets that need that intermediate and no other.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.errors import DataError, EdgepackError, UsageError
from edgepack.plans import Options, Plan
from edgepack.profiles import Precision, Profile, Step

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.calibration import Dataset

Progress = Callable[[str], None]
Made = tuple["Artifact", dict[str, Any]]


class Intermediates:
    """Artifacts shared by the targets of one run, made once each, keyed by their inputs' content."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[tuple[Any, ...], Made | EdgepackError | Exception] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], make: Callable[[Path], Made]) -> Made:
        """The artifact for ``key``, made by ``make(folder)`` in a fresh folder the first time.

        A failure is remembered and raised again for every later request of the same key; the folder of a
        failed attempt is never reused.
        """
        with self._lock:
            known = self._made.get(key)
        if known is None:
            self.root.mkdir(parents=True, exist_ok=True)
            label = str(key[0]).replace("/", "-")
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            folder = Path(tempfile.mkdtemp(prefix=f"{label}-{digest}-", dir=self.root))
            try:
                known = make(folder)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - remembered and raised again for each target that needs it
                known = exc
            with self._lock:
                self._made[key] = known
        if isinstance(known, Exception):
            raise known
        return known


@dataclass(frozen=True)
class RunContext:
    """What every target of a run reads: plan, options, the (compressed) source, data, shared intermediates."""

    plan: Plan
    options: Options
    workdir: Path
    progress: Progress
    source: Artifact
    original: Artifact  # the user's model before compression (what manifests name as the source)
    compression: tuple[dict[str, Any], ...] = ()
    dataset: Dataset | None = None
    eval_dataset: Dataset | None = None
    samples: list[list[Any]] | None = None
    data_description: dict[str, Any] | None = None
    custom_ops: tuple[str, ...] = ()  # a .tflite source's custom operators: no target runtime has them
    intermediates: Intermediates = field(default_factory=lambda: Intermediates(Path(tempfile.gettempdir())))
    _reference: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def reference(self) -> Any:
        """The source model's session, opened on first use and shared by every target's validation."""
        if "session" not in self._reference:
            from edgepack.runtimes import open_session

            self._reference["session"] = open_session(self.source, threads=1)
        return self._reference["session"]

    def target_workdir(self, name: str) -> Path:
        folder = self.workdir / "targets" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def check_inputs(plan: Plan, options: Options) -> None:
    """What ``--dry-run`` can refuse without converting: int8 without data, the model's input shapes, and
    whether the data fits them (the model's I/O is read and the data loaded, then both are dropped)."""
    _refuse_int8_without_data(plan, options)
    original, _, _ = _open_source(plan, options)
    _load_data(plan, options, original.inputs)


def _open_source(plan: Plan, options: Options) -> tuple[Artifact, dict[str, Any], int | None]:
    """The user's model with its input shapes (flags over profiles), the shapes given, and the batch."""
    from edgepack.source import open_source

    batch = min((t.profile.inputs.batch or 0 for t in plan.targets), default=1) or None
    from_profiles = {k: v for k, v in profile_shapes(plan).items() if k not in options.input_shapes}
    shapes = {**from_profiles, **options.input_shapes}  # --input-shape wins over the profiles'
    original = open_source(plan.model, input_shapes=shapes, batch=batch, trust_code=options.trust_code)
    return _from_profiles(original, from_profiles), shapes, batch


def _load_data(plan: Plan, options: Options, inputs: Sequence[Any]) -> tuple[Dataset | None, Dataset | None]:
    """The --data and --eval sets, each checked against the model's inputs (None where not given)."""
    preprocess = _preprocess(plan, options)  # bad --preprocess values are refused even without data
    if options.data is None and options.eval_data is None:
        return None, None
    from edgepack.calibration import load_dataset

    sets = [
        None if d is None else load_dataset(d, inputs, preprocess=preprocess) for d in (options.data, options.eval_data)
    ]
    return sets[0], sets[1]


def build_context(plan: Plan, options: Options, workdir: Path, progress: Progress) -> RunContext:
    """Open the source, compress it when asked, load the data: the complete context of a run."""
    _refuse_int8_without_data(plan, options)
    progress(f"reading {plan.model.name}")
    original, shapes, batch = _open_source(plan, options)
    source, compression = _compress(plan, options, original, batch, workdir, progress, shapes)
    dataset, eval_dataset = _load_data(plan, options, source.inputs)
    description: dict[str, Any] | None = dataset.describe() if dataset is not None else None
    if eval_dataset is not None:
        description = {**(description or {}), "eval": eval_dataset.describe()}
    validation = eval_dataset if eval_dataset is not None else dataset
    samples = validation.take(options.validation_samples).as_lists() if validation is not None else None
    ctx = RunContext(
        plan=plan,
        options=options,
        workdir=workdir,
        progress=progress,
        source=source,
        original=original,
        compression=tuple(compression),
        dataset=dataset,
        eval_dataset=eval_dataset,
        samples=samples,
        data_description=description,
        intermediates=Intermediates(workdir / "steps"),
        custom_ops=tuple(_custom_ops(source)),
    )
    if not ctx.custom_ops:  # a model with custom operators cannot run here; each target refuses it by name
        refuse_non_finite(ctx)
    return ctx


def _custom_ops(source: Artifact) -> list[str]:
    from edgepack.artifact import ModelFormat

    if source.format is not ModelFormat.TFLITE:
        return []
    from edgepack.inspection import custom_tflite_ops

    return custom_tflite_ops(source.path)


def refuse_non_finite(ctx: RunContext, count: int = 2) -> None:
    """Refuse a source whose outputs are NaN or infinite on the validation inputs, before anything is written.

    Such a model (a damaged file, an unstable graph) would otherwise be converted, bundled and shipped with
    every comparison against it meaningless.
    """
    import numpy as np

    from edgepack.errors import ModelError
    from edgepack.validate import random_samples

    reference = ctx.reference()
    if ctx.samples is not None:
        feeds, origin = ctx.samples[:count], "the first validation samples"
    else:
        feeds, origin = random_samples(reference.inputs, seed=ctx.options.seed, count=count), "seeded random inputs"
    for feed in feeds:
        try:
            outputs = reference.run(feed)
        except ModelError as exc:  # before any conversion: the model itself does not run at these shapes
            shapes = ", ".join(f"{s.name}={list(s.shape)}" for s in ctx.source.inputs)
            raise ModelError(
                f"{ctx.plan.model.name} does not run in {reference.runtime} at input shapes {shapes} "
                f"({exc.message[:300]}); nothing was packaged.",
                hint="A shape too small for the network's strides or pooling, or of the wrong layout, fails like "
                "this: give shapes the model was made for (--input-shape NAME=...; see `edgepack inspect MODEL`).",
            ) from exc
        for spec, value in zip(reference.outputs, outputs, strict=False):
            array = np.asarray(value)
            if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
                raise ModelError(
                    f"{ctx.plan.model.name} gives non-finite outputs (NaN or inf) in {spec.name} on {origin}; "
                    "nothing was packaged.",
                    hint="The file may be damaged or the model numerically unstable: re-export it"
                    + (", or pass --data with real samples." if ctx.samples is None else "."),
                )


_GATED = (Precision.INT8, Precision.DYNAMIC)  # quantized, then gated on held-out data


def profile_shapes(plan: Plan) -> dict[str, Any]:
    """The input shapes the targets' profiles give (``[inputs] shapes``); they must agree with each other."""
    from edgepack.shapes import InputShape

    found: dict[str, tuple[Any, str]] = {}
    for target in plan.targets:
        for name, value in target.profile.inputs.shapes.items():
            shape = InputShape.from_value(name, value, flag=f"[inputs.shapes] {name}")
            known = found.setdefault(name, (shape, target.name))
            if known[0] != shape:
                raise UsageError(
                    f"profiles {known[1]} and {target.name} give input {name!r} different shapes in [inputs] shapes.",
                    hint=f"Package them in separate runs, or give --input-shape {name}=... to decide.",
                )
    return {name: (shape if shape.is_dynamic else shape.opt()) for name, (shape, _) in found.items()}


def _refuse_int8_without_data(plan: Plan, options: Options) -> None:
    needs = [t for t in plan.targets if t.has(Step.QUANTIZE) and t.profile.precision in _GATED]
    if options.data is None and needs:
        precision = needs[0].profile.precision.value
        raise DataError(
            f"{precision} quantization needs data from your model's domain to calibrate and gate it (random "
            "inputs say nothing about its accuracy).",
            hint="Pass --data samples.npz (or a folder of .npy files or images), or choose another --precision.",
        )


def _from_profiles(source: Artifact, names: Mapping[str, Any]) -> Artifact:
    """Say in the source's shape origins which shapes came from the profiles, not from --input-shape."""
    origin = source.meta.get("shape_origin")
    if isinstance(origin, dict):
        for name in names:
            if str(origin.get(name, "")).startswith("--input-shape"):
                origin[name] = origin[name].replace("--input-shape", "profile [inputs] shapes", 1)
    return source


def _compress(
    plan: Plan,
    options: Options,
    source: Artifact,
    batch: int | None,
    workdir: Path,
    progress: Progress,
    shapes: Mapping[str, Any],
) -> tuple[Artifact, list[dict[str, Any]]]:
    """Run the requested compression methods on the source (distill, prune, clip), before any conversion.

    The compressed model becomes the source every target converts from and validates against; each
    method's report records its measured effect against the model before it.
    """
    settings = compression_settings(options.compress, [t.profile for t in plan.targets])
    if not settings:
        return source, []
    from edgepack.artifact import ModelFormat

    if source.format is ModelFormat.TORCH:
        raise UsageError(
            f"compression ({', '.join(settings)}) works on Keras and ONNX models, not on a PyTorch source.",
            hint="Prune or distill in PyTorch first, or package without --prune/--clip/--distill-student.",
        )
    from edgepack.compress import PIPELINE_ORDER, pipeline_step
    from edgepack.source import open_source

    reports, current = [], source
    for method in (m for m in PIPELINE_ORDER if m in settings):
        progress(f"compressing: {method}")
        path, report = pipeline_step(
            current.path,
            current.format,
            settings={method: settings[method]},
            data=options.data,
            workdir=workdir / f"compress-{method}",
            progress=progress,
        )
        reports.append({"method": method, "settings": dict(settings[method]), **report})
        current = open_source(path, input_shapes=shapes, batch=batch, trust_code=options.trust_code)
    return current, reports


def compression_settings(flags: Mapping[str, Any], profiles: Sequence[Profile]) -> dict[str, Any]:
    """Compression for the run: the flags, else the profiles' ``[step_options.compress]`` (which must agree)."""
    if flags:
        return dict(flags)
    asked = {json.dumps(p.options(Step.COMPRESS), sort_keys=True) for p in profiles if Step.COMPRESS in p.steps}
    asked.discard("{}")
    if len(asked) > 1:
        raise UsageError(
            "the chosen targets ask for different compression in their profiles.",
            hint="Package them in separate runs, or give --prune/--clip/--distill-student.",
        )
    return json.loads(asked.pop()) if asked else {}


def _preprocess(plan: Plan, options: Options) -> Any:
    """Image preprocessing: --preprocess flags, else the profiles' [inputs.preprocess] (None: the loader's own)."""
    from edgepack.calibration import Preprocess

    if options.preprocess:
        return Preprocess.from_flags(**dict(options.preprocess))
    tables = [t.profile.inputs.preprocess for t in plan.targets if t.profile.inputs.preprocess]
    return Preprocess.from_table(tables[0], source=f"profile {plan.targets[0].profile.name}") if tables else None
