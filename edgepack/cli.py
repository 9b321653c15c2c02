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

from edgepack.cli_batch import batch
from edgepack.cli_compress import compress_app
from edgepack.cli_options import (
    JsonOpt,
    ModelArg,
    PackageFlags,
    ShapeOpt,
    err,
    flag,
    out,
    with_common,
)
from edgepack.cli_release import release
from edgepack.cli_summary import print_plan, print_result
from edgepack.cli_tools import check, emulator_app, keygen, verify
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
app.add_typer(emulator_app, name="emulator")
for _command in (verify, keygen, check, release, batch):
    app.command()(_command)


def _print_version(value: bool) -> None:
    if value:
        from edgepack.version import __version__

        out.print(f"edgepack {__version__}")
        raise typer.Exit()


_DEBUG: list[bool] = [False]  # set by main() from --debug, wherever it stands on the command line


@app.callback()
def _main(
    debug: Annotated[
        bool, flag("--debug", help="Show tracebacks and tools' full messages (anywhere on the line).")
    ] = False,
    version: Annotated[
        bool, flag("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    _DEBUG[0] = _DEBUG[0] or debug


def _run_package(model: Path, targets: list[Any], opts: PackageFlags, compress: dict[str, Any] | None = None) -> None:
    """Plan (``--dry-run``) or run ``edgepack.package`` with the shared flags of every packaging command."""
    from edgepack import api

    if opts.dry_run:
        plan, refused = api.preflight(  # what the real run would refuse before converting anything
            model,
            targets=targets,
            out=opts.out_dir,
            precision=opts.precision,
            input_shapes=opts.input_shape,
            data=opts.data,
            eval_data=opts.eval_data,
            preprocess=_key_values(opts.preprocess),
            force=opts.force,
            trust_code=opts.trust,
        )
        out.print_json(json.dumps(plan.to_dict())) if opts.as_json else print_plan(plan)
        for name, problem in refused.items():
            err.print(f"✗ {name}: {problem.one_line()}", highlight=False, markup=False)
        if refused:
            raise next(iter(refused.values()))
        return
    from edgepack.cli_capture import frameworks_to_log

    result, failure = None, None
    with frameworks_to_log(enabled=not _DEBUG[0]) as captured, err.status("starting", spinner="dots") as status:
        try:
            result = api.package(
                model,
                targets=targets,
                out=opts.out_dir,
                input_shapes=opts.input_shape,
                data=opts.data,
                force=opts.force,
                trust_code=opts.trust,
                device_check=not opts.no_check,
                device_workers=opts.device_workers,
                sign_key=opts.sign,
                precision=opts.precision,
                allow_accuracy_drop=opts.allow_drop,
                compress=compress,
                quantize=_quantize_flags(opts),
                eval_data=opts.eval_data,
                preprocess=_key_values(opts.preprocess),
                timestamp=opts.timestamp,
                debug=_DEBUG[0],
                progress=status.update,
            )
        except EdgepackError as exc:
            failure, result = exc, exc.result
    if result is not None:
        captured.write_into([t.bundle for t in result.targets if t.bundle is not None])
        print_result(result, opts.as_json)
    if failure is not None:
        raise failure


def _quantize_flags(opts: PackageFlags) -> dict[str, Any]:
    flags = {"method": opts.calibration_method, "samples": opts.calibration_samples}
    if opts.per_tensor:
        flags["per_channel"] = False
    if opts.symmetric_activations:
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
    wide = out.width >= 120  # descriptions only where they fit; a narrow terminal keeps one row per target
    table = Table(title="edgepack targets")
    table.add_column("name", no_wrap=True)
    for column in ("format", "runtime", "arch", "precision", *(("description",) if wide else ())):
        table.add_column(column, no_wrap=not wide)
    for p in profiles:
        row = [p.name, p.format.value, p.runtime.value, p.arch.value, p.precision.value]
        table.add_row(*row, *((p.description,) if wide else ()))
    out.print(table)
    if not wide:
        out.print("descriptions: `edgepack targets show NAME`, or a terminal 120 columns wide", highlight=False)


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


@app.command()
@with_common
def package(
    model: ModelArg,
    target: Annotated[list[str], typer.Option("--target", "-t", help="Target name, profile .toml, or 'all'.")],
    prune: Annotated[float | None, typer.Option("--prune", help="Prune this fraction of weights first.")] = None,
    structured: Annotated[bool, flag("--structured", help="With --prune: remove whole channels.")] = False,
    clip: Annotated[float | None, typer.Option("--clip", help="Zero this fraction of smallest weights first.")] = None,
    distill_student: Annotated[
        str | None, typer.Option("--distill-student", help="Distill into a student first: width=0.5 or a .keras file.")
    ] = None,
    opts: PackageFlags | None = None,
) -> None:
    """Package MODEL for one or more targets (optionally compressed first)."""
    compress: dict[str, Any] = {}
    if distill_student:
        compress["distill"] = {"student": distill_student}
    if prune is not None:
        compress["prune"] = {"sparsity": prune, "structured": structured}
    if clip is not None:
        compress["clip"] = {"sparsity": clip}
    _run_package(model, target, opts or PackageFlags(), compress)


@app.command()
@with_common
def android(
    model: ModelArg,
    gpu: Annotated[bool, flag("--gpu", help="fp16 model for LiteRT's GPU delegate.")] = False,
    opts: PackageFlags | None = None,
) -> None:
    """Package MODEL for Android phones (LiteRT .tflite)."""
    _run_package(model, ["android-arm64-gpu" if gpu else "android-arm64"], opts or PackageFlags())


_RPI = {
    ("pi4", "litert"): "rpi4-arm64",
    ("pi5", "litert"): "rpi5-arm64",
    ("armv7", "litert"): "rpi-armv7",
    ("pi4", "onnxruntime"): "rpi4-arm64-onnxruntime",
    ("pi5", "onnxruntime"): "rpi5-arm64-onnxruntime",
}


@app.command()
@with_common
def rpi(
    model: ModelArg,
    board: Annotated[str, typer.Option("--board", help="pi4, pi5 (64-bit OS) or armv7 (32-bit OS).")] = "pi4",
    runtime: Annotated[str, typer.Option("--runtime", help="litert or onnxruntime (64-bit only).")] = "litert",
    opts: PackageFlags | None = None,
) -> None:
    """Package MODEL for a Raspberry Pi."""
    from edgepack.errors import UsageError

    name = _RPI.get((board, runtime))
    if name is None:
        raise UsageError(
            f"no Raspberry Pi profile for --board {board} --runtime {runtime}.",
            hint="Boards: pi4, pi5, armv7; ONNX Runtime has no 32-bit ARM build (use litert on armv7).",
        )
    _run_package(model, [name], opts or PackageFlags())


@app.command()
@with_common
def openvino(model: ModelArg, opts: PackageFlags | None = None) -> None:
    """Package MODEL for Intel CPUs with OpenVINO (IR .xml + .bin)."""
    _run_package(model, ["intel-openvino-cpu"], opts or PackageFlags())


@app.command()
@with_common
def jetson(
    model: ModelArg,
    jetpack: Annotated[str | None, typer.Option("--jetpack", help="JetPack version on the device, e.g. 6.1.")] = None,
    opts: PackageFlags | None = None,
) -> None:
    """Package MODEL for NVIDIA Jetson (ONNX + build_engine.sh for TensorRT; fp16 engine unless --precision)."""
    from edgepack.profiles import load_profile

    base = load_profile("jetson-orin-trt")
    assert base.tensorrt is not None
    known = sorted(base.tensorrt.jetpack_tensorrt)
    if jetpack is not None and jetpack not in known:
        from edgepack.errors import UsageError

        raise UsageError(
            f"--jetpack {jetpack} is not a JetPack edgepack knows.",
            hint="Use one of: " + ", ".join(f"{k} (TensorRT {base.tensorrt.jetpack_tensorrt[k]})" for k in known) + ".",
        )
    overrides = {"tensorrt": {"jetpack": jetpack}} if jetpack else {}
    _run_package(model, [load_profile("jetson-orin-trt", overrides=overrides)], opts or PackageFlags())


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; edgepack errors become one line on stderr and their exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    if debug:  # accepted before or after the command; the exit code stays the error's own
        args = ["--debug", *(a for a in args if a != "--debug")]
    _DEBUG[0] = debug
    # The CLI owns its process: keep TensorFlow's C++ logging and OpenVINO/NNCF telemetry quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("NNCF_CI", "1")
    _terminate_like_interrupt()
    if not debug:
        # Finalizers of frameworks interrupted mid-import report "Exception ignored in ..." tracebacks; they are
        # not ours to show (--debug keeps them).
        sys.unraisablehook = lambda _unraisable: None
    try:
        app(args=args, prog_name="edgepack")  # Typer/click print usage errors themselves (exit 2)
    except SystemExit as exc:
        if _SIGNALLED:  # Typer turns an interrupt into exit 130 itself: report it as ours (143 for SIGTERM)
            _exit_interrupted(_SIGNALLED[0] != signal.SIGINT)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except EdgepackError as exc:
        if _SIGNALLED:
            _exit_interrupted(_SIGNALLED[0] != signal.SIGINT)
        if debug:
            _print_traceback(exc)
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from edgepack.atomic import Terminated

        _exit_interrupted(isinstance(exc, Terminated))
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if _SIGNALLED:
            _exit_interrupted(_SIGNALLED[0] != signal.SIGINT)
        if debug:
            _print_traceback(exc)
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


def _print_traceback(exc: BaseException) -> None:
    """--debug: the whole chain of tracebacks (the tool's own exception and its full message included)."""
    import traceback

    sys.stderr.write("".join(traceback.format_exception(exc)))
    sys.stderr.flush()


def _print_error(exc: EdgepackError) -> None:
    err.print(f"edgepack: error [{exc.kind}]: {exc.one_line()}", highlight=False, markup=False, soft_wrap=True)
