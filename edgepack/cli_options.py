"""Consoles and the option types the ``edgepack`` commands share (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


def flag(*names: str, **options: Any) -> Any:
    """A boolean option shown as a flag in ``--help`` (Typer would print a ``<bool>`` value column)."""
    return typer.Option(*names, metavar=" ", **options)


err = Console(stderr=True)
out = Console()

# ----------------------------------------------------------------------------- shared options

ModelArg = Annotated[Path, typer.Argument(help="Model: .keras, .h5, SavedModel folder, .onnx or .tflite.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder; bundles go to OUT/<target>/.")]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Fix dynamic input dims: NAME=1,224,224,3 (repeat per input)."),
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Validation/calibration data: .npz, .npy, or a folder of .npy/images.")
]
ForceOpt = Annotated[bool, flag("--force", help="Replace existing bundles in OUT.")]
DryOpt = Annotated[bool, flag("--dry-run", help="Print the resolved plan and stop.")]
JsonOpt = Annotated[bool, flag("--json", help="Print a machine-readable summary on stdout.")]
TrustOpt = Annotated[
    bool,
    flag(
        "--trust-model-code",
        help="Allow models with Python code (Keras Lambda layers, TorchScript or pickled PyTorch .pt/.pth).",
    ),
]
NoCheckOpt = Annotated[
    bool, flag("--no-device-check", help="Skip running the bundle on the (emulated) device.")
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--device-workers",
        min=1,
        help="Device checks run at once while the next targets convert (default: one per core that memory allows).",
    ),
]
SignOpt = Annotated[Path | None, typer.Option("--sign", help="Sign each manifest with this Ed25519 private key.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help="fp32, fp16, int8 or dynamic, where the target accepts it (int8 needs --data)."),
]
EvalOpt = Annotated[Path | None, typer.Option("--eval", help="A separate labelled set for the int8 gate.")]
PreOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--preprocess",
        help="Image preprocessing KEY=VALUE: size=224x224, layout=NCHW, "
        "channel_order=RGB, scale=1/255, mean=0.485,0.456,0.406, std=..., dtype=float32.",
    ),
]
MethodOpt = Annotated[
    str | None, typer.Option("--calibration-method", help="minmax, entropy or percentile (default: the profile's).")
]
SamplesOpt = Annotated[int | None, typer.Option("--calibration-samples", help="Calibration samples to use.")]
PerTensorOpt = Annotated[bool, flag("--per-tensor", help="Per-tensor instead of per-channel weights.")]
SymOpt = Annotated[bool, flag("--symmetric-activations", help="Symmetric int8 activations.")]
StampOpt = Annotated[bool, flag("--timestamp", help="Record the packaging time (bundles then differ).")]
DropOpt = Annotated[
    bool, flag("--allow-accuracy-drop", help="Ship int8 even when it misses the accuracy budget (reported).")
]


@dataclass(frozen=True)
class PackageFlags:
    """The shared flags of the packaging commands, as typed values (see :func:`common_flags`)."""

    out_dir: Path = Path("out")
    input_shape: list[str] | None = None
    data: Path | None = None
    precision: str | None = None
    allow_drop: bool = False
    eval_data: Path | None = None
    preprocess: list[str] | None = None
    calibration_method: str | None = None
    calibration_samples: int | None = None
    per_tensor: bool = False
    symmetric_activations: bool = False
    timestamp: bool = False
    force: bool = False
    dry_run: bool = False
    as_json: bool = False
    trust: bool = False
    no_check: bool = False
    device_workers: int | None = None
    sign: Path | None = None


def common_flags(
    out_dir: OutOpt = Path("out"),
    input_shape: ShapeOpt = None,
    data: DataOpt = None,
    precision: PrecisionOpt = None,
    allow_drop: DropOpt = False,
    eval_data: EvalOpt = None,
    preprocess: PreOpt = None,
    calibration_method: MethodOpt = None,
    calibration_samples: SamplesOpt = None,
    per_tensor: PerTensorOpt = False,
    symmetric_activations: SymOpt = False,
    timestamp: StampOpt = False,
    force: ForceOpt = False,
    dry_run: DryOpt = False,
    as_json: JsonOpt = False,
    trust: TrustOpt = False,
    no_check: NoCheckOpt = False,
    device_workers: WorkersOpt = None,
    sign: SignOpt = None,
) -> PackageFlags:
    """The flags every packaging command shares (its signature is copied onto each command)."""
    return PackageFlags(**locals())


def with_common(command: Any) -> Any:
    """Give ``command`` the shared flags of :func:`common_flags` after its own parameters, as ``opts``."""
    import functools
    import inspect as pyinspect
    import typing

    def params(func: Any) -> list[pyinspect.Parameter]:
        hints = typing.get_type_hints(func, include_extras=True)  # this module uses string annotations
        return [
            p.replace(annotation=hints[p.name])
            for p in pyinspect.signature(func).parameters.values()
            if p.name != "opts"
        ]

    own, shared = params(command), params(common_flags)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        opts = common_flags(**{p.name: kwargs.pop(p.name) for p in shared})
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = pyinspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    return wrapper
