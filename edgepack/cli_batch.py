"""The ``edgepack batch`` command: a thin layer over :func:`edgepack.fleet.batch` (no heavy imports)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgepack.cli_options import JsonOpt, err, flag, out


def batch(
    jobs: Annotated[Path, typer.Argument(help="JOBS.toml: targets = [...] and one \\[\\[models]] table per model.")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: OUT/<model>/<target>/, index.html, summary.json/.csv.")
    ],
    force: Annotated[bool, flag("--force", help="Recompute every cell, even those in the cache.")] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Run the cells as Ray tasks: auto, or a cluster address (HOST:PORT, ray://...)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Local worker processes (default: per core and memory).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Cache folder (default ~/.cache/edgepack/batch).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Package every model of a jobs file for every target, in parallel, reusing unchanged cells from the cache."""
    from edgepack.fleet import batch as run_batch
    from edgepack.fleet.progress import LiveDisplay

    if err.is_terminal and not as_json:
        with LiveDisplay(console=err) as display:
            result = run_batch(jobs, out_dir, force=force, ray=ray, workers=workers, cache=cache, progress=display)
    else:

        def say(line: str) -> None:
            err.print(line, highlight=False, markup=False, soft_wrap=True)

        result = run_batch(jobs, out_dir, force=force, ray=ray, workers=workers, cache=cache, progress=say)
    if as_json:
        out.print_json(json.dumps(json.loads((result.out / "summary.json").read_text())))
    else:
        print_cells(result)
    failure = result.error()
    if failure is not None:
        raise failure


def print_cells(result: object) -> None:
    """One line per cell (status, precision, size, agreement), then where the overview is."""
    from edgepack.fleet import BatchResult
    from edgepack.fleet.overview import figures

    assert isinstance(result, BatchResult)
    for record in result.cells:
        row = figures(record)
        if not record.ok:
            out.print(f"[red]✗[/red] {record.model}/{record.error}", highlight=False)
            continue
        size = "-" if row["size_bytes"] is None else f"{row['size_bytes'] / 1024:.1f} KiB"
        agree = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        state = "cached" if record.cached else "built"
        out.print(
            f"[green]✓[/green] {record.id}: {state}, {row['precision']}, {size}, top-1 agreement {agree}",
            highlight=False,
        )
    counts = f"{len(result.cells) - len(result.failures)} of {len(result.cells)} cells passed ({result.cached} cached)"
    out.print(f"{counts} in {result.seconds:.1f} s; overview: {result.out / 'index.html'}", highlight=False)
