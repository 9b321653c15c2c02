"""Helpers shared by the converters: quiet tool runs, tool facts, and the I/O of a produced model."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.deps import version_of
from edgepack.errors import ConversionError, EdgepackError

T = TypeVar("T")


class ToolLog:
    """What a tool printed while it ran (C++ logs included); filled when the run ends."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 5) -> str:
        kept = [line for line in self.text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])[-600:]


@contextlib.contextmanager
def quiet() -> Iterator[ToolLog]:
    """Capture everything written to stdout/stderr (Python and C++ alike) while a tool runs.

    TensorFlow, tf2onnx and Keras print banners, progress and C++ log lines; they go to a
    temporary file instead of the user's terminal, and the file descriptors, ``sys.stdout``,
    ``sys.stderr`` and the warning filters are restored afterwards.
    """
    log = ToolLog()
    python_out = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with (
                contextlib.redirect_stdout(python_out),
                contextlib.redirect_stderr(python_out),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                yield log
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            log.text = python_out.getvalue() + sink.read().decode("utf-8", "replace")


def run_tool(action: Callable[[], T], *, failure: str, hint: str) -> T:
    """Run a third-party tool quietly; its exceptions become ``ConversionError(failure (reason), hint)``."""
    error: Exception | None = None
    with quiet():
        try:
            return action()
        except EdgepackError:
            raise
        except Exception as exc:  # noqa: BLE001 - any tool failure is a conversion failure
            error = exc
    raise ConversionError(f"{failure} ({first_line(error)}).", hint=hint) from error


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), at most 300 characters."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def tool_meta(tool: str, distribution: str | None = None, **extra: Any) -> dict[str, Any]:
    """``{"tool": ..., "tool_version": ...}`` plus step facts, for ``Artifact.meta``."""
    return {"tool": tool, "tool_version": version_of(distribution or tool) or "unknown", **extra}


def _bare(name: str) -> str:
    """A tensor name without the decorations converters add (``serving_default_x:0`` -> ``x``)."""
    name = name.split(":")[0]
    for prefix in ("serving_default_",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _pair(source: Sequence[TensorSpec], actual: Sequence[TensorSpec]) -> list[TensorSpec | None]:
    """For each actual tensor, the source tensor it stands for: by name, else by position."""
    by_name = {spec.name: spec for spec in source}
    by_bare = {_bare(spec.name): spec for spec in source}
    paired = [by_name.get(a.name) or by_bare.get(_bare(a.name)) for a in actual]
    if any(p is None for p in paired) and len(source) == len(actual):
        return list(source)
    return paired


def describe(
    src: Artifact,
    path: Path,
    fmt: ModelFormat,
    io_specs: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
    *,
    meta: Mapping[str, Any],
    files: tuple[Path, ...] = (),
) -> Artifact:
    """The Artifact of a produced model, checked to have the source's static input shapes.

    Specs carry the produced file's tensor names (what its runtime is fed by) in its order, the
    source's input shapes and layouts, and ``meta["source_names"]`` maps each name to the source's.

    Raises:
        ConversionError: an input is missing, or its shape in the produced file is not the source's.
    """
    actual_in, actual_out = io_specs
    inputs, names = [], {}
    for actual, origin in zip(actual_in, _pair(src.inputs, actual_in), strict=True):
        if origin is None or tuple(actual.shape) != tuple(origin.shape):
            want = [tuple(s.shape) for s in src.inputs]
            raise ConversionError(
                f"{meta.get('tool', 'the converter')} produced input {actual.name} of shape "
                f"{list(actual.shape)}, but the source's inputs are {want}.",
                hint="Give static shapes with --input-shape NAME=1,... and retry; report it if it persists.",
            )
        inputs.append(TensorSpec(actual.name, origin.shape, actual.dtype, origin.layout))
        names[actual.name] = origin.name
    outputs = []
    for actual, origin in zip(actual_out, _pair(src.outputs, actual_out), strict=True):
        shape = actual.shape
        if origin is not None and len(origin.shape) == len(shape):
            shape = tuple(a if a is not None else o for a, o in zip(shape, origin.shape, strict=True))
        outputs.append(actual.with_shape(shape))
        if origin is not None:
            names[actual.name] = origin.name
    full_meta = {**meta, "source_format": src.format.value, "source_sha256": src.sha256, "source_names": names}
    return Artifact.from_file(path, fmt, tuple(inputs), tuple(outputs), files=files, meta=full_meta)


def read_specs(path: Path, fmt: ModelFormat) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as declared in a produced .onnx or .tflite file."""
    from edgepack.source import read_io

    return read_io(path, fmt)


def fresh_dir(workdir: Path) -> Path:
    """Create the step's work folder (it may exist, e.g. made by the caller)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
