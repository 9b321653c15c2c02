"""What a source model computes in, and so which yardstick judges an artifact made from it.

A float source is the exact reference for a float artifact: validation holds the artifact to the
profile's float tolerances (``accuracy.max_abs_error``, ``min_cosine``, ``min_top1_agreement``).

A quantized .tflite is not. LiteRT runs a *dynamic-range* ("hybrid") model's int8 weights with
kernels that quantize the float activations on the fly, and a *full-integer* model in int8
throughout; a converted artifact (ONNX Runtime, OpenVINO, a float .tflite) computes the same graph
in float from the dequantized weights. The two differ by the source's own quantization noise
(typically 30-40 dB SQNR), which no float tolerance of 1e-3 can absorb, and which is not an error
of the conversion. Such an artifact is judged like an int8 model against its float reference
(the rule of :func:`edgepack.quantize.gate.judge` without labels): top-1 agreement for classifier
outputs, cosine for the others, both ``>= accuracy.int8_min_top1_agreement``, SQNR reported.

Weight-only quantization (int8 or fp16 constants behind DEQUANTIZE ops) stays float: LiteRT
dequantizes the weights and computes in float, as the artifact does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import ModelFormat

if TYPE_CHECKING:
    from edgepack.artifact import Artifact
    from edgepack.profiles import Accuracy
    from edgepack.validate import OutputMetrics

FLOAT, DYNAMIC_RANGE, FULL_INTEGER = "float", "dynamic-range", "full-integer"
_QUANTIZED_TYPES = ("int8", "uint8", "int16")
_CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass(frozen=True)
class SourceKind:
    """How a model computes.

    Attributes:
        kind: "float", "dynamic-range" (int8 weights consumed by hybrid kernels, float activations)
            or "full-integer" (quantized activations).
        evidence: What showed it, e.g. "12 of 30 ops take int8 weights with float activations (CONV_2D)".
    """

    kind: str
    evidence: str = ""

    @property
    def quantized(self) -> bool:
        return self.kind != FLOAT


@dataclass(frozen=True)
class Yardstick:
    """The rule validation applies: "float" (the profile's float tolerances) or "int8" (its int8 criteria).

    Attributes:
        name: "float" or "int8".
        reason: Why, for the validation report.
    """

    name: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}

    @property
    def hint(self) -> str:
        if self.name == "int8":
            return (
                "The source is quantized: lower accuracy.int8_min_top1_agreement in your profile, package the float "
                "model the quantized one was made from, or use --allow-accuracy-drop."
            )
        return (
            "Raise the accuracy tolerances (accuracy.max_abs_error, accuracy.min_cosine, "
            "accuracy.min_top1_agreement) in your profile, or use --allow-accuracy-drop."
        )

    def int8_failures(self, metrics: Sequence[OutputMetrics], tolerance: Accuracy) -> list[str]:
        """Every broken int8 criterion, one line each, as :func:`edgepack.quantize.gate.judge` rules without labels.

        A classifier output needs top-1 agreement ``>= accuracy.int8_min_top1_agreement``, its allowance rounded
        up to a whole sample (one of 8 samples may flip under 0.99); any other output needs that cosine. NaN or
        inf where the source is finite always fails. (The gate cannot be imported here: it imports validate.)
        """
        agree, failures = tolerance.int8_min_top1_agreement, []
        for m in metrics:
            if not m.finite:
                failures.append(f"output '{m.name}' has NaN or inf values where the source's are finite")
            elif m.top1_agreement is not None:
                floor = (m.rows - max(0, math.ceil((1.0 - agree) * m.rows - 1e-9))) / m.rows
                if m.top1_agreement < floor:
                    failures.append(
                        f"output '{m.name}': top-1 agreement {m.top1_agreement:.2%} < {floor:.2%} (budget {agree:g}) "
                        f"over {m.rows} row(s), SQNR {m.sqnr_db:.1f} dB"
                    )
            elif m.cosine < agree:
                failures.append(f"output '{m.name}': cosine {m.cosine:.4f} < {agree:g}, SQNR {m.sqnr_db:.1f} dB")
        return failures


def source_kind(artifact: Artifact) -> SourceKind:
    """The kind of ``artifact``: read from a .tflite's tensors and ops, "float" for every other format.

    Other formats' quantized forms (QDQ ONNX, int8 IR) are made by edgepack's own quantize step, which
    has its own gate; a source in them is judged as float, as before.
    """
    if artifact.format is not ModelFormat.TFLITE:
        return SourceKind(FLOAT)
    return tflite_kind(Path(artifact.path))


def tflite_kind(path: Path) -> SourceKind:
    """Classify a .tflite from its ops' input and output tensors (LiteRT's op and tensor details)."""
    from edgepack.deps import require

    interpreter = require("ai_edge_litert.interpreter").Interpreter(model_path=str(path))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] not in _CONVERSION_OPS]  # noqa: SLF001
    hybrid, integer = [], []
    for op in ops:
        ins = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        outs = [tensors[i] for i in op["outputs"] if i >= 0 and i in tensors]
        if any(_quantized(t) for t in outs):
            integer.append(op["op_name"])
        elif any(_quantized(t) for t in ins) and any(_is_float(t) for t in ins) and any(_is_float(t) for t in outs):
            hybrid.append(op["op_name"])
    if integer:
        return SourceKind(FULL_INTEGER, f"{len(integer)} of {len(ops)} ops compute in integer ({_names(integer)})")
    if hybrid:
        evidence = f"{len(hybrid)} of {len(ops)} ops take int8 weights with float activations"
        return SourceKind(DYNAMIC_RANGE, f"{evidence} ({_names(hybrid)})")
    return SourceKind(FLOAT)


def yardstick(source: Artifact, artifact: Artifact) -> Yardstick:
    """The rule that judges ``artifact`` against ``source`` (see the module docstring).

    A quantized source judges a converted artifact by the int8 criteria, unless the artifact is a .tflite
    of the same kind (LiteRT runs both with the same kernels, so the float tolerances hold).
    """
    kind = source_kind(source)
    if not kind.quantized:
        return Yardstick("float", "source computes in float: judged by the float tolerances")
    if artifact.format is ModelFormat.TFLITE and source_kind(artifact).kind == kind.kind:
        return Yardstick("float", f"source and artifact are both {kind.kind} quantized .tflite run by LiteRT")
    return Yardstick(
        "int8",
        f"source is {kind.kind} quantized ({kind.evidence}) while the artifact computes in float: "
        "judged by top-1 agreement (classifier outputs) or cosine (others) >= accuracy.int8_min_top1_agreement, "
        "SQNR reported",
    )


def _quantized(tensor: dict[str, Any]) -> bool:
    scales = tensor.get("quantization_parameters", {}).get("scales")
    return _dtype(tensor) in _QUANTIZED_TYPES and scales is not None and len(scales) > 0


def _is_float(tensor: dict[str, Any]) -> bool:
    return _dtype(tensor) in ("float32", "float16")


def _dtype(tensor: dict[str, Any]) -> str:
    return getattr(tensor["dtype"], "__name__", str(tensor["dtype"]))


def _names(ops: list[str]) -> str:
    return ", ".join(sorted(set(ops)))
