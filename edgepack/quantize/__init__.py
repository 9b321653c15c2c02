"""Post-training quantization: calibrate once, quantize with the target's own toolchain, prove it, repair it.

One backend module per toolchain, chosen by looking up :data:`BACKENDS` with the profile's
runtime (LiteRT's TFLiteConverter, ONNX Runtime's QDQ quantizer, OpenVINO's NNCF). Each exposes
``quantize(...) -> Artifact`` and ``layer_errors(...) -> list[LayerError]``. This module holds
what they share: :class:`QuantOptions`, :class:`LayerError` and :func:`quantize_for_target`,
which runs quantize -> accuracy gate -> (per-layer diagnosis -> repair) -> host latency and
returns the manifest's ``"quantization"`` section.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgepack.artifact import ModelFormat
from edgepack.errors import AccuracyError, ConversionError, EdgepackError, UsageError
from edgepack.profiles import Precision, Profile, Runtime

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.calibration import Dataset
    from edgepack.quantize.gate import GateReport

__all__ = ["BACKENDS", "MODES", "LayerError", "QuantOptions", "backend_for", "quantize_for_target"]

MODES = ("int8", "fp16", "dynamic")
TOP_LAYERS = 20  # rows of the per-layer error table kept in the manifest
NAMED_CULPRITS = 5  # culprit layers an AccuracyError names

# The one table: runtime -> backend module (imported only when used).
BACKENDS: dict[Runtime, str] = {
    Runtime.LITERT: "edgepack.quantize.litert",
    Runtime.TFLITE_RUNTIME: "edgepack.quantize.litert",
    Runtime.ONNXRUNTIME: "edgepack.quantize.onnx_qdq",
    Runtime.TENSORRT: "edgepack.quantize.onnx_qdq",
    Runtime.OPENVINO: "edgepack.quantize.openvino_nncf",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize (hashable).

    Attributes:
        mode: "int8" (full-integer, calibrated), "fp16" (fp16 weights) or "dynamic" (int8 weights,
            float activations; LiteRT only).
        method: Calibration range method: "minmax", "entropy" or "percentile" (backends that lack
            one say so in the artifact's ``meta["warnings"]``).
        per_channel: Per-channel weight scales.
        symmetric_activations: Symmetric activation ranges (zero point 0).
        io: Model input/output type: "float" (quantize/dequantize inside), "int8" or "uint8".
        samples: At most this many calibration samples are used.
        exclude: Layers kept in float (names from ``layer_errors``).
        trust_code: Load Keras models that hold Python code (Lambda layers).
        select_tf_ops: Let TFLiteConverter fall back to TensorFlow ops (LiteRT only).
    """

    mode: str = "int8"
    method: str = "minmax"
    per_channel: bool = True
    symmetric_activations: bool = False
    io: str = "float"
    samples: int = 128
    exclude: tuple[str, ...] = ()
    trust_code: bool = False
    select_tf_ops: bool = False

    def __post_init__(self) -> None:
        mode = getattr(self.mode, "value", self.mode)
        if mode not in MODES:
            raise UsageError(
                f"quantization mode {mode!r} is not one of {', '.join(MODES)}.",
                hint="fp32 needs no quantize step; choose --precision int8, fp16 or dynamic.",
            )
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.samples < 1:
            raise UsageError(f"quantization needs at least one calibration sample, got samples={self.samples}.")

    @classmethod
    def from_profile(
        cls, profile: Profile, *, precision: Precision | str | None = None, trust_code: bool = False
    ) -> QuantOptions:
        """Options from a profile's ``precision`` (or ``precision``, e.g. ``--precision``) and ``[quantize]``."""
        q = profile.quantize
        return cls(
            mode=Precision(precision or profile.precision).value,
            method=q.method,
            per_channel=q.per_channel,
            symmetric_activations=q.symmetric_activations,
            io=q.io,
            samples=q.samples,
            trust_code=trust_code,
            select_tf_ops=profile.convert_settings.select_tf_ops,
        )

    def excluding(self, names: tuple[str, ...]) -> QuantOptions:
        """The same options with ``names`` kept in float."""
        return replace(self, exclude=tuple(names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "method": self.method,
            "per_channel": self.per_channel,
            "symmetric_activations": self.symmetric_activations,
            "io": self.io,
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class LayerError:
    """Quantization error of one layer's output, measured against its float computation.

    Attributes:
        name: The layer (its output tensor or node name), usable in ``QuantOptions.exclude``.
        op_type: Operator type ("CONV_2D", "Conv", ...).
        sqnr_db: Signal-to-quantization-noise ratio in dB (lower is worse; ``inf`` when exact).
        mse: Mean squared error between the float and the dequantized output.
        rmse_over_scale: ``sqrt(mse) / scale``; about 0.29 is plain rounding, more means clipping
            or worse. None where the backend does not know the output scale.
        source: The source model's layer this one comes from (``conv1``), None when unknown; set by
            :func:`quantize_for_target`, not by the backends (see :mod:`edgepack.layer_names`).
        fused: Other source layers fused into this one by the converter (a conv's batch norm and ReLU).
    """

    name: str
    op_type: str
    sqnr_db: float
    mse: float
    rmse_over_scale: float | None = None
    source: str | None = None
    fused: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "source_fused": list(self.fused),
            "op_type": self.op_type,
            "sqnr_db": _json_float(self.sqnr_db),
            "mse": _json_float(self.mse),
            "rmse_over_scale": None if self.rmse_over_scale is None else _json_float(self.rmse_over_scale),
        }


def backend_for(runtime: Runtime) -> ModuleType:
    """The quantization backend module of ``runtime`` (imported now)."""
    try:
        return importlib.import_module(BACKENDS[Runtime(runtime)])
    except KeyError:
        raise UsageError(f"edgepack cannot quantize for the {Runtime(runtime).value} runtime.") from None


def quantize_for_target(
    *,
    source: Artifact,
    pre: Artifact,
    float_artifact: Artifact,
    profile: Profile,
    calibration: Dataset,
    heldout: Dataset,
    workdir: Path,
    options: QuantOptions | None = None,
    allow_drop: bool = False,
    progress: Progress | None = None,
    seed: int | None = None,
) -> tuple[Artifact, dict[str, Any]]:
    """Quantize for one target, prove it on held-out data, repair it if needed, and time it.

    Steps: the backend quantizes ``pre`` with ``calibration`` (at most ``options.samples``); the
    accuracy gate runs ``source`` and the result on ``heldout`` (see :mod:`edgepack.quantize.gate`
    for the budget rule); per-layer errors are measured (int8); when the gate fails, the worst
    layers are kept in float, 1, 2, 4, ... up to ``profile.quantize.max_float_layers``, until it
    passes (:mod:`edgepack.quantize.repair`); finally the float and quantized artifacts are timed
    on this host, one thread (:mod:`edgepack.quantize.speed`). Each per-layer row also names the
    source model's layer it comes from (``source``, :mod:`edgepack.layer_names`); exclusions keep
    the converter's names, which are what the backends take.

    Args:
        source: The user's float model (the gate's reference).
        pre: What the final conversion hop started from (Keras/SavedModel, or the simplified ONNX).
        float_artifact: The float model in the target's format.
        profile: The target.
        calibration: Calibration samples (the part of the user's data not held out).
        heldout: Held-out samples (with labels when the user gave them).
        workdir: This step's folder; one sub-folder per attempt.
        options: Defaults to ``QuantOptions.from_profile(profile)``.
        allow_drop: Return the best attempt even when it is outside the budget (``--allow-accuracy-drop``).
        progress: Called with one line per phase.
        seed: The seed the data was split with, recorded in the settings.

    Returns:
        The quantized artifact and the manifest's ``"quantization"`` section (JSON-serialisable;
        its ``"latency"`` key holds the wall-clock figures, which are not reproducible).

    Raises:
        ConversionError: the source is a .tflite (it cannot be re-quantized) or the toolchain fails.
        AccuracyError: the budget cannot be met (names the ranked culprit layers) and not ``allow_drop``.
        LatencyBudgetError: int8 is not faster on this host and ``profile.quantize.must_be_faster``.
    """
    from edgepack.quantize import gate, repair, speed

    _refuse_tflite(source, pre)
    options = options or QuantOptions.from_profile(profile)
    say = progress or (lambda message: None)
    backend = backend_for(profile.runtime)
    calib = calibration.take(options.samples)
    workdir = Path(workdir)
    say(f"{profile.name}: running the float model on {len(heldout)} held-out samples")
    reference = gate.reference_outputs(source, heldout)

    def attempt(exclude: tuple[str, ...]) -> repair.Attempt:
        folder = workdir / f"attempt-{len(exclude):02d}"
        kept = f", {len(exclude)} layer(s) kept in float" if exclude else ""
        say(f"{profile.name}: quantizing ({options.mode}{kept}) with {len(calib)} calibration samples")
        artifact = backend.quantize(
            pre=pre,
            float_artifact=float_artifact,
            calibration=calib,
            workdir=folder,
            options=options.excluding(exclude),
            profile=profile,
        )
        return repair.Attempt(exclude, gate.evaluate(reference, artifact, profile.accuracy), artifact)

    first = attempt(())
    layers: list[LayerError] = []
    warnings: list[str] = list(first.artifact.meta.get("warnings", ()))
    if options.mode == "int8":
        say(f"{profile.name}: measuring per-layer quantization error")
        layers, note = _layer_errors(backend, pre, float_artifact, first.artifact, calib, options, profile)
        layers = _named_by_source(layers, source, pre, float_artifact)
        warnings += note
    attempts = [first]
    if not first.gate.passed and options.mode == "int8":
        more, failed = repair.repair(layers, attempt, max_float_layers=profile.quantize.max_float_layers)
        attempts += more
        warnings += failed
    final = repair.best(attempts)
    warnings += final.gate.notes
    if not final.gate.passed:
        if not allow_drop:
            raise _accuracy_error(profile, options.mode, final.gate, layers, attempts, float_artifact.format)
        warnings.append(f"ACCURACY BELOW BUDGET (--allow-accuracy-drop): {final.gate.summary()}")
    say(f"{profile.name}: timing float vs {options.mode} on this host")
    latency = speed.compare_latency(
        float_artifact, final.artifact, reference.feeds[0], reference.inputs, mode=options.mode, profile=profile
    )
    # Its figures are measurements: the warning travels with the latency (report/, not the sealed manifest).
    latency["warnings"] = speed.check_speed(latency, mode=options.mode, must_be_faster=profile.quantize.must_be_faster)
    section = _section(options, profile, calib, heldout, seed, float_artifact, final, attempts, layers)
    section["latency"] = latency
    section["warnings"] = warnings
    return final.artifact, section


def _refuse_tflite(source: Artifact, pre: Artifact) -> None:
    """A .tflite holds no float graph to calibrate (other targets quantize the ONNX made from it)."""
    if pre.format is ModelFormat.TFLITE:
        raise ConversionError(
            f"{source.path.name} is a .tflite model, which cannot be re-quantized (its float graph is gone).",
            hint="Give edgepack the Keras, SavedModel or ONNX model it was made from.",
        )


def _layer_errors(
    backend: ModuleType,
    pre: Artifact,
    float_artifact: Artifact,
    quantized: Artifact,
    calib: Dataset,
    options: QuantOptions,
    profile: Profile,
) -> tuple[list[LayerError], list[str]]:
    """Per-layer errors, worst first; a failure to measure them is a warning, not an error."""
    try:
        found = backend.layer_errors(
            pre=pre,
            float_artifact=float_artifact,
            quantized=quantized,
            samples=calib,
            options=options,
            profile=profile,
        )
    except EdgepackError as exc:
        return [], [f"per-layer quantization error could not be measured: {exc.one_line()}"]
    return sorted(found, key=lambda e: (-math.inf if math.isnan(e.sqnr_db) else e.sqnr_db, -e.mse)), []


def _named_by_source(
    layers: list[LayerError], source: Artifact, pre: Artifact, float_artifact: Artifact
) -> list[LayerError]:
    """The layers with the source model's layer names they come from (the converter's names stay the key)."""
    from edgepack.layer_names import source_map

    found = source_map([e.name for e in layers], source, pre, float_artifact)
    return [replace(e, source=(found[e.name] or (None,))[0], fused=found[e.name][1:]) for e in layers]


def _accuracy_error(
    profile: Profile,
    mode: str,
    gate: GateReport,
    layers: list[LayerError],
    attempts: list[Any],
    fmt: ModelFormat,
) -> AccuracyError:
    from edgepack.layer_names import TOOL_LABELS, display_name

    tool = TOOL_LABELS.get(fmt, fmt.value)
    # The source's name first (conv1), then the converter's, shortened: it is what a backend would exclude.
    culprits = ", ".join(
        f"{display_name(e.name, e.source, tool)} [{e.op_type}, SQNR {e.sqnr_db:.1f} dB]"
        for e in layers[:NAMED_CULPRITS]
    )
    tried = max(len(a.excluded) for a in attempts)
    cap = profile.quantize.max_float_layers
    repaired = (
        f"keeping up to {tried} layer(s) in float did not recover it"
        if tried
        else f"no repair was tried (quantize.max_float_layers = {cap})"
    )
    return AccuracyError(
        f"{profile.name}: the {mode} model is outside the accuracy budget "
        f"({gate.summary()}); {repaired}. Worst layers: {culprits or 'not measured'}.",
        hint="Raise quantize.max_float_layers, give more representative calibration data, choose precision "
        "fp16/dynamic, or accept the drop with --allow-accuracy-drop.",
    )


def _section(
    options: QuantOptions,
    profile: Profile,
    calib: Dataset,
    heldout: Dataset,
    seed: int | None,
    float_artifact: Artifact,
    final: Any,
    attempts: list[Any],
    layers: list[LayerError],
) -> dict[str, Any]:
    """The manifest's ``"quantization"`` section, less ``latency`` and ``warnings``."""
    meta = final.artifact.meta
    sources = {e.name: e.source for e in layers}
    float_bytes, quant_bytes = float_artifact.size_bytes(), final.artifact.size_bytes()
    settings = {
        **options.excluding(()).to_dict(),
        "calibration_samples": len(calib),
        "holdout_samples": len(heldout),
        "holdout_fraction": profile.quantize.holdout,
        "seed": seed,
        "max_float_layers": profile.quantize.max_float_layers,
    }
    return {
        "mode": options.mode,
        "tool": meta.get("tool"),
        "tool_version": meta.get("tool_version"),
        "settings": settings,
        "io": dict(meta.get("quant_params", {})),
        "gate": final.gate.to_dict(),
        "size": {
            "float_bytes": float_bytes,
            "quantized_bytes": quant_bytes,
            "ratio": round(float_bytes / quant_bytes, 3) if quant_bytes else None,
        },
        "layers": [e.to_dict() for e in layers[:TOP_LAYERS]],
        "repaired": {
            "float_layers": list(final.excluded),
            "float_layers_source": [sources.get(name) for name in final.excluded],
            "attempts": [{**a.to_dict(), "excluded_source": [sources.get(n) for n in a.excluded]} for a in attempts],
        },
    }


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
