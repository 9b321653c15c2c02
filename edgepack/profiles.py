"""Target profiles: TOML data files loaded into frozen, typed values.

A profile says what a device needs (model format, runtime, precision, the
ordered steps and their options, tolerances, emulation settings and device
facts). ``extends = "NAME"`` (or a path) takes a built-in or another file as
the base and overrides a few keys: tables merge key by key, everything else
is replaced.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgepack.artifact import ModelFormat
from edgepack.errors import ProfileError
from edgepack.resources import targets_dir
from edgepack.steps import (  # noqa: F401 - re-exported: profiles are read with these names
    STEP_OPTIONS,
    STEP_ORDER,
    STEP_SETTINGS,
    CompressSettings,
    ConvertSettings,
    EmulationMode,
    NoSettings,
    QuantizeSettings,
    SimplifySettings,
    Step,
    StepSettings,
)


class Runtime(str, enum.Enum):
    LITERT = "litert"
    TFLITE_RUNTIME = "tflite-runtime"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class Arch(str, enum.Enum):
    AARCH64 = "aarch64"
    ARMV7L = "armv7l"
    X86_64 = "x86_64"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # full-integer post-training quantization, calibrated on the user's data
    DYNAMIC = "dynamic"  # LiteRT dynamic-range: int8 weights, float activations


# Runtime -> model format it runs.
RUNTIME_FORMAT = {
    Runtime.LITERT: ModelFormat.TFLITE,
    Runtime.TFLITE_RUNTIME: ModelFormat.TFLITE,
    Runtime.ONNXRUNTIME: ModelFormat.ONNX,
    Runtime.OPENVINO: ModelFormat.OPENVINO,
    Runtime.TENSORRT: ModelFormat.ONNX,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False)


class Accuracy(_Strict):
    """Tolerances of an artifact against its source model."""

    max_abs_error: float = Field(default=1e-3, gt=0)
    min_cosine: float = Field(default=0.999, ge=-1, le=1)
    min_top1_agreement: float = Field(default=0.99, ge=0, le=1)
    int8_min_relative_accuracy: float = Field(default=0.99, ge=0, le=1)
    int8_min_top1_agreement: float = Field(default=0.99, ge=0, le=1)


class Quantize(_Strict):
    """Post-training quantization settings (``[step_options.quantize]`` holds backend extras)."""

    method: str = Field(default="minmax", pattern="^(minmax|entropy|percentile)$")
    per_channel: bool = True
    symmetric_activations: bool = False
    io: str = Field(default="float", pattern="^(float|int8|uint8)$")
    samples: int = Field(default=128, ge=1)
    holdout: float = Field(default=0.25, gt=0, lt=1)
    max_float_layers: int = Field(default=8, ge=0)
    must_be_faster: bool = False


class Latency(_Strict):
    """Latency budget (applies to the device estimate) and how to time."""

    budget_ms: float | None = Field(default=None, gt=0)
    threads: int = Field(default=1, ge=1)
    warmup: int = Field(default=3, ge=0)
    runs: int = Field(default=20, ge=1)


class Emulation(_Strict):
    """How the device is emulated; ``mode = "none"`` with a reason when it cannot be."""

    mode: EmulationMode = EmulationMode.QEMU_USER
    reason: str = ""
    qemu_arch: str | None = Field(default=None, pattern="^(aarch64|arm)$")
    qemu_cpu: str | None = None
    debian_release: str = "bookworm"
    debian_arch: str | None = Field(default=None, pattern="^(arm64|armhf|amd64)$")
    python: str = "3.11"
    debs: tuple[str, ...] = ()
    wheels: tuple[str, ...] = ()
    # Under emulation an inference's instruction count is deterministic: one counted inference says all
    # that repetitions would (timed repetitions run only on real devices). The validation samples run
    # first in the same process and warm the runtime up, so no separate warm-up is needed by default.
    warmup: int = Field(default=0, ge=0)
    runs: int = Field(default=1, ge=1)
    samples: int | None = Field(default=None, ge=1)  # cap on the validation samples checked under emulation
    # Count the first sample's (cold) inference instead of running another; unset: for models of at
    # least edgepack.checkplan.COUNT_FIRST_MACS, where a second emulated inference costs minutes.
    count_first: bool | None = None
    timeout_s: float = Field(default=1800, gt=0)  # an emulated run is stopped after this long

    @model_validator(mode="after")
    def _qemu_needs_cpu(self) -> Emulation:
        if self.mode is EmulationMode.QEMU_USER and not (self.qemu_arch and self.qemu_cpu and self.debian_arch):
            raise ValueError("emulation.mode = 'qemu-user' needs qemu_arch, qemu_cpu and debian_arch")
        if self.mode is EmulationMode.NONE and not self.reason:
            raise ValueError("emulation.mode = 'none' needs a reason")
        return self


class Device(_Strict):
    """Facts about the device, used for estimates and shown in reports."""

    name: str
    cores: int = Field(ge=1)
    clock_ghz: float = Field(gt=0)
    ram_gb: float = Field(gt=0)
    cpu: str = ""
    peak_gflops: float | None = Field(default=None, gt=0)
    mem_bandwidth_gbs: float | None = Field(default=None, gt=0)
    ipc: float | None = Field(default=None, gt=0)
    # Multiplicative band of ``ipc``: the effective value lies in [ipc/u, ipc*u] (docs/latency.md).
    ipc_uncertainty: float | None = Field(default=None, ge=1)
    # Amdahl parallel fraction p of multi-thread runs on this board, and the band [low, high] it spans
    # in published 1- vs n-thread runs (docs/latency.md); unset: the generic 0.75 in [0.4, 0.95].
    parallel_fraction: float | None = Field(default=None, ge=0, le=1)
    parallel_fraction_range: tuple[float, float] | None = None
    # Fail the device check (DelegationError, exit 13) when an operator falls back from the delegate,
    # or when an int8 bundle does not run int8 kernels.
    require_delegation: bool = False
    require_int8: bool = False

    @model_validator(mode="after")
    def _fraction_in_range(self) -> Device:
        band = self.parallel_fraction_range
        if band is not None and not 0 <= band[0] <= band[1] <= 1:
            raise ValueError("parallel_fraction_range must be [low, high] with 0 <= low <= high <= 1")
        if band is not None and self.parallel_fraction is not None and not band[0] <= self.parallel_fraction <= band[1]:
            raise ValueError("parallel_fraction must lie inside parallel_fraction_range")
        return self


class Inputs(_Strict):
    """How dynamic input dimensions are fixed when the user gives no ``--input-shape``."""

    batch: int | None = Field(default=1, ge=1)
    # Per input: sizes, with "[min:opt:max]" (or a [min, opt, max] list) for a dim that stays dynamic where
    # the runtime runs it, e.g. x = "1,3,48,[32:320:1024]"; --input-shape flags win over these.
    shapes: dict[str, str | tuple[int | tuple[int, int, int], ...]] = Field(default_factory=dict)
    # How images in a --data folder become inputs (edgepack.calibration.Preprocess keys: size, layout,
    # channel_order, scale, mean, std, dtype); a preprocess.toml beside the data or --preprocess wins.
    preprocess: dict[str, Any] | None = None

    @field_validator("shapes")
    @classmethod
    def _shapes_parse(cls, shapes: dict[str, Any]) -> dict[str, Any]:
        from edgepack.errors import UsageError
        from edgepack.shapes import InputShape

        for name, value in shapes.items():
            try:
                InputShape.from_value(name, value, flag=f"[inputs.shapes] {name}")
            except UsageError as exc:
                raise ValueError(exc.one_line()) from None
        return shapes


class TensorRT(_Strict):
    """JetPack -> TensorRT -> highest ONNX opset the parser takes."""

    jetpack: str
    jetpack_tensorrt: dict[str, str]
    tensorrt_max_opset: dict[str, Annotated[int, Field(ge=7, le=30)]]
    workspace_mib: int = Field(default=1024, ge=64)

    @model_validator(mode="after")
    def _mapping_is_complete(self) -> TensorRT:
        if self.jetpack not in self.jetpack_tensorrt:
            raise ValueError(f"tensorrt.jetpack {self.jetpack!r} is not in tensorrt.jetpack_tensorrt")
        for jp, trt in self.jetpack_tensorrt.items():
            if trt not in self.tensorrt_max_opset:
                raise ValueError(f"TensorRT {trt} (JetPack {jp}) has no entry in tensorrt.tensorrt_max_opset")
        return self

    @property
    def tensorrt_version(self) -> str:
        return self.jetpack_tensorrt[self.jetpack]

    @property
    def max_opset(self) -> int:
        return self.tensorrt_max_opset[self.tensorrt_version]


class Profile(_Strict):
    """One resolved target profile."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    format: ModelFormat
    runtime: Runtime
    runtime_version: str
    arch: Arch
    precision: Precision = Precision.FP32
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    delegate: str = Field(default="cpu", pattern="^(cpu|xnnpack|gpu)$")
    opset: int | None = Field(default=None, ge=7, le=30)
    steps: tuple[Step, ...]
    step_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    accuracy: Accuracy = Accuracy()
    latency: Latency = Latency()
    quantize: Quantize = Quantize()
    emulation: Emulation
    device: Device
    inputs: Inputs = Inputs()
    tensorrt: TensorRT | None = None
    source: str = ""

    @field_validator("steps")
    @classmethod
    def _steps_in_order(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        positions = [STEP_ORDER.index(s) for s in steps]
        if positions != sorted(positions) or len(set(steps)) != len(steps):
            raise ValueError("steps must be unique and in the order " + ", ".join(s.value for s in STEP_ORDER))
        return steps

    @field_validator("step_options")
    @classmethod
    def _options_name_steps(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for step, values in options.items():
            if step not in STEP_OPTIONS:
                raise ValueError(f"unknown step {step!r} (known: {', '.join(sorted(STEP_OPTIONS))})")
            unknown = sorted(set(values) - set(STEP_OPTIONS[step]))
            if unknown:
                known = ", ".join(STEP_OPTIONS[step]) or "none"
                close = difflib.get_close_matches(unknown[0], STEP_OPTIONS[step], n=1)
                guess = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for step {step!r} (known: {known}){guess}")
            try:
                STEP_SETTINGS[step].model_validate(values)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"step_options.{step}.{where}: {first['msg']}") from None
        return options

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if RUNTIME_FORMAT[self.runtime] is not self.format:
            raise ValueError(
                f"runtime {self.runtime.value!r} runs {RUNTIME_FORMAT[self.runtime].value}, not {self.format.value}"
            )
        if self.runtime is Runtime.TENSORRT and self.tensorrt is None:
            raise ValueError("a tensorrt runtime needs a [tensorrt] table")
        if self.precision not in self.precisions:
            raise ValueError(
                f"precision {self.precision.value!r} is not in precisions {[p.value for p in self.precisions]}"
            )
        return self

    @property
    def target_opset(self) -> int | None:
        """Highest ONNX opset the device takes (TensorRT's limit, else ``opset``)."""
        if self.tensorrt is not None:
            return min(self.tensorrt.max_opset, self.opset or self.tensorrt.max_opset)
        return self.opset

    def options(self, step: Step | str) -> dict[str, Any]:
        """The raw ``[step_options.STEP]`` table (as written; see :meth:`settings` for typed values)."""
        return dict(self.step_options.get(Step(step).value, {}))

    def settings(self, step: Step | str) -> Any:
        """The step's options as its typed, frozen settings model (defaults filled in)."""
        value = Step(step).value
        return STEP_SETTINGS[value].model_validate(self.step_options.get(value, {}))

    @property
    def convert_settings(self) -> ConvertSettings:
        settings: ConvertSettings = self.settings(Step.CONVERT)
        return settings

    @property
    def simplify_settings(self) -> SimplifySettings:
        settings: SimplifySettings = self.settings(Step.SIMPLIFY)
        return settings

    @property
    def quantize_settings(self) -> QuantizeSettings:
        settings: QuantizeSettings = self.settings(Step.QUANTIZE)
        return settings

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def sha256(self) -> str:
        """Digest of the resolved profile (not of its file), stable across machines."""
        data = self.to_dict()
        data.pop("source", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def load_profile(target: str | Path, *, overrides: dict[str, Any] | None = None) -> Profile:
    """Load a built-in profile by name, or a user's profile from a ``.toml`` path.

    ``overrides`` (nested tables) are merged over the resolved file, as a profile that extends it would.
    """
    path = _locate(str(target))
    data = deep_merge(_resolve(path, chain=()), overrides or {})
    data.pop("extends", None)
    data["source"] = str(path)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_describe(path, exc), hint="Fix the profile (see `edgepack targets show NAME`).") from exc


def load_all() -> list[Profile]:
    return [load_profile(name) for name in builtin_names()]


def _locate(target: str) -> Path:
    if len(target) > 1024 or "\x00" in target:
        raise ProfileError(
            f"unknown target {target[:40]!r}... (not a profile name or path).",
            hint=f"Known targets: {', '.join(builtin_names())}.",
        )
    candidate = Path(target)
    try:
        exists = candidate.exists()
    except OSError as exc:  # a name too long for the file system, ...
        raise ProfileError(f"cannot look up profile {target[:60]!r} ({exc.strerror}).") from exc
    if candidate.suffix == ".toml" or exists:
        if not candidate.is_file():
            raise ProfileError(f"profile file {target} does not exist.", hint="Give a path to a .toml file.")
        return candidate.resolve()
    builtin = targets_dir() / f"{target}.toml"
    if builtin.is_file():
        return builtin
    raise ProfileError(
        f"unknown target {target!r}.",
        hint=f"Known targets: {', '.join(builtin_names())}; or give a path to your own .toml profile.",
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}).", hint="Fix the syntax of the profile.") from exc
    except RecursionError as exc:
        raise ProfileError(f"{path}: values nested too deeply to read.", hint="Flatten the profile.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc}).") from exc


def _resolve(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ProfileError(f"{path}: profiles extend each other in a cycle ({cycle}).")
    data = _read_toml(path)
    base_name = data.get("extends")
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ProfileError(f"{path}: 'extends' must be a profile name or a path, got {base_name!r}.")
    try:
        base_path = (path.parent / base_name) if base_name.endswith(".toml") else _locate(base_name)
    except ProfileError as exc:  # name the file that holds the bad 'extends'
        raise ProfileError(f"{path}: extends = {base_name!r}: {exc.message}", hint=exc.hint) from exc
    try:
        found = base_path.is_file()
    except OSError as exc:  # a name too long for the file system, ...
        raise ProfileError(f"{path}: cannot look up the base profile {base_name[:60]!r} ({exc.strerror}).") from exc
    if not found:
        raise ProfileError(f"{path}: extends {base_name!r}, which does not exist.")
    base = _resolve(base_path.resolve(), (*chain, path))
    base.pop("extends", None)
    return deep_merge(base, data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in ``override`` replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _close_key(loc: tuple[Any, ...]) -> str:
    """`` (did you mean 'description'?)`` for a misspelt key of the profile or of one of its tables."""
    model: Any = Profile
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        model = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'" + _close_key(err["loc"]))
        elif err["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            problems.append(f"'{key}': {err['msg']}")
    return f"{path}: " + "; ".join(problems) + "."
