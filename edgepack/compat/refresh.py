"""Regenerate the measured operator tables in ``edgepack/compat/data`` from installed runtimes.

Five tables are measured rather than transcribed. The TFLite builtins a LiteRT
(or tflite-runtime) interpreter has kernels for, with their op versions, come
from loading one-op .tflite models. The ONNX tables (ONNX Runtime CPU, OpenVINO
CPU, onnx2tf -> LiteRT) come from running onnx's node test models in the
runtime (:mod:`edgepack.compat.measured`): an op a runtime runs is never listed
unsupported, whether a kernel, a graph-layer rewrite (Constant, Shape folding,
If/Loop, sequences) or a function expansion runs it. The TensorRT tables are
transcribed from NVIDIA's documents and have no generator. Run, for example::

    python -m edgepack.compat.refresh litert edgepack/compat/data/litert.toml
    python -m edgepack.compat.refresh onnx2tf edgepack/compat/data/onnx2tf.toml --per-op 2

The table kinds are the data files' names: litert, tflite_runtime,
onnxruntime_cpu, onnx2tf, openvino_onnx. ``tflite_runtime`` runs where
tflite-runtime is installed, with ai-edge-litert's pure-Python flatbuffer
schema (``ai_edge_litert/schema_py_generated.py``) importable beside it.
Test cases and per-model results are cached in ``~/.cache/edgepack/compat-measure``
(``--cache``), so a rerun measures only what is new.

A table records the tools and versions it was measured with.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.compat.tablefile import to_toml

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


_DISTRIBUTION = {
    "litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
}


_METHOD = {
    "litert": "A builtin is listed with the op versions a one-op model of it loads with (a kernel is found).",
    "tflite_runtime": "A builtin is listed with the op versions a one-op model of it loads with (a kernel is found).",
}


def _tflite(module: str) -> dict[str, Any]:
    import importlib

    schema = importlib.import_module("ai_edge_litert.schema_py_generated")
    return {"versions": tflite_kernels(schema, importlib.import_module(module).Interpreter)}


_MEASURE: dict[str, Callable[[], dict[str, Any]]] = {
    "litert": lambda: _tflite("ai_edge_litert.interpreter"),
    "tflite_runtime": lambda: _tflite("tflite_runtime.interpreter"),
}


def main(argv: list[str]) -> None:
    """``python -m edgepack.compat.refresh KIND OUT.toml [--per-op N] [--budget-s S] [--cache DIR]``.

    Measures table KIND and writes it to OUT.toml. The ONNX tables (onnxruntime_cpu,
    openvino_onnx, onnx2tf) run onnx's node test models (:mod:`edgepack.compat.measured`).
    """
    import argparse
    from importlib.metadata import version

    from edgepack.compat import measured

    parser = argparse.ArgumentParser(prog="python -m edgepack.compat.refresh")
    parser.add_argument("kind", choices=[*_MEASURE, *measured.RUNTIME_OF])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-op", type=int, default=None, help="test models tried per op (default: all; onnx2tf 2)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting test models after this long")
    parser.add_argument("--cache", type=Path, default=None, help="folder of test cases and cached results")
    args = parser.parse_args(argv)
    if args.kind in measured.RUNTIME_OF:
        text = measured.table_text(args.kind, per_op=args.per_op, budget_s=args.budget_s, cache=args.cache)
        args.out.write_text(text)
        return
    ops = _MEASURE[args.kind]()
    tool = f"{_DISTRIBUTION[args.kind]} {version(_DISTRIBUTION[args.kind])}"
    command = f"python -m edgepack.compat.refresh {args.kind} {args.kind}.toml"
    comments = [f"Measured with {tool} on {platform.machine()} by: {command}", _METHOD[args.kind]]
    args.out.write_text(to_toml(comments, {"table": args.kind, "measured_with": tool}, ops))


if __name__ == "__main__":
    main(sys.argv[1:])
