"""TensorFlow backend: Keras models (.keras, .h5, loaded in safe mode) and SavedModels (serving signature)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack import deps
from edgepack.artifact import ModelFormat, TensorSpec
from edgepack.errors import ModelError
from edgepack.runtimes import cast_feed, check_feeds, make_spec, merge_specs

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact

SIGNATURE = "serving_default"


class TensorFlowSession:
    """A Keras model or a SavedModel signature, run eagerly."""

    runtime = "tensorflow"
    precision = "f32"

    def __init__(
        self,
        call: Callable[[list[np.ndarray]], list[np.ndarray]],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        version: str,
    ) -> None:
        self._call = call
        self.inputs = inputs
        self.outputs = outputs
        self.version = version

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = [cast_feed(s, a) for s, a in zip(self.inputs, check_feeds(self.inputs, feeds), strict=True)]
        try:
            return self._call(arrays)
        except Exception as exc:  # TensorFlow raises many unrelated types
            raise ModelError(f"TensorFlow failed to run the model: {_first_line(exc)}") from exc


def open_session(
    artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False
) -> TensorFlowSession:
    """Open a Keras file or a SavedModel folder.

    ``threads``, ``precision`` and ``raw_outputs`` are accepted for a uniform
    interface; TensorFlow's thread pools are process-wide and set once, so
    this backend (used as the reference, not benchmarked) leaves them alone.
    """
    del threads, precision, raw_outputs
    tf = deps.require("tensorflow")
    version = f"{tf.__version__}"
    if artifact.format is ModelFormat.SAVEDMODEL:
        return _open_savedmodel(artifact, tf, version)
    keras = deps.require("keras")
    model = _load_keras_model(Path(artifact.path), artifact.format)
    inputs = artifact.inputs
    if getattr(model, "inputs", None):
        inputs = merge_specs([make_spec(t.name, t.shape, _dtype(t)) for t in model.inputs], artifact.inputs)
    outputs = artifact.outputs
    if getattr(model, "outputs", None):
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(model.outputs):
            names = [t.name for t in model.outputs]
        found = [make_spec(n, t.shape, _dtype(t)) for n, t in zip(names, model.outputs, strict=True)]
        outputs = merge_specs(found, artifact.outputs)

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
        return [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(result)]

    return TensorFlowSession(call, inputs, outputs, f"{version} (keras {keras.__version__})")


def _load_keras_model(path: Path, fmt: ModelFormat) -> Any:
    """Load a .keras/.h5 file in Keras safe mode (no code from the file runs); ModelError if it cannot."""
    from edgepack.modelio import load_keras

    return load_keras(path, fmt, trust_code=False)


def _dtype(tensor: Any) -> Any:
    """A Keras tensor's dtype as numpy understands it (Keras 3 gives a name, tf_keras a tf.DType)."""
    return getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype)


def _open_savedmodel(artifact: Artifact, tf: Any, version: str) -> TensorFlowSession:
    try:
        loaded = tf.saved_model.load(str(artifact.path))
    except Exception as exc:  # protobuf and OS errors
        raise ModelError(
            f"{artifact.path}: cannot load it as a SavedModel ({_first_line(exc)}).",
            hint="Check that the folder holds saved_model.pb and variables/.",
        ) from exc
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if SIGNATURE not in signatures:
        raise ModelError(
            f"{artifact.path}: the SavedModel has no '{SIGNATURE}' signature (has: {', '.join(signatures) or 'none'}).",
            hint="Export the model with a serving signature (keras: model.export(path)).",
        )
    fn = signatures[SIGNATURE]
    in_sig = fn.structured_input_signature[1]
    out_sig = fn.structured_outputs
    in_names = _ordered(list(in_sig), artifact.inputs)
    out_names = _ordered(list(out_sig), artifact.outputs)
    inputs = merge_specs(
        [make_spec(n, in_sig[n].shape.as_list(), in_sig[n].dtype.as_numpy_dtype) for n in in_names], artifact.inputs
    )
    outputs = merge_specs(
        [make_spec(n, out_sig[n].shape.as_list(), out_sig[n].dtype.as_numpy_dtype) for n in out_names],
        artifact.outputs,
    )

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = fn(**{n: tf.constant(a) for n, a in zip(in_names, arrays, strict=True)})
        return [result[n].numpy() for n in out_names]

    return TensorFlowSession(call, inputs, outputs, version)


def _ordered(names: list[str], declared: Sequence[TensorSpec]) -> list[str]:
    """Signature keys in the artifact's order when the names agree, else sorted (a signature is a dict)."""
    declared_names = [s.name for s in declared]
    return declared_names if sorted(declared_names) == sorted(names) else sorted(names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
