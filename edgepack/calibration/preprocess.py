"""Image preprocessing: a small frozen spec read from TOML, a profile table or command-line flags.

A pixel becomes a model input value as ``(pixel * scale - mean[c]) / std[c]``, after the image is
converted to the channel order and resized to ``size``; the result is laid out as ``layout``.
Arrays (``.npy`` / ``.npz``) are taken as model-ready: their preprocessing is recorded, not applied.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from edgepack.errors import DataError, MissingDependencyError

PREPROCESS_FILE = "preprocess.toml"
_HINT = "Known keys: size, layout, channel_order, scale, mean, std, dtype."


class Preprocess(BaseModel):
    """How an 8-bit image becomes one model input sample.

    Attributes:
        size: ``(H, W)`` to resize to; None takes it from the model's input shape.
        layout: ``"NHWC"`` or ``"NCHW"`` (the batch dimension is added by the dataset).
        channel_order: ``"RGB"``, ``"BGR"`` or ``"L"`` (one grey channel).
        scale: Multiplies the 0..255 pixel first (``1/255`` gives 0..1). TOML and flags may write ``"1/255"``.
        mean: Subtracted after scaling: one value, or one per channel in ``channel_order``.
        std: Divides after the mean: one value, or one per channel; all > 0.
        dtype: numpy dtype of the result; integer dtypes are rounded and clipped to their range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[PositiveInt, PositiveInt] | None = None
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    channel_order: Literal["RGB", "BGR", "L"] = "RGB"
    scale: float = Field(1 / 255, gt=0, allow_inf_nan=False)
    mean: tuple[float, ...] = Field((0.0,), min_length=1)
    std: tuple[float, ...] = Field((1.0,), min_length=1)
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"

    @field_validator("size", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.lower().replace("x", ",").split(",") if part.strip()]
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _parse_scale(cls, value: Any) -> Any:
        return _number(value) if isinstance(value, str) else value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _parse_floats(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [_number(part) for part in value.split(",") if part.strip()]
        if isinstance(value, int | float):
            return [value]
        return value

    @model_validator(mode="after")
    def _per_channel(self) -> Preprocess:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                wanted = f"give 1 or {self.channels} for {self.channel_order}"
                raise ValueError(f"'{key}' has {len(values)} values; {wanted}")
            if not all(np.isfinite(values)):
                raise ValueError(f"'{key}' must be finite numbers")
        if any(s <= 0 for s in self.std):
            raise ValueError("'std' values must be > 0")
        return self

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, source: str = "preprocessing table") -> Preprocess:
        """Build from a dict (a TOML table, a profile's ``preprocess`` table).

        Raises:
            DataError: an unknown key or a bad value; the message names ``source`` and the key.
        """
        try:
            return cls.model_validate(dict(table))
        except ValidationError as exc:
            raise DataError(_describe(source, exc), hint=_HINT) from exc

    @classmethod
    def from_toml(cls, path: str | Path) -> Preprocess:
        """Read a ``preprocess.toml`` file.

        Raises:
            DataError: the file is unreadable, not TOML, or has an unknown key or bad value.
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:
                table = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"{path}: not valid TOML ({exc}).", hint="Fix the syntax of the file.") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot read the preprocessing file ({exc.strerror}).") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}).", hint="Save it as UTF-8 TOML.") from exc
        return cls.from_table(table, source=str(path))

    @classmethod
    def from_flags(
        cls,
        *,
        size: str | tuple[int, int] | None = None,
        layout: str | None = None,
        channel_order: str | None = None,
        scale: str | float | None = None,
        mean: str | float | tuple[float, ...] | None = None,
        std: str | float | tuple[float, ...] | None = None,
        dtype: str | None = None,
    ) -> Preprocess:
        """Build from command-line values; None keeps the default.

        Strings are parsed: ``size="224x224"`` or ``"224,224"``, ``scale="1/255"``,
        ``mean="0.485,0.456,0.406"``.

        Raises:
            DataError: a bad value, naming the flag.
        """
        given: dict[str, object] = {"size": size, "layout": layout, "channel_order": channel_order, "scale": scale}
        given |= {"mean": mean, "std": std, "dtype": dtype}
        return cls.from_table({k: v for k, v in given.items() if v is not None}, source="command-line flags")

    # ------------------------------------------------------------------ use

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    @property
    def pil_mode(self) -> str:
        return "L" if self.channel_order == "L" else "RGB"

    def resolve_size(self, input_shape: tuple[int | None, ...]) -> tuple[int, int] | None:
        """``size``, else the ``(H, W)`` of a 4-D model input shape in this layout, else None."""
        if self.size is not None:
            return self.size
        if len(input_shape) != 4:
            return None
        h, w = input_shape[1:3] if self.layout == "NHWC" else input_shape[2:4]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None

    def sample_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """Shape of one preprocessed image, without the batch dimension."""
        h, w = size
        return (h, w, self.channels) if self.layout == "NHWC" else (self.channels, h, w)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Turn resized 8-bit pixels (``H x W`` or ``H x W x C`` in RGB/L order) into one sample.

        Returns:
            The sample in ``layout`` (``H x W x C`` or ``C x H x W``) and ``dtype``.
        """
        x: np.ndarray = np.asarray(pixels, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = (x * np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        target = np.dtype(self.dtype)
        if target.kind in "iu":
            info = np.iinfo(target)
            x = np.clip(np.rint(x), info.min, info.max)
        return np.ascontiguousarray(x, dtype=target)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_image(path: Path, preprocess: Preprocess, size: tuple[int, int]) -> np.ndarray:
    """Decode an image file, convert it to the spec's channels, resize it to ``size`` and preprocess it.

    Raises:
        DataError: the file is not a readable image.
        MissingDependencyError: Pillow is not installed.
    """
    image_mod = _pillow()
    h, w = size
    try:
        with image_mod.open(path) as img:
            img = img.convert(preprocess.pil_mode)
            if img.size != (w, h):
                img = img.resize((w, h), image_mod.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}).", hint="Remove or re-save the file.") from exc
    return preprocess.apply(pixels)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "Pillow is not installed; reading a folder of images needs it.",
            hint="Install it with: pip install 'edgepack[images]'",
        ) from exc
    return Image


def _number(text: str) -> float:
    """``"0.5"``, ``"1e-3"`` or ``"1/255"`` as a float (pydantic reports the ValueError)."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{text.strip()!r} is not a number (write 0.5, 1e-3 or 1/255)") from exc


def _describe(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"][:1])
        if not key:  # a check across keys: its message names them
            problems.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            problems.append(f"'{key}': {err['msg']}")
    return f"{source}: " + "; ".join(dict.fromkeys(problems)) + "."
