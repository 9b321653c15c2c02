"""Lowering an ONNX model's opset for a runtime that takes no newer one, checked by running both versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgepack.artifact import TensorSpec
from edgepack.convert.ortcheck import compare, random_feeds, run_onnx
from edgepack.deps import require
from edgepack.errors import ConversionError
from edgepack.tools import first_line

DEFAULT_DOMAINS = ("", "ai.onnx")  # the standard operator set


def model_opset(model: Any) -> int:
    """The model's default-domain (ai.onnx) opset."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return max(versions) if versions else 1


def _version_converter(model: Any, target: int) -> Any:
    onnx = require("onnx")
    converted = onnx.version_converter.convert_version(model, target)
    onnx.checker.check_model(converted)
    return converted


def _relabel(model: Any, target: int) -> Any:
    """The same graph declared at opset ``target``, if every node is valid there (a full check)."""
    onnx = require("onnx")
    relabeled = onnx.ModelProto()
    relabeled.CopyFrom(model)
    for entry in relabeled.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            entry.version = target
    onnx.checker.check_model(relabeled, full_check=True)
    return relabeled


def _lowest_ir(model: Any) -> None:
    """Lower the IR version to what the opset needs (older parsers refuse newer IRs), if the model allows."""
    onnx = require("onnx")
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    newest = model.ir_version
    if newest <= needed:
        return
    model.ir_version = needed
    try:
        onnx.checker.check_model(model)
    except Exception:  # noqa: BLE001 - the model uses newer IR features: keep its IR version
        model.ir_version = newest


# Ways to express a model at a lower opset, in order. onnx's version converter lacks many
# downgrade adapters (Relu/Add/Reshape 14->13, Identity 16->15, BatchNormalization 15->14), where
# only the allowed types changed; declaring the lower opset is then enough, which the full checker
# and an onnxruntime comparison confirm.
_DOWNGRADES: tuple[tuple[str, Any], ...] = (("version_converter", _version_converter), ("relabel", _relabel))


def cap_opset(model: Any, target: int, inputs: Sequence[TensorSpec]) -> tuple[Any, str]:
    """``model`` expressed at opset ``target``, checked to compute the same outputs; and how it was done.

    Raises:
        ConversionError: no way gives a valid model with the same outputs.
    """
    current = model_opset(model)
    feeds = random_feeds(inputs, seed=0)
    try:
        reference = run_onnx(model, feeds)
    except Exception:  # noqa: BLE001 - a model onnxruntime cannot run (custom ops) is not compared
        reference = None
    reasons = []
    for how, downgrade in _DOWNGRADES:
        try:
            converted = downgrade(model, target)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"{how}: {first_line(exc)[-160:]}")
            continue
        mismatch = _mismatch(reference, converted, feeds, strict=how == "relabel")
        if mismatch is None:
            _lowest_ir(converted)
            return converted, how
        reasons.append(f"{how}: {mismatch}")
    raise ConversionError(
        f"cannot bring the ONNX model from opset {current} down to {target} ({'; '.join(reasons)}).",
        hint=f"Re-export the model with opset {target} or lower (e.g. torch.onnx.export(..., opset_version="
        f"{target})), or use a target whose runtime takes opset {current}.",
    )


def _mismatch(reference: Any, converted: Any, feeds: Any, *, strict: bool) -> str | None:
    if reference is None:
        return "cannot be compared in onnxruntime" if strict else None
    try:
        _, mismatch = compare(reference, run_onnx(converted, feeds))
    except Exception as exc:  # noqa: BLE001
        return f"does not run in onnxruntime ({first_line(exc)[:160]})"
    return mismatch
