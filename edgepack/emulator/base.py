"""What every emulator backend shares: :class:`RunResult`, the :class:`Runner` protocol, run.py's arguments.

Backends import these from here (not from the package), so that the package can look them up
without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

RUN_SCRIPT = "run.py"


@dataclass(frozen=True)
class RunResult:
    """What one run of a bundle's runner produced.

    Attributes:
        returncode: Exit status of the runner.
        stdout: Its standard output.
        stderr: Its standard error.
        wall_s: Wall time of the whole process (start-up and imports included), seconds.
        instructions: Guest instructions per inference (the runtime's invoke call alone), or None if not counted.
        instructions_total: Instructions of the whole counted block (all ``--count`` inferences), or None.
        note: Why ``instructions`` is None when counting was asked for, else "".
        runner: Name of the backend that ran it.
    """

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    instructions: int | None = None
    instructions_total: int | None = None
    note: str = ""
    runner: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@runtime_checkable
class Runner(Protocol):
    """Runs ``run.py`` of a bundle folder with ``args`` (host paths) and extra environment ``env``."""

    name: str

    def run(self, bundle_dir: Path, args: list[str], *, env: dict[str, str]) -> RunResult: ...


def runs_from_args(args: list[str]) -> int:
    """The ``--runs N`` given to run.py (1, its default, when absent)."""
    return max(1, int_arg(args, "--runs", 1))


def int_arg(args: list[str], flag: str, default: int) -> int:
    """The integer value of ``flag`` (``--flag N`` or ``--flag=N``) in run.py's ``args``, else ``default``."""
    for i, arg in enumerate(args):
        if arg == flag or arg.startswith(flag + "="):
            value = args[i + 1] if arg == flag and i + 1 < len(args) else arg.partition("=")[2]
            try:
                return int(value)
            except ValueError:
                return default
    return default
