"""Static cost of a model: multiply-accumulates, parameters, weight and activation bytes.

MACs are counted for the layers that dominate compute: Conv (grouped and
depthwise included), ConvTranspose, Gemm and MatMul in ONNX (and their
quantized and ONNX Runtime fused forms); CONV_2D, DEPTHWISE_CONV_2D,
CONV_3D, TRANSPOSE_CONV, FULLY_CONNECTED and BATCH_MATMUL in TFLite.
Element-wise ops are not counted. ``params`` counts the elements of
floating-point and 8-bit (quantized) weight tensors; int32/int64 constants
(shapes, indices, quantized biases) count in ``weight_bytes`` only.
``activation_bytes`` is the size of every tensor the graph computes, plus its
inputs: a proxy for the memory traffic of one inference, not peak memory.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.deps import require
from edgepack.errors import ModelError

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Cost:
    """What one inference costs, statically.

    Attributes:
        macs: multiply-accumulates of the counted layers (see the module doc).
        params: elements of floating-point and 8-bit weight tensors.
        weight_bytes: bytes of every constant tensor.
        activation_bytes: bytes of the inputs and every computed tensor.
        macs_by_op: MACs per op type.
        notes: what was assumed or could not be counted.
    """

    macs: int
    params: int
    weight_bytes: int
    activation_bytes: int
    macs_by_op: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "params": self.params,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "macs_by_op": dict(self.macs_by_op),
            "notes": list(self.notes),
        }


def _numel(shape: Sequence[int | None] | None) -> int | None:
    if shape is None:
        return None
    dims = [d for d in shape if d is not None and d >= 0]
    return math.prod(dims) if len(dims) == len(shape) else None


def _uncounted_note(kinds: Counter[str], why: str) -> list[str]:
    return [f"MACs of {op} ({n} node{'s' if n > 1 else ''}) {why}" for op, n in sorted(kinds.items())]


# --------------------------------------------------------------------------- ONNX

_ONNX_NOT_COUNTED = {"LSTM", "GRU", "RNN", "Einsum", "Attention", "com.microsoft.Attention", "Loop", "Scan", "If"}
_PARAM_ONNX_TYPES = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16", "INT8", "UINT8", "INT4", "UINT4"}


def onnx_op_key(domain: str, op_type: str) -> str:
    """The name edgepack gives an ONNX op: ``Conv``, or ``domain.OpType`` outside ai.onnx."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def _conv(shape: Callable[[str], Shape | None], node: Any, w: int = 1) -> int | None:
    out, weight = _numel(shape(node.output[0])), shape(node.input[w])
    k = _numel(weight[1:]) if weight else None
    return out * k if out is not None and k is not None else None


def _conv_transpose(shape: Callable[[str], Shape | None], node: Any) -> int | None:
    inp, weight = _numel(shape(node.input[0])), shape(node.input[1])
    k = _numel(weight[1:]) if weight else None
    return inp * k if inp is not None and k is not None else None


def _matmul(shape: Callable[[str], Shape | None], node: Any) -> int | None:
    out, a = _numel(shape(node.output[0])), shape(node.input[0])
    k = a[-1] if a else None
    return out * k if out is not None and k is not None else None


def _gemm(shape: Callable[[str], Shape | None], node: Any) -> int | None:
    out, a = _numel(shape(node.output[0])), shape(node.input[0])
    trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
    k = (a[0] if trans_a else a[-1]) if a else None
    return out * k if out is not None and k is not None else None


_ONNX_MACS: dict[str, Callable[[Callable[[str], Shape | None], Any], int | None]] = {
    "Conv": _conv,
    "ConvInteger": _conv,
    "QLinearConv": lambda s, n: _conv(s, n, w=3),
    "com.microsoft.FusedConv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "com.microsoft.FusedGemm": _gemm,
    "MatMul": _matmul,
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "com.microsoft.FusedMatMul": _matmul,
}


def _fix_onnx_inputs(model: Any, input_shapes: Mapping[str, Sequence[int]], batch: int) -> list[str]:
    """Write static dims into the graph inputs (given shapes, else ``batch`` for a dynamic leading dim)."""
    notes = []
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    for name in sorted(set(input_shapes) - {v.name for v in inputs}):
        notes.append(f"shape given for {name}, which is not an input of the model: ignored")
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        given = input_shapes.get(value.name)
        if given is not None and len(given) != len(dims):
            notes.append(f"shape given for {value.name} has rank {len(given)}, the input has {len(dims)}: ignored")
            given = None
        for i, dim in enumerate(dims):
            if given is not None:
                dim.dim_value = int(given[i])
            elif i == 0 and not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.dim_value = batch
                notes.append(f"input {value.name}: dynamic batch counted as {batch}")
    return notes


def _onnx_shapes(model: Any) -> tuple[dict[str, Shape], dict[str, int]]:
    """Tensor name -> shape (None for unknown dims) and -> ONNX element type, from shape-inferred value infos."""
    shapes, types = {}, {}
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        types[value.name] = tensor.elem_type
    for init in graph.initializer:
        shapes[init.name], types[init.name] = tuple(init.dims), init.data_type
    return shapes, types


def _onnx_constants(model: Any) -> list[Any]:
    """Every constant tensor: initializers and the ``value`` of Constant nodes."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [attr.t for attr in node.attribute if attr.name == "value"]
    return tensors


def _onnx_itemsize(onnx: Any, elem_type: int) -> int:
    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except Exception:  # noqa: BLE001 - strings and types without a numpy twin take no counted space
        return 0


def estimate_onnx(model_proto: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None, batch: int = 1) -> Cost:
    """Cost of an ONNX model (a ``ModelProto``; it is not modified).

    Dynamic input dims are fixed from ``input_shapes``, else a dynamic leading
    dim is taken as ``batch``; MACs of layers whose shapes stay unknown are
    left out and named in ``notes``.
    """
    onnx = require("onnx")
    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    notes = _fix_onnx_inputs(model, input_shapes or {}, batch)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - a partial count is still useful
        notes.append(f"ONNX shape inference failed ({str(exc).splitlines()[0][:120]}); MACs may be incomplete")
    shapes, types = _onnx_shapes(model)
    names = {v: k for k, v in onnx.TensorProto.DataType.items()}
    params = weight_bytes = 0
    for tensor in _onnx_constants(model):
        n = math.prod(tensor.dims)
        weight_bytes += n * _onnx_itemsize(onnx, tensor.data_type)
        params += n if names.get(tensor.data_type) in _PARAM_ONNX_TYPES else 0
    constants = {t.name for t in model.graph.initializer}
    activations = [v.name for v in model.graph.input if v.name not in constants]
    macs_by_op: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type != "Constant":
            activations += list(node.output)
        key = onnx_op_key(node.domain, node.op_type)
        if key in _ONNX_MACS:
            macs = _ONNX_MACS[key](shapes.get, node)
            if macs is None:
                unknown[key] += 1
            else:
                macs_by_op[key] += macs
        elif key in _ONNX_NOT_COUNTED:
            skipped[key] += 1
    activation_bytes = sum(
        (_numel(shapes.get(name)) or 0) * _onnx_itemsize(onnx, types.get(name, 0)) for name in set(activations)
    )
    notes += _uncounted_note(unknown, "unknown: dynamic shapes") + _uncounted_note(skipped, "not counted")
    return Cost(sum(macs_by_op.values()), params, weight_bytes, activation_bytes, dict(macs_by_op), tuple(notes))


# --------------------------------------------------------------------------- TFLite

_TFLITE_NOT_COUNTED = {"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "SVDF", "RNN"}
_TFLITE_BITS = {
    "FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT64": 64, "INT64": 64, "UINT64": 64, "INT32": 32,
    "UINT32": 32, "INT16": 16, "UINT16": 16, "INT8": 8, "UINT8": 8, "BOOL": 8, "INT4": 4, "COMPLEX64": 64,
    "COMPLEX128": 128,
}  # fmt: skip
_PARAM_TFLITE_TYPES = {"FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT64", "INT8", "UINT8", "INT4"}


def tflite_schema() -> Any:
    """The TFLite flatbuffer schema module (from ai-edge-litert, else TensorFlow)."""
    for module in ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return require("ai_edge_litert.schema_py_generated")


def load_tflite(path: str | Path) -> Any:
    """Parse a .tflite file into the schema's object API (``ModelT``).

    Raises:
        ModelError: the file is not a TFLite flatbuffer.
    """
    schema = tflite_schema()
    data = Path(path).read_bytes()
    if data[4:8] != b"TFL3":
        raise ModelError(f"{path} is not a .tflite model (no TFL3 identifier).", hint="Re-export it.")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path} is a damaged .tflite model ({exc}).", hint="Re-export it.") from exc
    if (problem := _bad_tflite_index(model)) is not None:
        raise ModelError(f"{path} is a damaged .tflite model ({problem}).", hint="Re-export it.")
    return model


def _bad_tflite_index(model: Any) -> str | None:
    """The first operator, tensor or buffer index that points outside its table, else None.

    The flatbuffer parses without checking them; a bit flip in one would send every reader off the table.
    """
    if not model.subgraphs:
        return "no subgraph"
    n_codes, n_buffers = len(model.operatorCodes or ()), len(model.buffers or ())
    for k, graph in enumerate(model.subgraphs or ()):
        n_tensors = len(graph.tensors or ())
        refs = _ints(graph.inputs) + _ints(graph.outputs)
        for op in graph.operators or ():
            if not 0 <= op.opcodeIndex < n_codes:
                return f"subgraph {k}: operator code {op.opcodeIndex} of {n_codes}"
            refs += [i for i in _ints(op.inputs) + _ints(op.outputs) if i != -1]  # -1: an omitted optional input
        if bad := [i for i in refs if not 0 <= i < n_tensors]:
            return f"subgraph {k}: tensor {bad[0]} of {n_tensors}"
        if bad := [t.buffer for t in graph.tensors or () if not 0 <= t.buffer < max(n_buffers, 1)]:
            return f"subgraph {k}: buffer {bad[0]} of {n_buffers}"
    return None


def _ints(values: Any) -> list[int]:
    """A flatbuffer index vector (None, a list or a numpy array) as a list of ints."""
    return [] if values is None else [int(v) for v in values]


def tflite_op_name(schema: Any, opcode: Any) -> str:
    """Builtin name (``CONV_2D``) of an operator code, or a custom op's own name."""
    code = max(opcode.builtinCode, opcode.deprecatedBuiltinCode)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    if names.get(code) == "CUSTOM":
        custom = opcode.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom or "CUSTOM")
    return names.get(code, f"BUILTIN_{code}")


def _tflite_macs(op: str, shapes: Sequence[Shape | None], outs: Sequence[Shape | None], options: Any) -> int | None:
    """MACs of one TFLite operator from its input and output shapes (None: not computable)."""
    out = _numel(outs[0]) if outs else None
    weight = shapes[1] if len(shapes) > 1 else None
    if op == "CONV_2D" and weight:
        k = _numel(weight[1:])
    elif op == "DEPTHWISE_CONV_2D" and weight:
        k = _numel(weight[1:3])
    elif op == "CONV_3D" and weight:
        k = _numel(weight[:4])
    elif op == "FULLY_CONNECTED" and weight:
        k = weight[-1]
    elif op == "BATCH_MATMUL" and shapes[0]:
        k = shapes[0][-2] if getattr(options, "adjX", False) else shapes[0][-1]
    elif op == "TRANSPOSE_CONV" and weight and len(shapes) > 2:
        out, k = _numel(shapes[2]), _numel(weight[:3])  # each input element scatters into Cout*kh*kw outputs
    else:
        return None
    return out * k if out is not None and k is not None else None


_TFLITE_COUNTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


def estimate_tflite(path: str | Path) -> Cost:
    """Cost of a .tflite model's main subgraph (dynamic dims count as their stored size, 1)."""
    schema = tflite_schema()
    model = load_tflite(path)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    tensors = graph.tensors or []
    shapes = [tuple(int(d) for d in (t.shape if t.shape is not None else ())) for t in tensors]

    def nbytes(index: int) -> int:
        numel = _numel(shapes[index]) or 0
        return numel * _TFLITE_BITS.get(types.get(graph.tensors[index].type, ""), 0) // 8

    constant = {i for i, t in enumerate(tensors) if _has_data(model.buffers[t.buffer] if t.buffer else None)}
    params = sum(_numel(shapes[i]) or 0 for i in constant if types.get(graph.tensors[i].type) in _PARAM_TFLITE_TYPES)
    weight_bytes = sum(nbytes(i) for i in constant)
    computed = set(_ints(graph.inputs))
    macs_by_op: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for operator in graph.operators or ():
        op = tflite_op_name(schema, model.operatorCodes[operator.opcodeIndex])
        ins = [shapes[i] if i >= 0 else None for i in _ints(operator.inputs)]
        outs = [shapes[i] for i in _ints(operator.outputs)]
        computed.update(_ints(operator.outputs))
        if op in _TFLITE_COUNTED:
            macs = _tflite_macs(op, ins, outs, operator.builtinOptions)
            if macs is None:
                unknown[op] += 1
            else:
                macs_by_op[op] += macs
        elif op in _TFLITE_NOT_COUNTED:
            skipped[op] += 1
    notes = []
    if any(t.shapeSignature is not None and -1 in list(t.shapeSignature) for t in tensors):
        notes.append("dynamic dims (-1 in a shape signature) counted as their stored size (batch 1)")
    if len(model.subgraphs) > 1:
        notes.append(f"MACs of the {len(model.subgraphs) - 1} other subgraph(s) (control flow) not counted")
    notes += _uncounted_note(unknown, "unknown") + _uncounted_note(skipped, "not counted")
    activation_bytes = sum(nbytes(i) for i in computed - constant)
    return Cost(sum(macs_by_op.values()), params, weight_bytes, activation_bytes, dict(macs_by_op), tuple(notes))


def _has_data(buffer: Any) -> bool:
    if buffer is None:
        return False
    data = buffer.data
    return (data is not None and len(data) > 0) or bool(getattr(buffer, "size", 0))
