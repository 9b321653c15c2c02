"""Host runtimes: open any artifact in its own runtime, run it, time it.

One backend module per runtime, chosen by looking up :data:`BACKENDS` with the
artifact's format. Every backend returns a :class:`Session`: positional feeds
in the model's input order, outputs in the model's output order. Backends
import their framework only when a session is opened.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgepack.artifact import ModelFormat, TensorSpec, guess_layout
from edgepack.errors import DataError, ModelError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact

# The one table: model format -> backend module (each has ``open_session``).
BACKENDS: dict[ModelFormat, str] = {
    ModelFormat.KERAS: "edgepack.runtimes.tensorflow",
    ModelFormat.H5: "edgepack.runtimes.tensorflow",
    ModelFormat.SAVEDMODEL: "edgepack.runtimes.tensorflow",
    ModelFormat.TFLITE: "edgepack.runtimes.litert",
    ModelFormat.ONNX: "edgepack.runtimes.onnxruntime",
    ModelFormat.OPENVINO: "edgepack.runtimes.openvino",
    ModelFormat.TORCH: "edgepack.runtimes.pytorch",
}


@runtime_checkable
class Session(Protocol):
    """A loaded model, ready to run on the host.

    Attributes:
        inputs: Input specs in the model's input order; a dim is None only where
            neither the file nor the artifact fixes it.
        outputs: Output specs in the model's output order.
        runtime: Runtime name ("tensorflow", "litert", "onnxruntime", "openvino").
        version: Version of the runtime.
        precision: Precision the runtime computes float ops in ("f32", or the
            OpenVINO hint actually applied, e.g. "bf16").
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: str
    version: str
    precision: str

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run once on positional ``feeds``; return the outputs in order."""
        ...


def open_session(artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False) -> Session:
    """Open ``artifact`` in the runtime its format belongs to.

    Args:
        artifact: The model to open (any :class:`ModelFormat`).
        threads: Intra-op threads (benchmarks use 1). The TensorFlow backend
            leaves TensorFlow's process-wide thread pools as they are.
        precision: Inference precision hint. OpenVINO applies it ("f32", "f16",
            "bf16"); the other runtimes compute float ops in f32 and ignore it.
            ``session.precision`` says what was actually used.
        raw_outputs: Return quantized integer outputs as the model produces them
            instead of dequantizing (LiteRT int8/uint8 outputs; others ignore it).

    Returns:
        A :class:`Session`.

    Raises:
        UsageError: Bad ``threads`` or ``precision``.
        MissingDependencyError: The runtime is not installed.
        ModelError: The runtime cannot load the file.
    """
    if threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}.")
    try:
        module_name = BACKENDS[artifact.format]
    except KeyError:
        raise ModelError(f"no host runtime runs {artifact.format!s} models.") from None
    backend = importlib.import_module(module_name)
    return backend.open_session(artifact, threads=threads, precision=precision, raw_outputs=raw_outputs)


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one inference, in milliseconds."""

    median_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark(session: Session, feeds: Sequence[np.ndarray], *, warmup: int = 3, runs: int = 20) -> LatencyStats:
    """Time ``session.run(feeds)`` with :func:`time.perf_counter`.

    Args:
        session: An open session.
        feeds: Inputs in the model's input order.
        warmup: Untimed runs first (allocations, lazy compilation).
        runs: Timed runs.

    Returns:
        The latency statistics.
    """
    if runs < 1 or warmup < 0:
        raise UsageError(f"benchmark needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    for _ in range(warmup):
        session.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    ordered = sorted(times)
    return LatencyStats(
        median_ms=statistics.median(ordered),
        mean_ms=statistics.fmean(ordered),
        stdev_ms=statistics.stdev(ordered) if runs > 1 else 0.0,
        min_ms=ordered[0],
        max_ms=ordered[-1],
        p10_ms=_percentile(ordered, 10),
        p90_ms=_percentile(ordered, 90),
        runs=runs,
        warmup=warmup,
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# --------------------------------------------------------------------------- helpers for backends


def merge_specs(found: Sequence[TensorSpec], declared: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
    """Fill the dynamic dims a runtime reports with the artifact's declared static dims.

    A declared spec is matched by name, else by position when the counts agree.
    """
    by_name = {spec.name: spec for spec in declared}
    merged = []
    for i, spec in enumerate(found):
        other = by_name.get(spec.name) or (declared[i] if len(declared) == len(found) else None)
        if not spec.is_static and other is not None and len(other.shape) == len(spec.shape):
            pairs = zip(spec.shape, other.shape, strict=True)
            shape = tuple(d if isinstance(d, int) and d > 0 else o for d, o in pairs)
            spec = spec.with_shape(shape)
        merged.append(spec)
    return tuple(merged)


def make_spec(name: str, shape: Sequence[Any], dtype: Any) -> TensorSpec:
    """A TensorSpec from a runtime's description (non-positive or symbolic dims become None)."""
    import numpy as np

    dims = tuple(int(d) if isinstance(d, int | np.integer) and d > 0 else None for d in shape)
    return TensorSpec(name=name, shape=dims, dtype=np.dtype(dtype).name, layout=guess_layout(dims))


def check_feeds(specs: Sequence[TensorSpec], feeds: Sequence[Any]) -> list[np.ndarray]:
    """Check feed count and shapes against ``specs``; return the feeds as arrays (dtype unchanged)."""
    import numpy as np

    if len(feeds) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise DataError(f"the model takes {len(specs)} input(s) ({names}), got {len(feeds)}.")
    arrays = [np.asarray(f) for f in feeds]
    for spec, array in zip(specs, arrays, strict=True):
        if len(array.shape) != len(spec.shape) or any(
            d is not None and d != a for d, a in zip(spec.shape, array.shape, strict=True)
        ):
            raise DataError(
                f"input '{spec.name}' has shape {list(array.shape)}, the model wants {list(spec.shape)}.",
                hint="Give inputs of the model's shape, in its input order.",
            )
    return arrays


def cast_feed(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous array of ``spec``'s dtype (float64 -> float32 and the like)."""
    import numpy as np

    return np.require(array, dtype=spec.dtype, requirements="C")


def require_static(artifact: Artifact, specs: Sequence[TensorSpec]) -> None:
    """Raise ModelError when an input shape is still dynamic after merging the artifact's shapes."""
    dynamic = [f"{s.name} {list(s.shape)}" for s in specs if not s.is_static]
    if dynamic:
        raise ModelError(
            f"{artifact.path}: input shape(s) are dynamic: {', '.join(dynamic)}.",
            hint="Fix the input shapes (e.g. --input-shape) before running the model.",
        )
