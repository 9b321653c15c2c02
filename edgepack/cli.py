"""The ``edgepack`` command line: a thin Typer layer over :mod:`edgepack.api`.

Nothing heavy is imported here: ``edgepack --help`` must stay fast and must not
import tensorflow, openvino, onnxruntime or onnxsim.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edgepack.cli_compress import compress_app
from edgepack.errors import EdgepackError, InternalError

app = typer.Typer(
    name="edgepack",
    help="Package a trained model for edge devices: convert, validate, check on the device, bundle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
targets_app = typer.Typer(help="List the target profiles, or show one resolved.", invoke_without_command=True)
app.add_typer(targets_app, name="targets")
app.add_typer(compress_app, name="compress")

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


def _print_version(value: bool) -> None:
    if value:
        from edgepack import __version__

        out.print(f"edgepack {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    if debug:
        os.environ["EDGEPACK_DEBUG"] = "1"


def _run_package(model: Path, targets: list[Any], opts: dict[str, Any], compress: dict[str, Any] | None = None) -> None:
    """Plan (``--dry-run``) or run ``edgepack.package`` with the shared flags of every packaging command."""
    from edgepack import api

    if opts["dry_run"]:
        plan = api.plan(model, targets=targets, out=opts["out_dir"], precision=opts["precision"])
        out.print_json(json.dumps(plan.to_dict())) if opts["as_json"] else _print_plan(plan)
        return
    with err.status("starting", spinner="dots") as status:
        try:
            result = api.package(
                model,
                targets=targets,
                out=opts["out_dir"],
                input_shapes=opts["input_shape"],
                data=opts["data"],
                force=opts["force"],
                trust_code=opts["trust"],
                device_check=not opts["no_check"],
                sign_key=opts["sign"],
                precision=opts["precision"],
                allow_accuracy_drop=opts["allow_drop"],
                compress=compress,
                quantize=_quantize_flags(opts),
                eval_data=opts["eval_data"],
                preprocess=_key_values(opts["preprocess"]),
                timestamp=opts["timestamp"],
                progress=status.update,
            )
        except EdgepackError as exc:
            partial = getattr(exc, "result", None)
            if partial is not None:
                _print_result(partial, opts["as_json"])
            raise
    _print_result(result, opts["as_json"])


def _quantize_flags(opts: dict[str, Any]) -> dict[str, Any]:
    flags = {"method": opts["calibration_method"], "samples": opts["calibration_samples"]}
    if opts["per_tensor"]:
        flags["per_channel"] = False
    if opts["symmetric_activations"]:
        flags["symmetric_activations"] = True
    return {k: v for k, v in flags.items() if v is not None}


def _key_values(values: list[str] | None) -> dict[str, str]:
    from edgepack.errors import UsageError

    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--preprocess {value!r} is not KEY=VALUE.", hint="For example --preprocess size=224x224.")
        pairs[key.strip()] = rest.strip()
    return pairs


def _print_plan(plan: Any) -> None:
    from rich.table import Table

    table = Table(title=f"plan for {plan.model} ({plan.source_format.value}); ONNX opset {plan.onnx_opset}")
    for column in ("target", "route", "steps", "out", "notes"):
        table.add_column(column)
    for t in plan.targets:
        route = " -> ".join([plan.source_format.value, *(f.value for f in t.route)])
        table.add_row(t.profile.name, route, ", ".join(t.steps), str(t.out_dir), "; ".join(t.notes))
    out.print(table)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    from rich.table import Table

    table = Table(title="edgepack bundles")
    for column in ("target", "status", "bundle", "validation"):
        table.add_column(column)
    for t in result.targets:
        if t.error:
            table.add_row(t.target, "[red]failed[/red]", "-", t.error)
            continue
        outputs = (t.manifest or {}).get("validation", {}).get("outputs", [])
        summary = ", ".join(f"{o['name']}: max|err| {o['max_abs_error']:.2e}" for o in outputs)
        table.add_row(t.target, "[green]ok[/green]", str(t.archive), summary)
    out.print(table)


# ----------------------------------------------------------------------------- commands


@targets_app.callback()
def _targets(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from edgepack.profiles import load_all

    profiles = load_all()
    if as_json:
        out.print_json(json.dumps([p.to_dict() for p in profiles]))
        return
    table = Table(title="edgepack targets")
    table.add_column("name", no_wrap=True)
    for column in ("format", "runtime", "arch", "precision", "description"):
        table.add_column(column)
    for p in profiles:
        table.add_row(p.name, p.format.value, p.runtime.value, p.arch.value, p.precision.value, p.description)
    out.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="Built-in name or path to a .toml profile.")]) -> None:
    """Print one profile, resolved (extends applied, defaults filled)."""
    from edgepack.profiles import load_profile

    out.print_json(json.dumps(load_profile(name).to_dict()))


@app.command()
def inspect(model: ModelArg, input_shape: ShapeOpt = None, as_json: JsonOpt = False) -> None:
    """Inputs, outputs, operators, parameters, MACs and per-target compatibility."""
    from edgepack import api

    report = api.inspect(model, input_shapes=input_shape)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        from edgepack.inspection import render

        out.print(render(report))


def _common(
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
    sign: SignOpt = None,
) -> dict[str, Any]:
    """The flags every packaging command shares (its signature is copied onto each command)."""
    return dict(locals())


def _with_common(command: Any) -> Any:
    """Give ``command`` the shared flags of :func:`_common` after its own parameters; it receives them as ``opts``."""
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

    own, shared = params(command), params(_common)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        opts = _common(**{p.name: kwargs.pop(p.name) for p in shared})
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = pyinspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    return wrapper


@app.command()
@_with_common
def package(
    model: ModelArg,
    target: Annotated[list[str], typer.Option("--target", "-t", help="Target name, profile .toml, or 'all'.")],
    prune: Annotated[float | None, typer.Option("--prune", help="Prune this fraction of weights first.")] = None,
    structured: Annotated[bool, typer.Option("--structured", help="With --prune: remove whole channels.")] = False,
    clip: Annotated[float | None, typer.Option("--clip", help="Zero this fraction of smallest weights first.")] = None,
    distill_student: Annotated[
        str | None, typer.Option("--distill-student", help="Distill into a student first: width=0.5 or a .keras file.")
    ] = None,
    opts: dict[str, Any] | None = None,
) -> None:
    """Package MODEL for one or more targets (optionally compressed first)."""
    compress: dict[str, Any] = {}
    if distill_student:
        compress["distill"] = {"student": distill_student}
    if prune is not None:
        compress["prune"] = {"sparsity": prune, "structured": structured}
    if clip is not None:
        compress["clip"] = {"sparsity": clip}
    _run_package(model, target, opts or {}, compress)


@app.command()
@_with_common
def android(
    model: ModelArg,
    gpu: Annotated[bool, typer.Option("--gpu", help="fp16 model for LiteRT's GPU delegate.")] = False,
    opts: dict[str, Any] | None = None,
) -> None:
    """Package MODEL for Android phones (LiteRT .tflite)."""
    _run_package(model, ["android-arm64-gpu" if gpu else "android-arm64"], opts or {})


_RPI = {
    ("pi4", "litert"): "rpi4-arm64",
    ("pi5", "litert"): "rpi5-arm64",
    ("armv7", "litert"): "rpi-armv7",
    ("pi4", "onnxruntime"): "rpi4-arm64-onnxruntime",
    ("pi5", "onnxruntime"): "rpi5-arm64-onnxruntime",
}


@app.command()
@_with_common
def rpi(
    model: ModelArg,
    board: Annotated[str, typer.Option("--board", help="pi4, pi5 (64-bit OS) or armv7 (32-bit OS).")] = "pi4",
    runtime: Annotated[str, typer.Option("--runtime", help="litert or onnxruntime (64-bit only).")] = "litert",
    opts: dict[str, Any] | None = None,
) -> None:
    """Package MODEL for a Raspberry Pi."""
    from edgepack.errors import UsageError

    name = _RPI.get((board, runtime))
    if name is None:
        raise UsageError(
            f"no Raspberry Pi profile for --board {board} --runtime {runtime}.",
            hint="Boards: pi4, pi5, armv7; ONNX Runtime has no 32-bit ARM build (use litert on armv7).",
        )
    _run_package(model, [name], opts or {})


@app.command()
@_with_common
def openvino(model: ModelArg, opts: dict[str, Any] | None = None) -> None:
    """Package MODEL for Intel CPUs with OpenVINO (IR .xml + .bin)."""
    _run_package(model, ["intel-openvino-cpu"], opts or {})


@app.command()
@_with_common
def jetson(
    model: ModelArg,
    jetpack: Annotated[str | None, typer.Option("--jetpack", help="JetPack version on the device, e.g. 6.1.")] = None,
    opts: dict[str, Any] | None = None,
) -> None:
    """Package MODEL for NVIDIA Jetson (ONNX + build_engine.sh for TensorRT; fp16 engine unless --precision)."""
    from edgepack.profiles import load_profile

    overrides = {"tensorrt": {"jetpack": jetpack}} if jetpack else {}
    _run_package(model, [load_profile("jetson-orin-trt", overrides=overrides)], opts or {})


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or its .tar.gz.")],
    key: Annotated[Path | None, typer.Option("--key", help="Ed25519 public key to check the signature.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a bundle against its manifest (and its signature, with --key)."""
    from edgepack import api

    report = api.verify(bundle, public_key=key)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(
            f"[green]verified[/green] {bundle}: "
            + ", ".join(f"{k}={v}" for k, v in report.to_dict().items() if not isinstance(v, list | dict))
        )


@app.command()
def keygen(
    private: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 600).")],
    public: Annotated[Path, typer.Argument(help="Where to write the public key (PEM).")],
) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    from edgepack.signing import keygen as make_keys

    make_keys(private, public)
    out.print(f"wrote {private} (keep it secret) and {public}")


@app.command()
def check(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or its .tar.gz.")],
    runner: Annotated[
        str | None, typer.Option("--runner", help="qemu (default for ARM), native, docker, or ssh://user@host.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Check against this profile instead.")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a bundle's run.py on its (emulated or real) device and compare its outputs with the host's."""
    from edgepack import api

    with err.status("device check", spinner="dots") as status:
        result = api.check(bundle, runner=runner, target=target, data=data, progress=status.update)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    facts, latency = result.facts, result.measurements.get("latency")
    if not facts.get("ran"):
        out.print(f"not run: {facts.get('reason')}")
        return
    out.print(
        f"[green]outputs agree[/green] on {facts['runner']} ({facts['machine']}, {facts['runtime']} "
        f"{facts['runtime_version']})"
    )
    if latency:
        out.print(f"latency, {latency['label']}: median {latency['median_ms']:.3f} ms over {latency['runs']} runs")
    count = result.measurements.get("instructions", {}).get("per_inference")
    if count:
        out.print(f"guest instructions per inference: {count:,}")


emulator_app = typer.Typer(help="Manage the cached emulated devices (QEMU guests).", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")


@emulator_app.command("setup")
def emulator_setup(target: Annotated[str, typer.Argument(help="Target name or profile .toml.")]) -> None:
    """Build and cache the emulated environment of TARGET (a second setup is a cache hit)."""
    from edgepack import api

    with err.status("setting up", spinner="dots") as status:
        env = api.emulator_setup(target, progress=status.update)
    state = "cache hit" if env.cache_hit else f"built in {env.setup_s:.1f} s"
    out.print(f"{target}: {env.path} ({state})")


@emulator_app.command("list")
def emulator_list(as_json: JsonOpt = False) -> None:
    """List the cached environments."""
    from edgepack import api

    entries = api.emulator_list()
    if as_json:
        out.print_json(json.dumps(entries, default=str))
        return
    for entry in entries:
        out.print(f"{Path(entry['path']).name}  {entry['size_bytes'] / 2**20:.0f} MiB")
    if not entries:
        out.print("no cached environments")


@emulator_app.command("remove")
def emulator_remove(name: Annotated[str, typer.Argument(help="Target name, or an entry name from `list`.")]) -> None:
    """Remove a cached environment."""
    from edgepack import api
    from edgepack.errors import UsageError

    if not api.emulator_remove(name):
        raise UsageError(f"no cached environment {name!r}.", hint="See `edgepack emulator list`.")
    out.print(f"removed {name}")


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; edgepack errors become one line on stderr and their exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    # The CLI owns its process: keep TensorFlow's C++ logging and OpenVINO/NNCF telemetry quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("NNCF_CI", "1")
    _terminate_like_interrupt()
    if not debug:
        # Finalizers of frameworks interrupted mid-import report "Exception ignored in ..." tracebacks; they are
        # not ours to show (--debug keeps them).
        sys.unraisablehook = lambda _unraisable: None
    try:
        app(args=argv, prog_name="edgepack")  # Typer/click print usage errors themselves (exit 2)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except EdgepackError as exc:
        if _SIGNALLED:
            _exit_interrupted(_SIGNALLED[0] != signal.SIGINT)
        if debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from edgepack.atomic import Terminated

        _exit_interrupted(isinstance(exc, Terminated))
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if _SIGNALLED:
            _exit_interrupted(_SIGNALLED[0] != signal.SIGINT)
        if debug:
            raise
        internal = InternalError(f"internal error: {exc!r}.", hint="Rerun with --debug and report it.")
        _print_error(internal)
        return internal.exit_code
    return 0


_SIGNALLED: list[int] = []


def _terminate_like_interrupt() -> None:
    """SIGINT and SIGTERM unwind the run (cleaning staging folders) and are remembered.

    A framework interrupted in the middle of its import can surface the interrupt as another error (an
    ImportError, "missing dependency"); remembering the signal lets ``main`` report what really happened.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupted(signum: int, frame: Any) -> None:
        from edgepack.atomic import Terminated

        _SIGNALLED.append(signum)
        raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)


def _exit_interrupted(terminated: bool) -> None:
    err.print("edgepack: interrupted; no partial bundle was left behind.")
    # Staging folders were removed as the interrupt unwound. Leave now: a framework interrupted in the middle
    # of its import (TensorFlow) would print tracebacks from its finalizers during a normal shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143 if terminated else 130)


def _print_error(exc: EdgepackError) -> None:
    err.print(f"edgepack: error [{exc.kind}]: {exc.one_line()}", highlight=False, markup=False, soft_wrap=True)
