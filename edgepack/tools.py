"""Running third-party tools: quiet runs, their failures as our errors, and the facts a step records."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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
    cause = likely_cause(str(error))
    raise ConversionError(f"{failure} ({first_line(error)}).", hint=f"{cause} {hint}" if cause else hint) from error


# What a tool's message says about the cause, when it says it plainly: (pattern, what to tell the user).
_CAUSES: tuple[tuple[str, str], ...] = (
    (r"\b(float64|double|DT_DOUBLE|f64)\b", "Likely cause: the model uses float64 tensors; export it in float32."),
    (
        r"\b(complex64|complex128|DT_COMPLEX)\b",
        "Likely cause: the model uses complex tensors, which edge runtimes lack.",
    ),
    (
        r"(negative dimension|dimension.*(<|less than) ?[01]\b|output size is too small|kernel size.*larger)",
        "Likely cause: an input shape too small for the network's strides or pooling; give a larger --input-shape.",
    ),
)


def likely_cause(message: str) -> str | None:
    """A one-sentence likely cause for a tool's failure message (dtype, too-small shape), or None."""
    import re

    for pattern, cause in _CAUSES:
        if re.search(pattern, message, flags=re.IGNORECASE):
            return cause
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), at most 300 characters."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def tool_meta(tool: str, distribution: str | None = None, **extra: Any) -> dict[str, Any]:
    """``{"tool": ..., "tool_version": ...}`` plus step facts, for ``Artifact.meta``."""
    return {"tool": tool, "tool_version": version_of(distribution or tool) or "unknown", **extra}


def fresh_dir(workdir: Path) -> Path:
    """Create the step's work folder (it may exist, e.g. made by the caller)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir
