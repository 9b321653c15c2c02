"""The one error hierarchy of edgepack.

Every error carries a message that says what is wrong *and* what to do, and an
exit code that the CLI returns. Third-party exceptions are caught at a step
boundary and re-raised as one of these with ``raise ... from exc``. Only the
CLI turns them into exit codes.
"""

from __future__ import annotations

from typing import Any


class EdgepackError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    kind = "error"
    result: Any = None  # with edgepack.package: the PackageResult of the run (the targets that did succeed)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} {hint}")

    def one_line(self) -> str:
        """The message as one line, as the CLI prints it."""
        return " ".join(str(self).split())


class UsageError(EdgepackError):
    """Bad command-line usage or API arguments (unknown target, bad flag value)."""

    exit_code = 2
    kind = "usage"


class ProfileError(EdgepackError):
    """A target profile is malformed, unknown or inconsistent."""

    exit_code = 3
    kind = "bad-profile"


class ModelError(EdgepackError):
    """The model file is corrupt, of an unknown format, unsafe, or its shapes do not fit."""

    exit_code = 4
    kind = "bad-model"


class DataError(EdgepackError):
    """Calibration or validation data is unreadable or does not fit the model."""

    exit_code = 5
    kind = "bad-data"


class MissingDependencyError(EdgepackError):
    """An optional framework is not installed; the message names the pip extra."""

    exit_code = 6
    kind = "missing-dependency"


class ConversionError(EdgepackError):
    """A converter, simplifier or quantizer failed."""

    exit_code = 7
    kind = "conversion-failed"


class AccuracyError(EdgepackError):
    """An artifact's outputs are outside the profile's accuracy budget."""

    exit_code = 8
    kind = "accuracy-budget"


class LatencyBudgetError(EdgepackError):
    """The estimated device latency is over the profile's latency budget."""

    exit_code = 9
    kind = "latency-budget"


class DeviceCheckError(EdgepackError):
    """The on-device (emulated, docker or ssh) check failed or disagreed with the host."""

    exit_code = 10
    kind = "device-check-failed"


class DelegationError(DeviceCheckError):
    """An operator fell back from the delegate, or an int8 bundle did not run int8 kernels, on the device
    (only when the profile requires it: ``[device] require_delegation`` / ``require_int8``)."""

    exit_code = 13
    kind = "fell-back"


class VerificationError(EdgepackError):
    """A bundle does not match its manifest or its signature."""

    exit_code = 11
    kind = "verification-failed"


class OutputExistsError(UsageError):
    """The destination exists and ``--force`` was not given, or another run holds its lock."""

    exit_code = 12
    kind = "output-exists"


class InternalError(EdgepackError):
    """A bug in edgepack: an unexpected exception, wrapped so the CLI can report it."""

    exit_code = 70
    kind = "internal"


ALL_ERRORS: tuple[type[EdgepackError], ...] = (
    UsageError,
    ProfileError,
    ModelError,
    DataError,
    MissingDependencyError,
    ConversionError,
    AccuracyError,
    LatencyBudgetError,
    DeviceCheckError,
    DelegationError,
    VerificationError,
    OutputExistsError,
    InternalError,
)
