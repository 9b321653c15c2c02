"""OpenVINO backend: IR (.xml + .bin) compiled for the CPU plugin.

The CPU plugin's default inference precision is bf16 on CPUs that have it
(76% top-1 agreement on MobileNetV2 here), so the precision hint is always set,
f32 by default, and the precision the compiled model reports is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgepack import deps
from edgepack.errors import ModelError, UsageError
from edgepack.runtimes import cast_feed, check_feeds, make_spec, merge_specs, require_static

if TYPE_CHECKING:
    import numpy as np

    from edgepack.artifact import Artifact

DEVICE = "CPU"
PRECISIONS = ("f32", "f16", "bf16")


class OpenVINOSession:
    """A model compiled for OpenVINO's CPU plugin, with one infer request."""

    runtime = "openvino"

    def __init__(self, compiled: Any, version: str, precision: str, declared: Artifact) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.version = version
        self.precision = precision
        self.inputs = merge_specs([_spec(p) for p in compiled.inputs], declared.inputs)
        self.outputs = merge_specs([_spec(p) for p in compiled.outputs], declared.outputs)

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        arrays = [cast_feed(s, a) for s, a in zip(self.inputs, check_feeds(self.inputs, feeds), strict=True)]
        try:
            self._request.infer(arrays)
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO failed to run the model: {exc}") from exc
        # Output tensors are views into the request's buffers: copy before the next run.
        return [np.array(self._request.get_output_tensor(i).data) for i in range(len(self.outputs))]


def open_session(
    artifact: Artifact, *, threads: int = 1, precision: str = "f32", raw_outputs: bool = False
) -> OpenVINOSession:
    """Read an IR, fix dynamic inputs to the artifact's shapes and compile it for the CPU.

    Args:
        artifact: An OpenVINO IR artifact (``path`` is the .xml).
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``INFERENCE_PRECISION_HINT``: "f32" (default), "f16" or "bf16".
        raw_outputs: Ignored (IR models keep float I/O).
    """
    del raw_outputs
    if precision not in PRECISIONS:
        raise UsageError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    ov = deps.require("openvino")
    core = ov.Core()
    try:
        model = core.read_model(str(artifact.path))
    except RuntimeError as exc:
        raise ModelError(
            f"{artifact.path}: OpenVINO cannot read it ({_first_line(exc)}).",
            hint="Check that the .xml and its .bin beside it are complete OpenVINO IR files.",
        ) from exc
    _reshape_dynamic_inputs(model, artifact)
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if precision == "f32":
        config.update(exact_f32_config(core))
    try:
        compiled = core.compile_model(model, DEVICE, config)
    except RuntimeError as exc:
        raise ModelError(f"{artifact.path}: OpenVINO cannot compile it for {DEVICE} ({_first_line(exc)}).") from exc
    used = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    version = deps.version_of("openvino") or ov.get_version()
    return OpenVINOSession(compiled, version, used, artifact)


def exact_f32_config(core: Any) -> dict[str, Any]:
    """What f32 also needs on the CPU plugin: no dynamic quantization of activations.

    Since 2024 the CPU plugin quantizes a MatMul's activations to int8 on the fly when its weights are
    stored compressed (int8 weights behind a Convert/Multiply, as in a weight-quantized MiniLM), even under
    ``INFERENCE_PRECISION_HINT = f32``: an all-MiniLM-L6 with int8 weights differed from ONNX Runtime by
    0.61 in its hidden states, and by 9e-5 with ``DYNAMIC_QUANTIZATION_GROUP_SIZE = 0``. Plugins that lack
    the property get nothing.
    """
    supported = core.get_property(DEVICE, "SUPPORTED_PROPERTIES")
    return {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0} if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in supported else {}


def _reshape_dynamic_inputs(model: Any, artifact: Artifact) -> None:
    found = [_spec(p) for p in model.inputs]
    if all(s.is_static for s in found):
        return
    wanted = merge_specs(found, artifact.inputs)
    require_static(artifact, wanted)
    try:
        model.reshape({port: list(spec.shape) for port, spec in zip(model.inputs, wanted, strict=True)})
    except RuntimeError as exc:
        raise ModelError(f"{artifact.path}: cannot fix its input shapes to the artifact's ({exc}).") from exc


def _spec(port: Any) -> Any:
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    names = port.get_names()
    name = port.get_any_name() if names else f"port{port.get_index()}"
    return make_spec(name, dims, port.get_element_type().to_dtype())


def _precision_name(value: Any) -> str:
    """OpenVINO element type (Type 'float32', 'bfloat16', ...) as f32/bf16/f16."""
    text = str(getattr(value, "get_type_name", lambda: value)())
    return {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}.get(
        text, text
    )


def _first_line(exc: BaseException) -> str:
    """The first informative line of an OpenVINO error (it opens with "Exception from <file>" lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from ")]
    return (useful or lines or [type(exc).__name__])[0]
