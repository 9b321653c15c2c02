"""Regenerate the measured operator tables in ``edgepack/compat/data`` from installed runtimes.

Four tables are measured rather than transcribed: the TFLite builtins a LiteRT
(or tflite-runtime) interpreter has kernels for, with their op versions; the
ONNX Runtime CPU kernels; the ONNX ops OpenVINO's ONNX frontend converts; and
the ONNX ops onnx2tf has a converter for. The TensorRT tables are transcribed
from NVIDIA's documents and have no generator. Run, for example::

    python -m edgepack.compat.refresh litert edgepack/compat/data/litert.toml

The table kinds are the data files' names: litert, tflite_runtime,
onnxruntime_cpu, onnx2tf, openvino_onnx. ``tflite_runtime`` runs where
tflite-runtime is installed, with ai-edge-litert's pure-Python flatbuffer
schema (``ai_edge_litert/schema_py_generated.py``) importable beside it.

A table records the tool and version it was measured with.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

_INT_MAX = 2**31 - 1


# --------------------------------------------------------------------------- TOML output


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


# --------------------------------------------------------------------------- LiteRT / tflite-runtime


def _single_op_model(schema: Any, code: int, version: int) -> bytes:
    """A one-operator .tflite (float [1] -> [1]) whose only opcode is ``code`` at ``version``."""
    import flatbuffers

    model = schema.ModelT()
    model.version = 3
    opcode = schema.OperatorCodeT()
    opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), version
    model.operatorCodes, model.buffers = [opcode], [schema.BufferT()]
    tensors = []
    for name in (b"x", b"y"):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer, tensor.name = [1], schema.TensorType.FLOAT32, 0, name
        tensors.append(tensor)
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, [0], [1]
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [1], [operator]
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_kernels(schema: Any, interpreter: Callable[..., Any], max_version: int = 15) -> dict[str, list[int]]:
    """Builtin op name -> [min, max] op version the interpreter resolves a kernel for.

    An opcode without a kernel fails at load with "Didn't find op for builtin
    opcode" (or "builtin_code out of range" on an older runtime); any other
    load error (missing options, wrong inputs) means the kernel was found.
    """

    def has_kernel(code: int, version: int) -> bool:
        try:
            interpreter(model_content=_single_op_model(schema, code, version))
        except Exception as exc:  # noqa: BLE001 - the message tells which failure it was
            return not ("find op" in str(exc) or "out of range" in str(exc))
        return True

    table = {}
    for name, code in vars(schema.BuiltinOperator).items():
        if name.startswith("_") or name == "CUSTOM":
            continue
        versions = [v for v in range(1, max_version + 1) if has_kernel(code, v)]
        if versions:
            table[name] = [min(versions), max(versions)]
    return table


# --------------------------------------------------------------------------- ONNX Runtime, onnx2tf, OpenVINO


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


_OV_PROBE = """
import sys, onnx, onnx.helper as h
from openvino.frontend import FrontEndManager
op, n, opset, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ins = [h.make_tensor_value_info(f"x{i}", onnx.TensorProto.FLOAT, [1, 3, 4, 4]) for i in range(n)]
node = h.make_node(op, [v.name for v in ins], ["y"])
graph = h.make_graph([node], "g", ins, [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)]), path)
fe = FrontEndManager().load_by_framework("onnx")
types = [n.get_type_name() for n in fe.convert_partially(fe.load(path)).get_ordered_ops()]
print("NO-TRANSLATOR" if "ONNXFrameworkNode" in types else "TRANSLATOR")
"""


def openvino_onnx_ops() -> tuple[list[str], list[str]]:
    """ai.onnx ops that OpenVINO's ONNX frontend has / lacks a translator for, one subprocess per op.

    ``convert_partially`` turns an op without a translator into an
    ``ONNXFrameworkNode``; a translator that rejects the probe's made-up
    inputs raises or crashes instead, which still means it exists.
    """
    from onnx import defs

    env = {"CI": "true", "PATH": "/usr/bin:/bin"}
    have, lack = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for schema in sorted((s for s in defs.get_all_schemas() if s.domain == ""), key=lambda s: s.name):
            args = [schema.name, str(max(1, schema.min_input)), str(max(17, schema.since_version))]
            cmd = [sys.executable, "-c", _OV_PROBE, *args, str(Path(workdir) / f"{schema.name}.onnx")]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env).stdout
            except subprocess.TimeoutExpired:
                out = ""
            (lack if "NO-TRANSLATOR" in out else have).append(schema.name)
    return have, lack


_DISTRIBUTION = {
    "litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "onnxruntime_cpu": "onnxruntime",
    "onnx2tf": "onnx2tf",
    "openvino_onnx": "openvino",
}


_METHOD = {
    "litert": "A builtin is listed with the op versions a one-op model of it loads with (a kernel is found).",
    "tflite_runtime": "A builtin is listed with the op versions a one-op model of it loads with (a kernel is found).",
    "onnxruntime_cpu": "Op -> [first] or [first, last] opset of its CPU kernels (get_all_opkernel_def).",
    "onnx2tf": "ONNX op types with a converter module in onnx2tf/ops (onnx2tf dispatches on the bare op type).",
    "openvino_onnx": "ai.onnx ops (onnx's schemas) a one-op model of converts without an ONNXFrameworkNode.",
}


def _tflite(module: str) -> dict[str, Any]:
    import importlib

    schema = importlib.import_module("ai_edge_litert.schema_py_generated")
    return {"versions": tflite_kernels(schema, importlib.import_module(module).Interpreter)}


def _openvino() -> dict[str, Any]:
    have, lack = openvino_onnx_ops()
    return {"supported": have, "unsupported": lack}


_MEASURE: dict[str, Callable[[], dict[str, Any]]] = {
    "litert": lambda: _tflite("ai_edge_litert.interpreter"),
    "tflite_runtime": lambda: _tflite("tflite_runtime.interpreter"),
    "onnxruntime_cpu": lambda: {"opsets": onnxruntime_cpu_kernels()},
    "onnx2tf": lambda: {"supported": onnx2tf_ops()},
    "openvino_onnx": _openvino,
}


def main(argv: list[str]) -> None:
    """``python -m edgepack.compat.refresh KIND OUT.toml``: measure table KIND and write it to OUT.toml."""
    from importlib.metadata import version

    kind, out = argv[0], Path(argv[1])
    if kind not in _MEASURE:
        raise SystemExit(f"unknown table {kind!r}; known: {', '.join(_MEASURE)}")
    ops = _MEASURE[kind]()
    tool = f"{_DISTRIBUTION[kind]} {version(_DISTRIBUTION[kind])}"
    command = f"python -m edgepack.compat.refresh {kind} {kind}.toml"
    comments = [f"Measured with {tool} on {platform.machine()} by: {command}", _METHOD[kind]]
    out.write_text(to_toml(comments, {"table": kind, "measured_with": tool}, ops))


if __name__ == "__main__":
    main(sys.argv[1:])
