"""Judge a compressed model by what it buys: file and gzip sizes, parameters, MACs, accuracy, host latency.

MACs of a Keras model are counted from its layers (Conv, depthwise and
separable Conv, Dense) at batch 1; of an ONNX model with
:func:`edgepack.macs.estimate_onnx`. Latency is measured the way the target
runs it: a Keras model is exported to an fp32 ``.tflite`` and timed in LiteRT,
an ONNX model in ONNX Runtime, each with one thread.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.artifact import Artifact, ModelFormat
from edgepack.compress.model_io import Samples
from edgepack.compress.report import LatencyChange, ModelStats

ARCHIVE_LEVEL = 9
LATENCY_RUNS = 30
LATENCY_WARMUP = 5
# Layer classes whose MACs are (output positions) x (kernel elements); transposed convs use input positions.
_OUT_POSITIONS = {
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Dense",
}
_IN_POSITIONS = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}


def archive_bytes(path: Path) -> int:
    """Size of the file gzip-compressed at level 9 (mtime 0): zeros and repeats compress, dense floats do not."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=ARCHIVE_LEVEL, mtime=0))


def weight_name(variable: Any) -> str:
    """A Keras weight's short name (``kernel``), for Keras 3 and tf_keras alike."""
    return str(variable.name).split("/")[-1].split(":")[0]


def keras_layers(model: Any) -> list[Any]:
    """Every leaf layer of a Keras model, nested models flattened, in order."""
    found = []
    for layer in model.layers:
        found.extend(keras_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer])
    return found


def keras_params(model: Any) -> tuple[int, int]:
    """(weight elements, non-zero weight elements) over every weight of the model."""
    arrays = model.get_weights()
    return sum(int(a.size) for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def _positions(shape: Any) -> int | None:
    dims = tuple(shape)[1:-1]
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def keras_macs(model: Any) -> int | None:
    """Multiply-accumulates of one sample through the model's Conv and Dense layers (None if a shape is dynamic)."""
    total = 0
    for layer in keras_layers(model):
        cls = type(layer).__name__
        if cls not in _OUT_POSITIONS and cls not in _IN_POSITIONS:
            continue
        kernel = sum(int(np.prod(w.shape)) for w in layer.weights if weight_name(w).endswith("kernel"))
        positions = _positions(layer.output.shape if cls in _OUT_POSITIONS else layer.input.shape)
        if positions is None:
            return None
        total += positions * kernel
    return total


def onnx_params_macs(path: Path) -> tuple[int, int, int | None]:
    """(params, non-zero params, MACs) of an ONNX file."""
    from edgepack.deps import require
    from edgepack.macs import estimate_onnx

    onnx = require("onnx")
    model = onnx.load(str(path))
    numpy_helper = onnx.numpy_helper
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    floats = [a for a in arrays if a.dtype.kind == "f"]
    cost = estimate_onnx(model)
    return sum(a.size for a in floats), sum(int(np.count_nonzero(a)) for a in floats), cost.macs


def top1(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of a classifier output ``[N, C]`` against labels (None without labels or classes)."""
    if labels is None or outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(outputs, axis=1) == labels.reshape(-1)))


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float | None:
    """Share of samples whose top-1 class matches the reference model's (None for non-classifiers)."""
    from edgepack.validate import top1_agreement

    return top1_agreement(reference, outputs)


def model_stats(
    path: Path,
    fmt: ModelFormat,
    *,
    model: Any = None,
    outputs: np.ndarray | None = None,
    samples: Samples | None = None,
    reference: np.ndarray | None = None,
) -> ModelStats:
    """Facts of a saved model: sizes, params, MACs and, given its outputs on ``samples``, accuracy/agreement.

    Args:
        path: The saved model file.
        fmt: Its format.
        model: The loaded Keras model (for Keras formats).
        outputs: The model's first output on ``samples``.
        samples: The evaluation samples (labels give accuracy).
        reference: The reference model's outputs on ``samples`` (gives agreement).
    """
    if fmt is ModelFormat.ONNX:
        params, nonzero, macs = onnx_params_macs(path)
    else:
        (params, nonzero), macs = keras_params(model), keras_macs(model)
    accuracy = agree = None
    if outputs is not None and samples is not None:
        accuracy = top1(outputs, samples.labels)
        agree = agreement(outputs, reference) if reference is not None else None
    return ModelStats(
        format=fmt.value,
        file_bytes=path.stat().st_size,
        archive_bytes=archive_bytes(path),
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        accuracy=accuracy,
        agreement=agree,
        eval_samples=len(samples) if outputs is not None and samples is not None else 0,
    )


def _feeds(artifact: Artifact) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # The artifacts timed here have static inputs; a dynamic dim (None) would be timed at 1.
    shapes = [tuple(1 if d is None else d for d in spec.shape) for spec in artifact.inputs]
    return [rng.random(shape, dtype=np.float32).astype(spec.dtype) for shape, spec in zip(shapes, artifact.inputs)]


def _tflite_of(model: Any, artifact: Artifact, workdir: Path, name: str) -> Artifact:
    """Export a Keras model to an fp32 ``.tflite`` (batch 1) for timing."""
    from edgepack.convert.keras_tflite import fixed_keras_model
    from edgepack.deps import require
    from edgepack.tools import run_tool

    tf = require("tensorflow")

    def export() -> bytes:
        return tf.lite.TFLiteConverter.from_keras_model(fixed_keras_model(model, artifact.inputs)).convert()

    flatbuffer = run_tool(export, failure=f"cannot export {name} to .tflite for timing", hint="Pass latency=False.")
    path = workdir / f"{name}.tflite"
    path.write_bytes(flatbuffer)
    return Artifact.from_file(path, ModelFormat.TFLITE, artifact.inputs, artifact.outputs)


def host_latency(pairs: list[tuple[Artifact, Any]], workdir: Path) -> tuple[str, list[float]]:
    """Median latency (ms) of each (artifact, Keras model or None) pair, one thread, in the target's runtime.

    Keras models are exported to ``.tflite`` first (into ``workdir``); ONNX models run as they are.
    Returns the runtime name and the medians in order.
    """
    from edgepack.runtimes import benchmark, open_session

    runtime, medians = "", list[float]()
    for i, (artifact, model) in enumerate(pairs):
        timed = _tflite_of(model, artifact, workdir, f"model{i}") if model is not None else artifact
        session = open_session(timed, threads=1)
        stats = benchmark(session, _feeds(timed), warmup=LATENCY_WARMUP, runs=LATENCY_RUNS)
        runtime, medians = session.runtime, [*medians, stats.median_ms]
    return runtime, medians


def latency_change(before: tuple[Artifact, Any], after: tuple[Artifact, Any], workdir: Path) -> LatencyChange:
    """Host latency of the original and the compressed model, measured back to back."""
    runtime, (before_ms, after_ms) = host_latency([before, after], workdir)
    return LatencyChange(runtime=runtime, threads=1, runs=LATENCY_RUNS, before_ms=before_ms, after_ms=after_ms)
