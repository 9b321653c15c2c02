"""Consoles and the option types the ``edgepack`` commands share (no heavy imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing bundles in OUT.")]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved plan and stop.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
TrustOpt = Annotated[
    bool, typer.Option("--trust-model-code", help="Allow models with Python code (Keras Lambda layers).")
]
NoCheckOpt = Annotated[
    bool, typer.Option("--no-device-check", help="Skip running the bundle on the (emulated) device.")
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
PerTensorOpt = Annotated[bool, typer.Option("--per-tensor", help="Per-tensor instead of per-channel weights.")]
SymOpt = Annotated[bool, typer.Option("--symmetric-activations", help="Symmetric int8 activations.")]
StampOpt = Annotated[bool, typer.Option("--timestamp", help="Record the packaging time (bundles then differ).")]
DropOpt = Annotated[
    bool, typer.Option("--allow-accuracy-drop", help="Ship int8 even when it misses the accuracy budget (reported).")
]
