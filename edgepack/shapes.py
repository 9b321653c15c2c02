"""Input shapes as typed values: each dim a fixed size or a min/opt/max range.

A range keeps a dim dynamic on targets whose runtime runs dynamic shapes (ONNX Runtime,
OpenVINO, TensorRT through optimisation profiles); everywhere else the model is fixed at
the range's ``opt`` shape. The flag syntax is ``NAME=1,3,48,[32:320:1024]`` (``min:opt:max``
in brackets), a bare shape when the model has one input, with ``,`` or ``x`` between dims.
"""

from __future__ import annotations

import operator
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgepack.artifact import TensorSpec
from edgepack.errors import UsageError

FLAG = "--input-shape"
_EXAMPLE = f"{FLAG} NAME=1,3,48,192, or {FLAG} NAME=1,3,48,[32:320:1024] to keep a dim dynamic (min:opt:max)"
_RANGE = re.compile(r"^\[([^\]]*)\]$")
_TOKENS = re.compile(r"\[[^\]]*\]|[^,x\[\]]+|[\[\]]")
# Runtimes that run a model whose input dims change from one call to the next. LiteRT runs one
# shape per interpreter (the converters need static shapes), so those targets get the opt shape.
DYNAMIC_RUNTIMES = frozenset({"onnxruntime", "openvino", "tensorrt"})
# trtexec splits its shape lists on ',' and a name from its dims at the last ':'; other names are
# wrapped in single quotes, which trtexec strips.
_TRT_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class DimRange:
    """A dynamic dim: the smallest, the most common (what fixed-shape targets get) and the largest size."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"range [{self.min}:{self.opt}:{self.max}] is not 1 <= min <= opt <= max")

    def __str__(self) -> str:
        return f"[{self.min}:{self.opt}:{self.max}]"


Dim = int | DimRange


@dataclass(frozen=True)
class InputShape:
    """The shape an input is given: per dim a fixed size or a :class:`DimRange`.

    ``name`` is ``""`` for a bare shape, which applies to a model's only input.
    """

    name: str
    dims: tuple[Dim, ...]

    def __post_init__(self) -> None:
        dims = tuple(_collapse(d) for d in self.dims)
        if not dims or any(isinstance(d, int) and (isinstance(d, bool) or d < 1) for d in dims):
            raise ValueError(f"shape {list(self.dims)} needs at least one dim, each >= 1")
        object.__setattr__(self, "dims", dims)

    @property
    def is_dynamic(self) -> bool:
        """Whether any dim is a range."""
        return any(isinstance(d, DimRange) for d in self.dims)

    def min(self) -> tuple[int, ...]:
        """The smallest shape."""
        return tuple(d.min if isinstance(d, DimRange) else d for d in self.dims)

    def opt(self) -> tuple[int, ...]:
        """The most common shape (TensorRT optimises for it)."""
        return tuple(d.opt if isinstance(d, DimRange) else d for d in self.dims)

    def max(self) -> tuple[int, ...]:
        """The largest shape."""
        return tuple(d.max if isinstance(d, DimRange) else d for d in self.dims)

    def static(self) -> tuple[int, ...]:
        """The one shape a target that needs static shapes gets: the opt shape."""
        return self.opt()

    def corners(self) -> tuple[tuple[int, ...], ...]:
        """The distinct shapes among min, opt and max, in that order (where validation runs)."""
        return tuple(dict.fromkeys((self.min(), self.opt(), self.max())))

    def named(self, name: str) -> InputShape:
        """The same dims for input ``name``."""
        return InputShape(name, self.dims)

    def flag(self) -> str:
        """The ``--input-shape`` value that gives this shape, e.g. ``x=1,3,48,[32:320:1024]``."""
        dims = ",".join(str(d) for d in self.dims)
        return f"{self.name}={dims}" if self.name else dims

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record: ``{"name", "min", "opt", "max"}``."""
        return {"name": self.name, "min": list(self.min()), "opt": list(self.opt()), "max": list(self.max())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputShape:
        """Read :meth:`to_dict`'s record back.

        Raises:
            UsageError: the record is not three shapes of one rank with min <= opt <= max.
        """
        try:
            low, mid, high = (tuple(int(d) for d in data[k]) for k in ("min", "opt", "max"))
            if not len(low) == len(mid) == len(high):
                raise ValueError("min, opt and max differ in rank")
            return cls(str(data["name"]), tuple(DimRange(a, b, c) for a, b, c in zip(low, mid, high)))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"shape range record {dict(data)!r} is not valid ({exc}).",
                hint='Write it as {"name": "x", "min": [1, 3, 48, 32], "opt": [...], "max": [...]}.',
            ) from exc

    @classmethod
    def parse(cls, value: str, *, flag: str = FLAG) -> InputShape:
        """Parse ``NAME=1,3,48,[32:320:1024]`` (or a bare shape, or ``1x3x48x192``).

        Raises:
            UsageError: the value is not a shape; the message names ``flag``.
        """
        name, sep, text = value.rpartition("=")
        name = name.strip() if sep else ""
        try:
            return cls(name, _parse_dims(text))
        except ValueError as exc:
            raise UsageError(f"{flag} {value!r} is not a shape ({exc}).", hint=f"Write it as {_EXAMPLE}.") from exc

    @classmethod
    def from_value(cls, name: str, value: Any, *, flag: str = FLAG) -> InputShape:
        """A shape from an API or profile value: an InputShape, a flag string, or a sequence of ints and
        ``(min, opt, max)`` triples.

        Raises:
            UsageError: the value is not a shape.
        """
        if isinstance(value, InputShape):
            return value.named(name)
        if isinstance(value, str):
            return cls.parse(value if "=" in value else f"{name}={value}", flag=flag).named(name)
        try:
            dims = tuple(_dim_from_value(d) for d in value)
            return cls(name, dims)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"{flag} for {name or 'the input'}: {value!r} is not a shape ({exc}).",
                hint="Give a sequence of sizes, with (min, opt, max) for a dynamic dim: (1, 3, 48, (32, 320, 1024)).",
            ) from exc


def _collapse(dim: Any) -> Dim:
    if isinstance(dim, DimRange):
        return dim.min if dim.min == dim.max else dim
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"dim {dim!r} is not an integer")
    return dim


def _dim_from_value(dim: Any) -> Dim:
    if isinstance(dim, DimRange):
        return dim
    if isinstance(dim, (list, tuple)) and len(dim) == 3 and not any(isinstance(d, bool) for d in dim):
        return DimRange(*(operator.index(d) for d in dim))
    if isinstance(dim, (bool, list, tuple)):
        raise ValueError(f"dim {dim!r} is neither a size nor a (min, opt, max) triple")
    return operator.index(dim)  # an int or a numpy integer; a str or float is a TypeError


def _parse_dims(text: str) -> tuple[Dim, ...]:
    tokens = [t.strip() for t in _TOKENS.findall(text.strip()) if t.strip()]
    if not tokens:
        raise ValueError("no dims")
    return tuple(_parse_dim(t) for t in tokens)


def _parse_dim(token: str) -> Dim:
    match = _RANGE.match(token)
    if match is None:
        if not token.isdigit():
            raise ValueError(f"{token!r} is not a size")
        return int(token)
    parts = [p.strip() for p in match.group(1).split(":")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"range {token} is not [min:opt:max]")
    return DimRange(*(int(p) for p in parts))


def runs_dynamic(runtime: Any) -> bool:
    """Whether ``runtime`` (a :class:`edgepack.profiles.Runtime` or its value) runs dynamic input dims."""
    return str(getattr(runtime, "value", runtime)) in DYNAMIC_RUNTIMES


def ranges_from_meta(meta: Mapping[str, Any]) -> tuple[InputShape, ...]:
    """The ranges :func:`edgepack.source.open_source` recorded in an artifact's ``meta["shape_ranges"]``."""
    return tuple(InputShape.from_dict(record) for record in meta.get("shape_ranges") or ())


def corner_specs(inputs: Sequence[TensorSpec], ranges: Iterable[InputShape]) -> list[list[TensorSpec]]:
    """The inputs at their min, opt and max shapes, repeats left out (just ``inputs`` when no range applies).

    Args:
        inputs: The static specs (each range's opt shape), as the source artifact has them.
        ranges: The ranged inputs (:func:`ranges_from_meta`); other inputs keep their static shape.
    """
    by_name = {r.name: r for r in ranges}
    if not by_name:
        return [list(inputs)]
    sets: list[list[TensorSpec]] = []
    for corner in (InputShape.min, InputShape.opt, InputShape.max):
        specs = [s.with_shape(corner(by_name[s.name])) if s.name in by_name else s for s in inputs]
        if specs not in sets:
            sets.append(specs)
    return sets


def openvino_shape(shape: InputShape) -> str:
    """The shape as OpenVINO writes a partial shape, ``[1,3,48,32..1024]`` (give it to ``ov.PartialShape``).

    OpenVINO has no opt size; a range's min and max bound the dim.
    """
    dims = (f"{d.min}..{d.max}" if isinstance(d, DimRange) else str(d) for d in shape.dims)
    return "[" + ",".join(dims) + "]"


def trtexec_flags(shapes: Iterable[InputShape], *, shell: bool = False) -> list[str]:
    """``--minShapes/--optShapes/--maxShapes`` for the dynamic inputs (none when every shape is fixed).

    Args:
        shapes: The inputs' shapes; static ones need no optimisation profile and are left out.
        shell: Quote each flag for a POSIX shell line (``build_engine.sh``); otherwise the flags are the
            argv strings trtexec must receive.

    Raises:
        UsageError: an input name trtexec cannot take (it holds a quote or a comma).
    """
    dynamic = [s for s in shapes if s.is_dynamic]
    if not dynamic:
        return []
    names = [_trt_name(s.name) for s in dynamic]
    flags = []
    for option, corner in (("min", InputShape.min), ("opt", InputShape.opt), ("max", InputShape.max)):
        listed = ",".join(f"{n}:{'x'.join(map(str, corner(s)))}" for n, s in zip(names, dynamic))
        flags.append(f"--{option}Shapes={listed}")
    return [shlex.quote(f) for f in flags] if shell else flags


def _trt_name(name: str) -> str:
    if not name:
        raise UsageError("a TensorRT shape range needs the input's name.", hint=f"Write {FLAG} NAME=... .")
    if _TRT_PLAIN_NAME.match(name):
        return name
    if "'" in name or "," in name:
        raise UsageError(
            f"trtexec cannot take shapes for input {name!r} (its name holds a quote or a comma).",
            hint="Rename the input when exporting the model, or fix its shape with --input-shape.",
        )
    return f"'{name}'"


def fill_example(name: str, shape: Sequence[int | None]) -> str:
    """An ``--input-shape`` flag for input ``name``: its known dims, 1 for an unknown first dim, 320 for others."""
    dims = [str(d) if d is not None else ("1" if i == 0 else "320") for i, d in enumerate(shape)]
    return f"{FLAG} {shlex.quote(name + '=' + ','.join(dims))}"


def describe(name: str, shape: Sequence[int | None]) -> str:
    """``x: [?, 3, 48, ?]``."""
    return f"{name}: [{', '.join('?' if d is None else str(d) for d in shape)}]"
