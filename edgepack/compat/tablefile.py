"""Writing operator tables as TOML, and the kernel and converter lists the tables start from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_INT_MAX = 2**31 - 1  # ONNX Runtime's "up to the latest opset" end of a kernel's version range


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_value(v) for v in value) + "]"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _value(key)


def to_toml(comments: Iterable[str], meta: Mapping[str, Any], ops: Mapping[str, Any]) -> str:
    """A table file: comment lines, a ``[meta]`` table, then ``[ops]`` (lists one item a line)."""
    lines = [f"# {c}".rstrip() for c in comments] + ["", "[meta]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in meta.items()]
    lines += ["", "[ops]"]
    for key, value in ops.items():
        if isinstance(value, Mapping):
            lines += ["", f"[ops.{key}]"] + [f"{_key(k)} = {_value(v)}" for k, v in sorted(value.items())]
        else:
            lines += [f"{key} = ["] + [f"    {_value(v)}," for v in sorted(value)] + ["]"]
    return "\n".join(lines) + "\n"


def onnxruntime_cpu_kernels() -> dict[str, list[int]]:
    """ONNX Runtime CPU kernels: op (``domain.Op`` outside ai.onnx) -> [first opset] or [first, last]."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    spans: dict[str, list[list[int]]] = {}
    for kernel in ort_c.get_all_opkernel_def():
        if kernel.provider != "CPUExecutionProvider":
            continue
        key = kernel.op_name if kernel.domain in ("", "ai.onnx") else f"{kernel.domain}.{kernel.op_name}"
        spans.setdefault(key, []).append(list(kernel.version_range))
    table = {}
    for key, ranges in spans.items():
        first = min(r[0] for r in ranges)
        last = max(r[1] for r in ranges)
        table[key] = [first] if last >= _INT_MAX else [first, last]
    return table


def onnx2tf_ops() -> list[str]:
    """ONNX op types onnx2tf has a converter module for (it dispatches on ``onnx2tf.ops.<op_type>``).

    Reads the package folder without importing onnx2tf (which imports TensorFlow).
    """
    from importlib.util import find_spec

    spec = find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("onnx2tf is not installed")
    names = (p.stem for p in (Path(spec.submodule_search_locations[0]) / "ops").glob("*.py"))
    return sorted(n for n in names if n[0].isupper() and n != "Input")
