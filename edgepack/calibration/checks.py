"""Checks of data against a model input: shape, dtype, NaN/Inf and integer range.

Each check returns problem strings (one short clause each) so the caller can collect every
problem and raise one :class:`~edgepack.errors.DataError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgepack.artifact import TensorSpec

if TYPE_CHECKING:
    from edgepack.calibration.sources import Rows

_CHUNK_BYTES = 32 << 20


def shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def batch_of(spec: TensorSpec) -> int:
    """Rows per sample: the input's static batch dimension, else 1."""
    first = spec.shape[0] if spec.shape else None
    return first if isinstance(first, int) and first > 0 else 1


def _fits(dims: Sequence[int], wanted: Sequence[int | None]) -> bool:
    return len(dims) == len(wanted) and all(w is None or w == d for d, w in zip(dims, wanted, strict=True))


def row_count(shape: Sequence[int], spec: TensorSpec) -> int | None:
    """Rows in data of ``shape`` for ``spec``: a batch ``N x shape[1:]``, or one sample without its batch dim.

    Returns:
        The number of rows, or None when the shape fits neither form.
    """
    if not spec.shape:
        return 1 if len(shape) == 0 else None
    if len(shape) == len(spec.shape) and _fits(shape[1:], spec.shape[1:]):
        return int(shape[0])
    if _fits(shape, spec.shape[1:]):
        return 1
    return None


def shape_problem(label: str, shape: Sequence[int], spec: TensorSpec) -> str:
    return (
        f"{label} has shape {shape_text(shape)} but input '{spec.name}' takes {shape_text(spec.shape)}"
        f" (give N x {shape_text(spec.shape[1:])} samples)"
    )


def dtype_problem(label: str, dtype: np.dtype, spec: TensorSpec) -> str | None:
    """None when ``dtype`` data may be cast to the input's dtype (float to float, int to int, bool to bool)."""
    src, dst = np.dtype(dtype), np.dtype(spec.dtype)
    same_kind = (src.kind == "f" and dst.kind == "f") or (src.kind in "iu" and dst.kind in "iu")
    if same_kind or (src.kind == "b" and dst.kind == "b"):
        return None
    return f"{label} is {src.name} data but input '{spec.name}' takes {dst.name} (convert the data to {dst.name})"


def needs_range_check(dtype: np.dtype, spec: TensorSpec) -> bool:
    src, dst = np.dtype(dtype), np.dtype(spec.dtype)
    return src.kind in "iu" and dst.kind in "iu" and not np.can_cast(src, dst, "safe")


def chunked(label: str, rows: Rows, stop: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(label, block)`` over the first ``stop`` rows, in blocks of about 32 MiB (never the whole array)."""
    from edgepack.calibration.sources import FileRows

    if isinstance(rows, FileRows):  # file by file, so a scan names the file
        yield from rows.chunks(stop)
        return
    row_bytes = max(1, int(np.prod(rows.shape[1:], dtype=np.int64)) * np.dtype(rows.dtype).itemsize)
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, stop, step):
        yield label, np.asarray(rows[start : min(stop, start + step)])


def scan(name: str, blocks: Iterable[tuple[str, np.ndarray]], spec: TensorSpec, dtype: np.dtype) -> list[str]:
    """Count NaN/Inf in float data, and values out of range for an integer input, block by block."""
    is_float = np.dtype(dtype).kind == "f"
    check_range = needs_range_check(dtype, spec)
    nan: dict[str, int] = {}
    inf: dict[str, int] = {}
    low, high = np.inf, -np.inf
    for where, block in blocks:
        if block.size == 0:
            continue
        if is_float:
            nan[where] = nan.get(where, 0) + int(np.isnan(block).sum())
            inf[where] = inf.get(where, 0) + int(np.isinf(block).sum())
        if check_range:
            low, high = min(low, int(block.min())), max(high, int(block.max()))
    problems = []
    for what, counts in (("NaN", nan), ("Inf", inf)):
        bad = {where: n for where, n in counts.items() if n}
        if bad:
            places = ", ".join(f"{n} in {where}" for where, n in list(bad.items())[:5])
            more = f" and {len(bad) - 5} more files" if len(bad) > 5 else ""
            problems.append(f"input '{name}' data has {sum(bad.values())} {what} values ({places}{more})")
    if check_range and low <= high:
        info = np.iinfo(np.dtype(spec.dtype))
        if low < info.min or high > info.max:
            problems.append(
                f"input '{name}' data spans {low}..{high}, outside {np.dtype(spec.dtype).name} ({info.min}..{info.max})"
            )
    return problems


def listing(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c and 4 more``."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
