"""The pipeline's steps and the typed options each step reads from a profile's ``[step_options.STEP]``.

Also the emulation modes a profile names. Kept apart from :mod:`edgepack.profiles`, which loads and
validates whole profiles, so that the step vocabulary has one small home.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EmulationMode(str, enum.Enum):
    """How a target's device check runs: emulated ARM user space, this host's CPU, or not at all."""

    QEMU_USER = "qemu-user"
    NATIVE = "native"
    NONE = "none"

    def __str__(self) -> str:  # the value in messages and f-strings, as a plain string would print
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Step(str, enum.Enum):
    """Pipeline steps, in the only order they may run."""

    COMPRESS = "compress"
    CONVERT = "convert"
    SIMPLIFY = "simplify"
    QUANTIZE = "quantize"
    VALIDATE = "validate"
    DEVICE_CHECK = "device-check"
    BUNDLE = "bundle"


STEP_ORDER = list(Step)

class ConvertSettings(BaseModel):
    """``[step_options.convert]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    select_tf_ops: bool = False  # let TFLiteConverter fall back to TensorFlow ops (needs the Flex delegate)
    compress_to_fp16: bool = False  # OpenVINO IR weights stored in fp16


class SimplifySettings(BaseModel):
    """``[step_options.simplify]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    tool: Literal["auto", "onnxsim", "onnxslim"] = "auto"


class QuantizeSettings(BaseModel):
    """``[step_options.quantize]``: the histogram of entropy / percentile calibration (ONNX Runtime)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    num_bins: int | None = Field(default=None, ge=16, le=1 << 16)
    num_quantized_bins: int | None = Field(default=None, ge=16, le=1 << 16)
    percentile: float | None = Field(default=None, gt=50, le=100)


class CompressSettings(BaseModel):
    """``[step_options.compress]``: the compression methods, each a table of its settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    distill: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None


class NoSettings(BaseModel):
    """A step that takes no options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


StepSettings = ConvertSettings | SimplifySettings | QuantizeSettings | CompressSettings | NoSettings

# The typed options each step reads from ``[step_options.STEP]``; anything else is a typo and refused.
STEP_SETTINGS: dict[str, type[BaseModel]] = {
    Step.COMPRESS.value: CompressSettings,
    Step.CONVERT.value: ConvertSettings,
    Step.SIMPLIFY.value: SimplifySettings,
    Step.QUANTIZE.value: QuantizeSettings,
    Step.VALIDATE.value: NoSettings,
    Step.DEVICE_CHECK.value: NoSettings,
    Step.BUNDLE.value: NoSettings,
}
STEP_OPTIONS: dict[str, tuple[str, ...]] = {step: tuple(model.model_fields) for step, model in STEP_SETTINGS.items()}
