"""Check a model's operators against the operator table of a target's runtime.

Each runtime has one checker, chosen from :data:`_CHECKERS` by the profile's
runtime. A checker sorts every operator into supported, unsupported or
unknown and says why in notes; it never guesses: an operator the tables do not
settle is ``unknown``, and a verdict with unknown operators is not ``ok``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgepack.compat.tables import OpTable, available, load_table, merge

if TYPE_CHECKING:  # pragma: no cover
    from edgepack.profiles import Profile

OpKind = Literal["onnx", "tflite"]

_CUSTOM_TFLITE = "custom operator (not a TFLite builtin)"


@dataclass(frozen=True)
class CompatVerdict:
    """Whether one target's runtime can run a model's operators.

    ``ok`` is True only when every operator is known to be supported;
    ``unsupported`` names every operator known not to be, ``unknown`` every
    operator no table settles.
    """

    target: str
    runtime: str
    ok: bool
    unsupported: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    table: str = ""

    @property
    def verdict(self) -> str:
        """``compatible``, ``incompatible`` (some op unsupported) or ``unknown``."""
        if self.unsupported:
            return "incompatible"
        return "compatible" if self.ok else "unknown"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "runtime": self.runtime,
            "ok": self.ok,
            "verdict": self.verdict,
            "unsupported": list(self.unsupported),
            "unknown": list(self.unknown),
            "notes": list(self.notes),
            "table": self.table,
        }


@dataclass
class _Findings:
    unsupported: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    table: str = ""


_Checker = Callable[["Profile", Mapping[str, int], "int | None", OpKind, Mapping[str, int]], _Findings]


def check_compatibility(
    ops: Mapping[str, int],
    profile: Profile,
    *,
    opset: int | None,
    op_kind: OpKind = "onnx",
    op_versions: Mapping[str, int] | None = None,
) -> CompatVerdict:
    """Check a model's operators against the runtime of ``profile``.

    Args:
        ops: operator -> count. ONNX op types (``domain.OpType`` outside
            ai.onnx) when ``op_kind`` is ``"onnx"``; TFLite builtin names (or a
            custom op's name) when it is ``"tflite"``.
        profile: the target.
        opset: the model's ai.onnx opset, or None when it has none yet (a Keras
            model that edgepack will convert at the target's opset).
        op_kind: which names ``ops`` holds.
        op_versions: TFLite only: the highest version of each builtin in the model.

    Returns:
        The verdict, naming every unsupported and every unknown operator.
    """
    checker = _CHECKERS.get(profile.runtime.value, _check_unknown_runtime)
    found = checker(profile, ops, opset, op_kind, op_versions or {})
    unsupported = tuple(sorted(found.unsupported))
    unknown = tuple(sorted(found.unknown - found.unsupported))
    return CompatVerdict(
        target=profile.name,
        runtime=profile.runtime.value,
        ok=not unsupported and not unknown,
        unsupported=unsupported,
        unknown=unknown,
        notes=tuple(dict.fromkeys(found.notes)),
        table=found.table,
    )


# --------------------------------------------------------------------------- ONNX helpers


def _split(op: str) -> tuple[str, str]:
    """``com.microsoft.FusedConv`` -> (``com.microsoft``, ``FusedConv``); ``Conv`` -> ("", ``Conv``)."""
    domain, _, op_type = op.rpartition(".")
    return domain, op_type


def _opset_notes(
    found: _Findings, ops: Mapping[str, int], opset: int | None, target: int | None, who: str, min_opset: int = 1
) -> None:
    """Notes on converting the model's opset to the target's; ops missing at the target opset are unsupported."""
    if opset is not None and target is not None and opset > target:
        found.notes.append(f"opset {opset} > {who} max {target}; edgepack will convert it down")
    if opset is not None and opset < min_opset:
        found.notes.append(f"opset {opset} < {who} min {min_opset}; edgepack will convert it up")
    if target is None:
        return
    try:
        from onnx import defs
    except ImportError:
        found.notes.append("onnx is not installed: whether each op exists at the target opset is not checked")
        return
    for op in ops:
        domain, op_type = _split(op)
        if domain or not defs.has(op_type):
            continue
        try:
            defs.get_schema(op_type, target, "")
        except defs.SchemaError:
            history = defs.get_all_schemas_with_history()
            first = min(s.since_version for s in history if s.name == op_type and not s.domain)
            found.unsupported.add(op)
            found.notes.append(f"{op} needs opset {first} > target opset {target}; it cannot be converted down")


def _not_onnx(found: _Findings, ops: Mapping[str, int], runtime: str) -> _Findings:
    found.unknown.update(ops)
    found.notes.append(
        f"{runtime} runs ONNX: edgepack converts this .tflite with tf2onnx, whose ONNX ops are known only after that"
    )
    return found


def _lookup(found: _Findings, ops: Mapping[str, int], table: OpTable) -> None:
    """Sort ops by a list table: listed supported, listed unknown, anything else unsupported."""
    for op in ops:
        if table.has(op):
            continue
        (found.unknown if op in table.unknown else found.unsupported).add(op)


# --------------------------------------------------------------------------- checkers


def _check_tensorrt(profile: Profile, ops: Mapping[str, int], opset: int | None, kind: OpKind, _: Any) -> _Findings:
    found = _Findings()
    if kind != "onnx":
        return _not_onnx(found, ops, "TensorRT")
    trt = profile.tensorrt
    version = trt.tensorrt_version if trt is not None else "?"
    if f"tensorrt_{version}" not in available():  # a user's profile may name a TensorRT without a table
        found.unknown.update(ops)
        found.notes.append(f"edgepack has no operator table for TensorRT {version}")
        return found
    table = load_table(f"tensorrt_{version}")
    found.table = table.name
    jetpack = trt.jetpack if trt is not None else "?"
    found.notes.append(f"TensorRT {version} (JetPack {jetpack}) ONNX parser ops: {table.provenance}")
    _lookup(found, ops, table)
    custom = sorted(op for op in found.unsupported if _split(op)[0])
    if custom:
        found.notes.append(f"{', '.join(custom)}: custom-domain ops need a TensorRT plugin")
    if found.unknown:
        found.notes.append(f"{', '.join(sorted(found.unknown))}: support in TensorRT {version} is not documented")
    _opset_notes(found, ops, opset, profile.target_opset, f"TensorRT {version}", int(table.meta.get("min_opset", 1)))
    return found


def _check_onnxruntime(profile: Profile, ops: Mapping[str, int], opset: int | None, kind: OpKind, _: Any) -> _Findings:
    found = _Findings()
    if kind != "onnx":
        return _not_onnx(found, ops, "ONNX Runtime")
    table = load_table("onnxruntime_cpu")
    found.table = table.name
    found.notes.append(f"ONNX Runtime CPU: ops {table.provenance}; the device runs {profile.runtime_version}")
    run_opset = min(opset, profile.target_opset) if opset and profile.target_opset else opset
    for op in ops:
        span = table.opsets.get(op)
        if op in table.supported or (span is not None and op not in table.unsupported):
            _past_last_kernel(found, op, span, table.ran_opsets.get(op, ()), run_opset)
        elif op not in table.unsupported and _is_onnx_function(op, run_opset):
            found.notes.append(f"{op} has no kernel; ONNX Runtime expands its ONNX function body")
        else:
            found.unsupported.add(op)
            if op in table.unsupported:
                found.notes.append(f"{op}: none of its test models ran in {table.tool}")
    _wrong_results_notes(found, ops, table)
    _opset_notes(found, ops, opset, profile.target_opset, "the profile")
    return found


def _past_last_kernel(
    found: _Findings, op: str, span: tuple[int, int | None] | None, ran: tuple[int, ...], run_opset: int | None
) -> None:
    """An ai.onnx op whose CPU kernels end before the opset it runs at (Upsample after 9) is unsupported."""
    if run_opset is None or _split(op)[0] or span is None or span[1] is None or run_opset <= span[1]:
        return
    if any(o >= run_opset for o in ran):
        return
    found.unsupported.add(op)
    found.notes.append(f"{op} has no CPU kernel after opset {span[1]}")


def _wrong_results_notes(found: _Findings, ops: Mapping[str, int], table: OpTable) -> None:
    for op in sorted(set(ops) & table.wrong_results):
        found.notes.append(f"{op} ran in {table.tool}, but with outputs other than onnx's test expects")


def _is_onnx_function(op: str, opset: int | None) -> bool:
    """Whether ``op`` is an ai.onnx function op (HardSwish, Mish, ...) that runtimes expand into primitives."""
    domain, name = _split(op)
    if domain:
        return False
    from edgepack.deps import require

    defs = require("onnx.defs")
    try:
        schema = defs.get_schema(name, opset or defs.onnx_opset_version())
    except Exception:  # noqa: BLE001 - not an ONNX op at that opset
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _check_openvino(profile: Profile, ops: Mapping[str, int], opset: int | None, kind: OpKind, _: Any) -> _Findings:
    found = _Findings()
    if kind != "onnx":
        return _not_onnx(found, ops, "OpenVINO")
    measured = load_table("openvino_onnx")
    table = merge("openvino_onnx", measured, load_table("openvino_onnx_domains"))
    found.table = table.name
    found.notes.append(f"OpenVINO CPU: ai.onnx ops {measured.provenance}; other domains transcribed")
    _lookup(found, ops, table)
    _wrong_results_notes(found, ops, measured)
    if found.unknown:
        found.notes.append(f"{', '.join(sorted(found.unknown))}: no test model measured it in {measured.tool}")
    _opset_notes(found, ops, opset, profile.target_opset, "the profile")
    return found


def _check_litert(profile: Profile, ops: Mapping[str, int], _opset: Any, kind: OpKind, versions: Any) -> _Findings:
    found = _Findings()
    table = load_table("litert" if profile.runtime.value == "litert" else "tflite_runtime")
    if profile.delegate == "gpu":
        found.notes.append("GPU delegate coverage is not checked; ops it lacks fall back to the CPU")
    if kind == "onnx":
        return _onnx_via_onnx2tf(found, ops, table)
    found.table = table.name
    found.notes.append(f"TFLite builtin kernels and op versions {table.provenance}")
    for op in ops:
        span = table.versions.get(op)
        if span is None:
            found.unsupported.add(op)
            if op.startswith("Flex"):
                found.notes.append(f"{op} is a select-TF (Flex) op; {table.tool} has no Flex delegate")
            continue
        version = versions.get(op)
        if version is not None and not span[0] <= version <= span[1]:
            found.unsupported.add(op)
            found.notes.append(f"{op} v{version} is outside {table.tool}'s v{span[0]}-v{span[1]}")
    return found


def _onnx_via_onnx2tf(found: _Findings, ops: Mapping[str, int], runtime_table: OpTable) -> _Findings:
    """onnx2tf dispatches on the bare op type, so ``com.microsoft.FusedConv`` is looked up as ``FusedConv``."""
    onnx2tf = load_table("onnx2tf")
    found.table = onnx2tf.name
    bare = {_split(op)[1] for op in onnx2tf.supported}
    unknown = {_split(op)[1] for op in onnx2tf.unknown}
    for op in ops:
        if _split(op)[1] in bare:
            continue
        (found.unknown if _split(op)[1] in unknown else found.unsupported).add(op)
    missing = sorted(op for op in found.unsupported if _no_onnx2tf_converter(op, onnx2tf))
    if missing:
        found.notes.append(f"{', '.join(missing)}: onnx2tf has no converter for that op type (it ignores the domain)")
    tools = onnx2tf.meta.get("tools", [onnx2tf.tool])
    found.notes.append(
        f"ONNX ops {onnx2tf.provenance}: a test model of the op converted and ran ({', '.join(tools[:2])}); "
        f"{runtime_table.tool} on the device may lack a builtin the conversion uses"
    )
    _wrong_results_notes(found, ops, onnx2tf)
    if found.unknown:
        names = ", ".join(sorted(found.unknown))
        found.notes.append(f"{names}: onnx2tf has a converter, but none of its test models tried converted and ran")
    return found


def _no_onnx2tf_converter(op: str, onnx2tf: OpTable) -> bool:
    """Whether ``op`` is outside ai.onnx and onnx2tf certainly has no converter for its op type.

    onnx2tf imports ``onnx2tf.ops.<op_type>`` whatever the domain, so ``com.microsoft.FusedConv`` converts
    and ``com.microsoft.DynamicQuantizeLSTM`` fails. The table lists every op type onnx2tf has a converter
    for (``test_onnx2tf_table_covers_every_converter_once``): an op type it lists in ai.onnx may have one.
    """
    domain, op_type = _split(op)
    if domain in ("", "ai.onnx"):
        return False
    listed = [_split(name) for name in onnx2tf.supported | onnx2tf.unknown | onnx2tf.unsupported]
    if op_type in {bare for where, bare in listed if where in ("", "ai.onnx")}:
        return False  # onnx2tf may have a converter for the op type
    return op in onnx2tf.unsupported or op_type not in {bare for _, bare in listed}


def precheck_onnx_for(profile: Profile, model_path: Path) -> list[str]:
    """Operators of an ONNX source that ``profile``'s conversion certainly cannot take, before converting.

    Only what the tables are sure of: for LiteRT targets (converted by onnx2tf), operators outside
    ai.onnx whose op type onnx2tf has no converter for (``com.microsoft.DynamicQuantizeLSTM``), in the
    top-level graph and fed by a graph input (folding cannot remove them). An op that a measured table
    marks unsupported but that a converter exists for is left to the conversion and the static check;
    other runtimes take the ONNX graph as it is and are checked after it is prepared.

    Args:
        profile: the target.
        model_path: the ONNX source.

    Returns:
        The operators refused (``domain.OpType`` outside ai.onnx), sorted; empty when none is.
    """
    if profile.runtime.value not in ("litert", "tflite-runtime"):
        return []
    from edgepack.deps import require

    onnx = require("onnx")
    graph = onnx.load(str(model_path), load_external_data=False).graph
    onnx2tf = load_table("onnx2tf")
    fed = {value.name for value in graph.input} - {init.name for init in graph.initializer}
    refused: set[str] = set()
    for node in graph.node:  # topological order: ``fed`` holds every tensor a graph input reaches
        if not fed.intersection(node.input):
            continue
        fed.update(node.output)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if _no_onnx2tf_converter(op, onnx2tf):
            refused.add(op)
    return sorted(refused)


def _check_unknown_runtime(profile: Profile, ops: Mapping[str, int], *_: Any) -> _Findings:
    return _Findings(unknown=set(ops), notes=[f"edgepack has no operator table for runtime {profile.runtime.value}"])


_CHECKERS: dict[str, _Checker] = {
    "tensorrt": _check_tensorrt,
    "onnxruntime": _check_onnxruntime,
    "openvino": _check_openvino,
    "litert": _check_litert,
    "tflite-runtime": _check_litert,
}
