"""Charts of a bundle report as PNG bytes, drawn with matplotlib's Agg renderer.

matplotlib is optional (``pip install 'edgepack[report]'``) and imported only
inside :func:`png`. Figures are built directly (no pyplot, so no global backend
or figure registry), text uses the DejaVu Sans font that ships inside
matplotlib, and math-text parsing is off, so names with ``$`` or ``_`` print as
they are.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

FLOAT_COLOR, INT8_COLOR, BEFORE_COLOR, AFTER_COLOR = "#d9822b", "#2b6cb0", "#8a8f98", "#2f855a"
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
}


def png(kind: str, title: str, data: Mapping[str, Any]) -> bytes | None:
    """The chart ``kind`` ("layers", "sizes" or "latency") as PNG bytes; None when there is nothing to draw.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    from edgepack.deps import require

    matplotlib = require("matplotlib")
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(dpi=110, layout="constrained")
        if not DRAW[kind](fig, data):
            return None
        text = "\n".join(textwrap.fill(line, 95) for line in title.splitlines())
        fig.suptitle(text, parse_math=False, fontsize=10, fontweight="bold")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def short_name(name: str, width: int = 40) -> str:
    """A layer name short enough for an axis: the last two path parts of its first fused name, middle elided.

    >>> short_name("model_1/block_1/conv1_1/Relu;model_1/block_1/bn1_1/add")
    'conv1_1/Relu'
    """
    short = "/".join(str(name).split(";")[0].strip("/").split("/")[-2:])
    return short if len(short) <= width else short[: width // 2 - 1] + "..." + short[-(width // 2 - 2) :]


def layer_label(row: Mapping[str, Any]) -> str:
    """A per-layer bar's label: the source model's layer where known, else the converter's name, shortened.

    >>> layer_label({"name": "m_1/relu1_1/Relu;m_1/bn1_1/add", "source": "relu1", "op": "CONV_2D"})
    'relu1 [CONV_2D]'
    >>> layer_label({"name": "m_1/relu1_1/Relu;m_1/bn1_1/add", "source": None, "op": "CONV_2D"})
    'relu1_1/Relu [CONV_2D]'
    """
    return f"{row.get('source') or short_name(str(row.get('name')))} [{row.get('op')}]"


def _number(value: Any) -> float | None:
    """A finite float, +inf for "inf", None for anything else (missing, NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or number == -math.inf else number


def _layers(fig: Any, data: Mapping[str, Any]) -> bool:
    """Horizontal bars of SQNR per layer, worst on top; layers kept in float in another colour.

    Bars are labelled by :func:`layer_label`.
    """
    scored = [(r, _number(r.get("sqnr_db"))) for r in data.get("layers") or []]
    rows = [(r, v) for r, v in scored if v is not None]
    if not rows:
        return False
    rows.sort(key=lambda rv: rv[1])
    finite = [v for _, v in rows if math.isfinite(v)] or [0.0]
    cap = max(finite) * 1.05 if max(finite) > 0 else 1.0
    fig.set_size_inches(8, 1.2 + 0.32 * len(rows))
    ax = fig.add_subplot()
    y = range(len(rows))
    widths = [min(v, cap) for _, v in rows]
    colors = [FLOAT_COLOR if r.get("float") else INT8_COLOR for r, _ in rows]
    ax.barh(y, widths, color=colors, height=0.7)
    labels = [layer_label(r) for r, _ in rows]
    ax.set_yticks(list(y), labels, parse_math=False, fontsize=8)
    ax.invert_yaxis()
    for i, (_, v) in enumerate(rows):
        ax.text(min(v, cap), i, f" {v:.1f}" if math.isfinite(v) else " inf", va="center", fontsize=7.5)
    ax.set_xlabel("SQNR (dB), float vs int8 output of each layer")
    ax.set_xlim(0, cap * 1.12)
    handles = [_patch(INT8_COLOR, "quantized")]
    if any(r.get("float") for r, _ in rows):
        handles.append(_patch(FLOAT_COLOR, "kept in float (repair)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return True


def _patch(color: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _sizes(fig: Any, data: Mapping[str, Any]) -> bool:
    """Horizontal bars of model file size (KiB), with the gzip size beside where known."""
    bars = [b for b in data.get("bars") or [] if isinstance(b.get("bytes"), int | float)]
    if len(bars) < 2:
        return False
    gzip = any(isinstance(b.get("gzip"), int | float) for b in bars)
    fig.set_size_inches(7, 1.3 + (0.55 if gzip else 0.4) * len(bars))
    ax = fig.add_subplot()
    height = 0.38 if gzip else 0.6
    colors = [BEFORE_COLOR, AFTER_COLOR] if gzip or len(bars) != 2 else [FLOAT_COLOR, INT8_COLOR]
    for i, bar in enumerate(bars):
        kib = bar["bytes"] / 1024
        offset = -height / 2 if gzip else 0.0
        ax.barh(i + offset, kib, height=height, color=colors[min(i, 1)])
        ax.text(kib, i + offset, f" {kib:,.1f} KiB", va="center", fontsize=8)
        if isinstance(bar.get("gzip"), int | float):
            zipped = bar["gzip"] / 1024
            ax.barh(i + height / 2, zipped, height=height, color=colors[min(i, 1)], alpha=0.45, hatch="//")
            ax.text(zipped, i + height / 2, f" {zipped:,.1f} KiB gzip", va="center", fontsize=8)
    ax.set_yticks(range(len(bars)), [str(b.get("label")) for b in bars], parse_math=False)
    ax.invert_yaxis()
    ax.set_xlabel("KiB (file" + (", and gzip -9 hatched)" if gzip else ")"))
    ax.set_xlim(0, max(b["bytes"] for b in bars) / 1024 * 1.3)
    return True


def _latency(fig: Any, data: Mapping[str, Any]) -> bool:
    """Strip plot of the wall-clock samples (log axis when they span more than 5x), median marked."""
    samples = sorted(v for v in (_number(s) for s in data.get("samples_ms") or []) if v and math.isfinite(v))
    if not samples:
        return False
    fig.set_size_inches(8, 2.4)
    ax = fig.add_subplot()
    jitter = [((i * 0.618) % 1.0 - 0.5) * 0.5 for i in range(len(samples))]  # deterministic spread
    ax.scatter(samples, jitter, s=22, color=INT8_COLOR, alpha=0.75, edgecolors="none")
    median = _number(data.get("median_ms")) or samples[len(samples) // 2]
    ax.axvline(median, color=FLOAT_COLOR, linewidth=1.5)
    ax.text(median, 0.42, f" median {median:.3g} ms", color=FLOAT_COLOR, fontsize=8, va="bottom")
    if samples[-1] / samples[0] > 5:
        ax.set_xlim(samples[0] / 1.15, samples[-1] * 1.15)
        _log_axis(ax)
    ax.set_ylim(-0.5, 0.6)
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_xlabel(f"ms per inference ({len(samples)} runs; one dot per run)")
    return True


def _log_axis(ax: Any) -> None:
    """A log x axis labelled with plain numbers (1, 2, 5 per decade), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if high / low > 30 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)  # labels near a tight cluster
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


DRAW: dict[str, Callable[[Any, Mapping[str, Any]], bool]] = {
    "layers": _layers,
    "sizes": _sizes,
    "latency": _latency,
}


def available() -> str | None:
    """None when charts can be drawn, else the reason (with the install command) they cannot."""
    from edgepack.deps import require
    from edgepack.errors import MissingDependencyError

    try:
        require("matplotlib")
    except MissingDependencyError as exc:
        return exc.one_line()
    return None
