"""JOBS.toml: the models and targets of a batch, parsed, validated and expanded into cells.

A jobs file names its targets once at the top (names, ``"all"``, or profile files) and one
``[[models]]`` table per model; a model's own ``targets`` list replaces the top-level one::

    targets = ["rpi4-arm64", "intel-openvino-cpu"]
    device_check = true                 # optional default for every model

    [[models]]
    path = "models/classifier.keras"    # relative paths are read against the jobs file
    data = "calibration/classifier.npz"
    precision = "int8"

    [[models]]
    path = "detector.onnx"
    input_shapes = {images = [1, 3, 320, 320]}
    targets = ["all"]

Each (model, target) pair is a :class:`CellSpec`: one ordinary ``package`` call.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import UsageError
from edgepack.profiles import Precision, Profile

TOP_KEYS = ("targets", "device_check", "models")
MODEL_KEYS = ("path", "name", "input_shapes", "data", "eval", "precision", "targets", "device_check")
_HINT = "Fix the jobs file (see docs/scale.md for its format)."


@dataclass(frozen=True)
class CellSpec:
    """One cell of the matrix: a model packaged for one target, with everything that decides its bundle.

    Attributes:
        model: The model's name in the batch (its folder under OUT).
        model_path: Absolute path of the model file or folder.
        profile: The resolved profile (precision applied): what ``package`` is given, and whose digest is
            part of the cell's key.
        precision: The precision asked for this cell, or None for the profile's default.
        input_shapes: ``{input name: shape}`` for dynamic inputs, or empty.
        data: Calibration/validation data, or None.
        eval_data: A separate labelled set for the int8 gate, or None.
        device_check: Whether the bundle is run on its (emulated) device.
    """

    model: str
    model_path: Path
    profile: Profile
    precision: str | None = None
    input_shapes: Mapping[str, Any] = field(default_factory=dict)
    data: Path | None = None
    eval_data: Path | None = None
    device_check: bool = True

    @property
    def target_name(self) -> str:
        return self.profile.name

    @property
    def id(self) -> str:
        """``model/target``: the cell's name in progress lines, summaries and OUT."""
        return f"{self.model}/{self.profile.name}"


def load_jobs(path: str | Path) -> list[CellSpec]:
    """Read a jobs file and expand it into cells (model order, then target order).

    Raises:
        UsageError: The file is missing, is not TOML, has unknown keys, names a missing model or data
            file, or gives two models the same name.
        ProfileError: A target is neither a built-in profile nor a readable profile file.
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"jobs file {path} does not exist.", hint="Give the path of a JOBS.toml file.")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML ({' '.join(str(exc).split())}).", hint=_HINT) from exc
    _check_keys(doc, TOP_KEYS, f"{path}")
    models = doc.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise UsageError(f"{path} has no [[models]] table.", hint="Add one [[models]] table with a path per model.")
    default_targets = doc.get("targets")
    default_check = _bool(doc.get("device_check", True), f"{path}: device_check")
    cells: list[CellSpec] = []
    names: set[str] = set()
    for index, table in enumerate(models, start=1):
        where = f"{path}: [[models]] #{index}"
        _check_keys(table, MODEL_KEYS, where)
        model_cells = _model_cells(table, path.parent, default_targets, default_check, where)
        name = model_cells[0].model
        if name in names:
            raise UsageError(f"{where}: two models are named {name!r}.", hint="Give one of them name = \"...\".")
        names.add(name)
        cells.extend(model_cells)
    return cells


def _model_cells(
    table: Mapping[str, Any], base: Path, default_targets: Any, default_check: bool, where: str
) -> list[CellSpec]:
    from edgepack.api import resolve_targets

    model_path = _existing(table.get("path"), base, f"{where}: path", required=True)
    assert model_path is not None  # required=True raised otherwise
    name = str(table.get("name") or model_path.name.split(".")[0])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"{where}: model name {name!r} is not a plain folder name.", hint="Set name = \"...\".")
    targets = table.get("targets", default_targets)
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise UsageError(
            f"{where}: no targets (a list of names, \"all\" or profile files).",
            hint="Add targets = [...] at the top of the file or in this [[models]] table.",
        )
    refs = [str(base / t) if t.endswith(".toml") and not Path(t).is_absolute() else t for t in targets]
    profiles = resolve_targets(refs)
    precision = _precision(table.get("precision"), profiles, where)
    shapes = table.get("input_shapes") or {}
    if not isinstance(shapes, dict) or not all(isinstance(v, list) for v in shapes.values()):
        raise UsageError(
            f"{where}: input_shapes must be a table of lists.", hint="For example {x = [1, 3, 224, 224]}."
        )
    data = _existing(table.get("data"), base, f"{where}: data")
    eval_data = _existing(table.get("eval"), base, f"{where}: eval")
    check = _bool(table.get("device_check", default_check), f"{where}: device_check")
    cells = []
    for profile in profiles:
        accepted = precision if precision is not None and Precision(precision) in profile.precisions else None
        if accepted is not None:
            profile = profile.model_copy(update={"precision": Precision(accepted)})
        cells.append(CellSpec(name, model_path, profile, accepted, dict(shapes), data, eval_data, check))
    return cells


def _precision(value: Any, profiles: Sequence[Profile], where: str) -> str | None:
    if value is None:
        return None
    known = [p.value for p in Precision]
    if value not in known:
        raise UsageError(f"{where}: unknown precision {value!r}.", hint=f"Use one of: {', '.join(known)}.")
    if not any(Precision(value) in p.precisions for p in profiles):
        raise UsageError(
            f"{where}: no target of this model accepts precision {value!r}.",
            hint="See each target's precisions with `edgepack targets show NAME`.",
        )
    return str(value)


def _existing(value: Any, base: Path, where: str, *, required: bool = False) -> Path | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} is missing or not a string.", hint=_HINT)
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.exists():
        raise UsageError(f"{where}: {path} does not exist.", hint="Relative paths are read against the jobs file.")
    return path


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where} must be true or false, not {value!r}.", hint=_HINT)
    return value


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            guess = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{where}: unknown key {key!r}.{guess}", hint=f"Known keys: {', '.join(known)}.")
