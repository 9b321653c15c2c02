"""Model conversion: which formats to go through, and one hop at a time.

``route(src, dst)`` reads the chain of formats from one table; ``convert_once``
does one hop, looked up in a second table of ``(from, to) -> converter``. Every
hop writes into its own work folder and returns an Artifact whose input shapes
are the source's static shapes and whose ``meta`` names the tool and its version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepack.artifact import Artifact, ModelFormat
from edgepack.convert import keras_tflite, onnx_fix, onnx_openvino, onnx_tflite, tf_onnx, torch_onnx
from edgepack.errors import UsageError
from edgepack.shapes import InputShape

__all__ = ["ConvertOptions", "convert", "convert_once", "route"]

_PRECISIONS = ("fp32", "fp16")
_MIN_OPSET = 7


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert (hashable, so a pipeline can memoise hops on it).

    Attributes:
        opset: ONNX opset to write or cap at (None: the converter's default, 17 for tf2onnx).
        precision: "fp32", or "fp16" for fp16 weights where the target format has them (.tflite).
        compress_to_fp16: store OpenVINO IR weights in fp16.
        select_tf_ops: let TFLiteConverter fall back to TensorFlow ops (needs the Flex delegate).
        trust_code: load Keras models that hold Python code (Lambda layers).
        shape_ranges: inputs whose dims stay dynamic (min/opt/max), for a runtime that runs dynamic shapes;
            empty: every dim is fixed at the source's static (opt) shape.
    """

    opset: int | None = None
    precision: str = "fp32"
    compress_to_fp16: bool = False
    select_tf_ops: bool = False
    trust_code: bool = False
    shape_ranges: tuple[InputShape, ...] = ()

    def __post_init__(self) -> None:
        precision = getattr(self.precision, "value", self.precision)
        if precision not in _PRECISIONS:
            raise UsageError(
                f"conversion precision {precision!r} is not one of {', '.join(_PRECISIONS)}.",
                hint="int8 comes from the quantize step; convert in fp32.",
            )
        object.__setattr__(self, "precision", precision)
        if self.opset is not None and (isinstance(self.opset, bool) or self.opset < _MIN_OPSET):
            raise UsageError(f"ONNX opset {self.opset!r} is too old.", hint=f"Use an opset >= {_MIN_OPSET}.")


Hop = Callable[[Artifact, Path, ConvertOptions], Artifact]
F = ModelFormat

# (from, to) -> formats to go through, in order. Same-format pairs other than ONNX need no hop;
# ONNX -> ONNX fixes dynamic shapes and caps the opset.
ROUTES: dict[tuple[ModelFormat, ModelFormat], tuple[ModelFormat, ...]] = {
    (F.KERAS, F.TFLITE): (F.TFLITE,),
    (F.H5, F.TFLITE): (F.TFLITE,),
    (F.SAVEDMODEL, F.TFLITE): (F.TFLITE,),
    (F.KERAS, F.ONNX): (F.ONNX,),
    (F.H5, F.ONNX): (F.ONNX,),
    (F.SAVEDMODEL, F.ONNX): (F.ONNX,),
    (F.KERAS, F.OPENVINO): (F.ONNX, F.OPENVINO),
    (F.H5, F.OPENVINO): (F.ONNX, F.OPENVINO),
    (F.SAVEDMODEL, F.OPENVINO): (F.ONNX, F.OPENVINO),
    (F.ONNX, F.ONNX): (F.ONNX,),
    (F.ONNX, F.TFLITE): (F.TFLITE,),
    (F.ONNX, F.OPENVINO): (F.OPENVINO,),
    (F.TFLITE, F.TFLITE): (),
    (F.TFLITE, F.ONNX): (F.ONNX,),
    (F.TFLITE, F.OPENVINO): (F.OPENVINO,),
    (F.TORCH, F.ONNX): (F.ONNX,),
    (F.TORCH, F.TFLITE): (F.ONNX, F.TFLITE),
    (F.TORCH, F.OPENVINO): (F.ONNX, F.OPENVINO),
}

# (from, to) -> the converter for that one hop.
HOPS: dict[tuple[ModelFormat, ModelFormat], Hop] = {
    (F.KERAS, F.TFLITE): keras_tflite.convert,
    (F.H5, F.TFLITE): keras_tflite.convert,
    (F.SAVEDMODEL, F.TFLITE): keras_tflite.convert,
    (F.KERAS, F.ONNX): tf_onnx.convert,
    (F.H5, F.ONNX): tf_onnx.convert,
    (F.SAVEDMODEL, F.ONNX): tf_onnx.convert,
    (F.TFLITE, F.ONNX): tf_onnx.convert,
    (F.ONNX, F.ONNX): onnx_fix.convert,
    (F.ONNX, F.TFLITE): onnx_tflite.convert,
    (F.ONNX, F.OPENVINO): onnx_openvino.convert,
    (F.TFLITE, F.OPENVINO): onnx_openvino.convert,
    (F.TORCH, F.ONNX): torch_onnx.convert,
}


def route(src: ModelFormat, dst: ModelFormat) -> list[ModelFormat]:
    """The formats to convert through, in order, from ``src`` to ``dst`` (``[]``: nothing to do).

    Raises:
        UsageError: edgepack has no way from ``src`` to ``dst``.
    """
    chain = ROUTES.get((ModelFormat(src), ModelFormat(dst)))
    if chain is None:
        raise UsageError(
            f"edgepack cannot convert {ModelFormat(src).value} models to {ModelFormat(dst).value}.",
            hint="Start from a .keras, .h5, SavedModel, .onnx, .tflite or PyTorch .pt2 model.",
        )
    return list(chain)


def convert_once(src: Artifact, dst: ModelFormat, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert ``src`` to ``dst`` in one hop, writing into ``workdir``.

    Raises:
        UsageError: there is no direct converter from ``src.format`` to ``dst`` (use :func:`route`).
        ModelError: the source cannot be read.
        ConversionError: the converter fails.
        MissingDependencyError: the converter's framework is not installed.
    """
    hop = HOPS.get((src.format, ModelFormat(dst)))
    if hop is None:
        raise UsageError(
            f"no direct conversion from {src.format.value} to {ModelFormat(dst).value}.",
            hint="Follow edgepack.convert.route(), which may go through ONNX.",
        )
    return hop(src, Path(workdir), options)


def convert(src: Artifact, dst: ModelFormat, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert along :func:`route`, one sub-folder of ``workdir`` per hop; ``src`` itself when no hop is needed."""
    current = src
    for index, fmt in enumerate(route(src.format, dst)):
        current = convert_once(current, fmt, Path(workdir) / f"{index:02d}-{fmt.value}", options)
    return current
