"""``edgepack compress``: clip, prune and distill, a thin Typer layer over :mod:`edgepack.compress`.

Registered in :mod:`edgepack.cli` with ``app.add_typer(compress_app, name="compress")``. Nothing
heavy is imported here; errors are edgepack errors, turned into exit codes by ``edgepack.cli.main``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from edgepack.cli_options import JsonOpt, TrustOpt, err, flag, out

compress_app = typer.Typer(
    help="Compress a model beyond quantization (clip, prune, distill) and show what it buys on the target.",
    no_args_is_help=True,
)

ModelArg = Annotated[Path, typer.Argument(help="Model: .keras, .h5 (or .onnx for clip).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Where to write the compressed model (.keras, .h5, .onnx).")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Samples: .npz (x, optional labels y), .npy, or a folder of .npy/images.")
]
ForceOpt = Annotated[bool, flag("--force", help="Replace OUT if it exists.")]
NoLatencyOpt = Annotated[bool, flag("--no-latency", help="Skip timing both models on the host.")]
SparsityOpt = Annotated[float, typer.Option("--sparsity", help="Share to remove, in [0, 1): 0.5 = half.")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="Unstructured: 'layer' (share per kernel) or 'global'.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Fine-tune epochs on --data (0: none).")]


@contextmanager
def _progress(as_json: bool) -> Iterator[Callable[[str], None] | None]:
    if as_json:
        yield None
        return
    with err.status("compressing", spinner="dots") as status:
        yield status.update


@compress_app.command("clip")
def clip_command(
    model: ModelArg,
    out_path: OutOpt,
    threshold: Annotated[float | None, typer.Option("--threshold", help="Zero weights with |w| < T.")] = None,
    sparsity: Annotated[float | None, typer.Option("--sparsity", help="Zero this share of weights.")] = None,
    scope: ScopeOpt = "layer",
    data: DataOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    no_latency: NoLatencyOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Zero the smallest Conv/Dense weights of MODEL (Keras or ONNX): the compressed archive shrinks."""
    from edgepack.compress import clip

    with _progress(as_json):
        report = clip(
            model,
            out=out_path,
            threshold=threshold,
            sparsity=sparsity,
            scope=scope,
            data=data,
            force=force,
            latency=not no_latency,
            trust_code=trust,
        )
    _print_report(report, as_json)


@compress_app.command("prune")
def prune_command(
    model: ModelArg,
    out_path: OutOpt,
    sparsity: SparsityOpt,
    structured: Annotated[bool, flag("--structured", help="Remove whole filters and units.")] = False,
    scope: ScopeOpt = "layer",
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Structured: layers to leave alone (comma list, repeatable).")
    ] = None,
    data: DataOpt = None,
    epochs: EpochsOpt = 5,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    no_latency: NoLatencyOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Prune MODEL (Keras) and fine-tune it on --data: structured pruning makes it smaller and faster."""
    from edgepack.compress import prune

    names = tuple(n.strip() for item in exclude or [] for n in item.split(",") if n.strip())
    with _progress(as_json) as progress:
        report = prune(
            model,
            out=out_path,
            sparsity=sparsity,
            structured=structured,
            scope=scope,
            exclude=names,
            data=data,
            epochs=epochs,
            force=force,
            latency=not no_latency,
            trust_code=trust,
            progress=progress,
        )
    _print_report(report, as_json)


@compress_app.command("distill")
def distill_command(
    teacher: Annotated[Path, typer.Argument(help="Teacher model: .keras or .h5.")],
    out_path: OutOpt,
    student: Annotated[str, typer.Option("--student", help="width=0.5 (teacher scaled) or a .keras/.h5 file.")],
    data: Annotated[Path, typer.Option("--data", help="Training samples, labelled or not (.npz, .npy, folder).")],
    temperature: Annotated[float, typer.Option("--temperature", help="Softening temperature.")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the hard-label loss (with labels).")] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", help="Epoch budget.")] = 30,
    patience: Annotated[int, typer.Option("--patience", help="Stop after N epochs without improvement.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the student's weights and shuffling.")] = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    no_latency: NoLatencyOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Train a smaller student on TEACHER's soft outputs, with early stopping on a held-out split."""
    from dataclasses import replace

    from edgepack.compress import distill
    from edgepack.compress.distill import DISTILL

    options = replace(DISTILL, temperature=temperature, alpha=alpha, epochs=epochs, patience=patience)
    with _progress(as_json) as progress:
        report = distill(
            teacher,
            student=student,
            data=data,
            out=out_path,
            options=options,
            seed=seed,
            force=force,
            latency=not no_latency,
            trust_code=trust,
            progress=progress,
        )
    _print_report(report, as_json)


# ----------------------------------------------------------------------------- output


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{value / 1024:.1f} KiB"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "ms":
        return f"{value:.3f} ms"
    return f"{value:,}"


def _change(before: Any, after: Any, kind: str) -> str:
    if before is None or after is None:
        return ""
    if kind == "pct":
        return f"{100 * (after - before):+.1f} pts"
    return f"{after / before:.2f}x" if before else ""


def _rows(report: Any) -> list[tuple[str, Any, Any, str]]:
    b, a = report.before, report.after
    rows = [
        ("file size", b.file_bytes, a.file_bytes, "bytes"),
        ("gzip archive", b.archive_bytes, a.archive_bytes, "bytes"),
        ("parameters", b.params, a.params, "int"),
        ("non-zero parameters", b.nonzero_params, a.nonzero_params, "int"),
        ("MACs", b.macs, a.macs, "int"),
        ("accuracy", b.accuracy, a.accuracy, "pct"),
        ("agreement with original", None, a.agreement, "pct"),
    ]
    if report.latency is not None:
        lat = report.latency
        rows.append((f"latency ({lat.runtime}, 1 thread)", lat.before_ms, lat.after_ms, "ms"))
    return rows


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    from rich.table import Table

    table = Table(title=f"{report.method}: {report.model} -> {report.output}")
    for column in ("", "before", "after", "change"):
        table.add_column(column)
    for label, before, after, kind in _rows(report):
        table.add_row(label, _fmt(before, kind), _fmt(after, kind), _change(before, after, kind))
    out.print(table)
    layers = Table(title="per layer")
    for column in ("layer", "op", "params", "sparsity", "channels"):
        layers.add_column(column)
    for layer in report.layers:
        channels = "" if layer.channels_before is None else f"{layer.channels_before} -> {layer.channels_after}"
        params = f"{layer.params_before:,}" + (
            "" if layer.params_after == layer.params_before else f" -> {layer.params_after:,}"
        )
        layers.add_row(layer.name, layer.op, params, f"{100 * layer.sparsity:.1f}%", channels)
    out.print(layers)
    if report.training is not None:
        t = report.training
        stop = f", stopped early (best epoch {t.best_epoch})" if t.stopped_early else ""
        out.print(f"trained {t.epochs_run}/{t.epochs_requested} epochs on {t.train_samples} samples{stop}")
    for note in report.notes:
        out.print(f"note: {note}")
