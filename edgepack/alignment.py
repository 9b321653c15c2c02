"""Lining a candidate's runs up with a reference's: input layouts, output order and shapes, stacking samples.

A converted model may take NHWC where its source took NCHW, write its outputs in another order (a .tflite
keeps its tensors' order, its signature the names'), or move a size-1 dim; these helpers undo that so that
outputs are compared like for like (:mod:`edgepack.validate`, :mod:`edgepack.quantize.gate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from edgepack.artifact import TensorSpec
from edgepack.errors import ModelError

if TYPE_CHECKING:
    import numpy as np

LAYOUT_PERMUTATIONS: tuple[tuple[int, ...], ...] = ((0, 3, 1, 2), (0, 2, 3, 1))  # NHWC <-> NCHW


def input_permutations(source: Sequence[TensorSpec], target: Sequence[TensorSpec]) -> list[tuple[int, ...] | None]:
    """Per input, None when shapes agree, or the NHWC<->NCHW permutation that maps source onto target."""
    if len(source) != len(target):
        raise ModelError(f"the source has {len(source)} input(s), the artifact {len(target)}; they cannot be compared.")
    perms: list[tuple[int, ...] | None] = []
    for src, dst in zip(source, target, strict=True):
        if _fits(src.shape, dst.shape):
            perms.append(None)
            continue
        candidates = LAYOUT_PERMUTATIONS if len(src.shape) == 4 else ()
        perm = next((p for p in candidates if _fits(tuple(src.shape[i] for i in p), dst.shape)), None)
        if perm is None:
            raise ModelError(
                f"input '{dst.name}' of the artifact has shape {list(dst.shape)}, "
                f"the source's '{src.name}' {list(src.shape)}; they cannot be matched.",
                hint="Check the conversion's input shapes and layout.",
            )
        perms.append(perm)
    return perms


def _fits(shape: tuple[int | None, ...], other: tuple[int | None, ...]) -> bool:
    return len(shape) == len(other) and all(a is None or b is None or a == b for a, b in zip(shape, other, strict=True))


def size1_moved(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``candidate`` in ``reference``'s shape when they differ only in where size-1 dims stand.

    onnx2tf sometimes writes an LSTM state ``(2, 1, 128)`` as ``(1, 2, 128)``: the same data, another shape.
    """
    import numpy as np

    cand, ref = np.asarray(candidate), np.asarray(reference)
    squeezed = [d for d in cand.shape if d != 1] == [d for d in ref.shape if d != 1]
    if cand.shape != ref.shape and cand.size == ref.size and squeezed:
        return cand.reshape(ref.shape)
    return cand


def output_order(
    reference: Sequence[str], candidate: Sequence[TensorSpec], source_names: Mapping[str, str]
) -> list[int]:
    """For each reference output, the index of the candidate output that stands for it.

    Converters may reorder outputs (a .tflite keeps its tensors' order, its signature the names'):
    ``source_names`` (an artifact's ``meta["source_names"]``: its tensor name -> the source's) pairs
    them by name; without a full, one-to-one pairing the order is taken as it is.
    """
    position = {source_names.get(spec.name, spec.name): i for i, spec in enumerate(candidate)}
    order = [position.get(name) for name in reference]
    if len(candidate) != len(reference) or None in order or len(set(order)) != len(order):
        return list(range(len(candidate)))
    return [i for i in order if i is not None]


def permute(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    import numpy as np

    return array if perm is None else np.require(array.transpose(perm), requirements="C")


def gather(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per output, all samples with rows along axis 0: [N, ...] samples concatenate, 0-/1-D ones stack."""
    import numpy as np

    gathered = []
    for arrays in zip(*runs, strict=True):
        arrays = [np.asarray(a) for a in arrays]
        gathered.append(np.concatenate(arrays) if arrays[0].ndim >= 2 else np.stack(arrays))
    return gathered
