"""ONNX -> ONNX: fix dynamic input dims to the source's static shapes and cap the opset.

TensorRT on a Jetson parses only up to a given opset (and IR version); a model
with a newer opset is brought down with ``onnx.version_converter``. A model whose
opset is already at or below the target is left at its opset.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert._common import describe, first_line, fresh_dir, read_specs, tool_meta
from edgepack.convert._ortcheck import compare, random_feeds, run_onnx
from edgepack.deps import require
from edgepack.errors import ConversionError, ModelError

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions

_DEFAULT_DOMAINS = ("", "ai.onnx")
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot serialise 2 GiB; bigger models keep weights outside


def load_onnx(path: Path) -> Any:
    """Load an ONNX model (with its external data) or raise ModelError."""
    onnx = require("onnx")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is not a readable ONNX model ({first_line(exc)}).", hint="Re-export it.") from exc


def save_onnx(model: Any, path: Path) -> tuple[Path, ...]:
    """Save a model; one over ~1.8 GB keeps its weights in ``<name>.data`` beside it. Returns its files."""
    onnx = require("onnx")
    if model.ByteSize() < _EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path))
        return (path,)
    data = path.with_name(path.name + ".data")
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return (path, data)


def model_opset(model: Any) -> int:
    """The model's default-domain (ai.onnx) opset."""
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    return max(versions) if versions else 1


def fix_input_shapes(model: Any, inputs: Sequence[TensorSpec]) -> list[str]:
    """Set every graph input named in ``inputs`` to its static shape; returns the names changed.

    Raises:
        ConversionError: a fixed dim of the model contradicts the wanted shape.
    """
    utils = require("onnxruntime.tools.onnx_model_utils")
    wanted = {spec.name: spec.shape for spec in inputs}
    changed = []
    for value in model.graph.input:
        shape = wanted.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if shape is None or [d.dim_value if d.HasField("dim_value") else None for d in dims] == list(shape):
            continue
        try:
            utils.make_input_shape_fixed(model.graph, value.name, list(shape))
        except ValueError as exc:
            raise ConversionError(
                f"cannot fix ONNX input {value.name} to shape {list(shape)} ({first_line(exc)}).",
                hint="Give shapes that keep the model's fixed dims (--input-shape NAME=...).",
            ) from exc
        changed.append(value.name)
    if changed:
        with contextlib.suppress(Exception):  # output shapes are only informative; runtimes infer them
            utils.fix_output_shapes(model)
    return changed


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
        if entry.domain in _DEFAULT_DOMAINS:
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


def fix_model(model: Any, inputs: Sequence[TensorSpec], opset: int | None) -> dict[str, Any]:
    """Fix input shapes and cap the opset of ``model`` in place; returns what changed."""
    facts: dict[str, Any] = {"fixed_inputs": fix_input_shapes(model, inputs)}
    current = model_opset(model)
    facts["opset"] = current
    if opset is not None and current > opset:
        converted, how = cap_opset(model, opset, inputs)
        model.CopyFrom(converted)
        facts.update(opset=opset, opset_from=current, opset_method=how, ir_version=model.ir_version)
    return facts


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """Write ``workdir/model.onnx``: the source with static inputs and opset <= ``options.opset``.

    When nothing needs changing the file is a byte-for-byte copy (same sha256).

    Raises:
        ModelError: the source is not a readable ONNX model.
        ConversionError: a shape cannot be fixed or the opset cannot be lowered.
    """
    workdir = fresh_dir(workdir)
    started = time.perf_counter()
    model = load_onnx(src.path)
    facts = fix_model(model, src.inputs, options.opset)
    path = workdir / "model.onnx"
    if facts["fixed_inputs"] or "opset_from" in facts or len(src.files) > 1:
        files = save_onnx(model, path)
    else:
        files = (Path(shutil.copyfile(src.path, path)),)
    meta = tool_meta("onnx", precision="fp32", seconds=round(time.perf_counter() - started, 3), **facts)
    return describe(src, path, ModelFormat.ONNX, read_specs(path, ModelFormat.ONNX), meta=meta, files=files)
