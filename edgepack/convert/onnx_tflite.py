"""ONNX -> .tflite with onnx2tf, run offline in a child process.

onnx2tf is isolated in its own Python process because importing it changes the
importing process for good: it sets the recursion limit to 2**31-1, installs
warning filters, seeds the global RNGs, enables TF op determinism and sets
``TF_USE_LEGACY_KERAS=1`` (which breaks Keras 3 in that process). Its other habits:

* it overwrites its input ONNX in place (after running the ``onnxsim`` command,
  which must be on PATH): it gets a copy, with the source's static shapes;
* for image models with a static batch (4-D inputs whose last dim is 3) it
  downloads a sample ``.npy`` from GitHub and crashes offline (onnx2tf issue #932);
  no option of 1.28.8 turns that off (it only reads the file from the working
  folder, PR #433), so the child replaces the download with seeded random images;
* it transposes NCHW inputs to NHWC unless named in
  ``keep_ncw_or_nchw_or_ncdhw_input_names``: every 3-D to 5-D input is named, so
  the .tflite takes the ONNX model's layout. 4-D outputs still come out NHWC;
  ``meta["transposed_outputs"]`` lists them with the permutation from the ONNX layout.

onnx2tf converts node by node and fails on graphs as PyTorch exports them (shape checks in
``If`` nodes, shape arithmetic, an STFT Conv whose channels are sliced). So the graph is first
prepared (``onnx2tf_prep``: folded with onnxslim, constant ``If``s inlined, channel Slices of a
Conv split into Convs, each step checked in onnxruntime), then onnx2tf runs rung by rung
(``onnx2tf_retry.ladder``: its documented options for the graph's kind first) until a .tflite
agrees with onnxruntime. ``meta["attempts"]`` records every rung; when none works, the error
names the ONNX node onnx2tf stopped at and what to change in the model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert.onnx2tf_prep import graph_kind, prepare
from edgepack.convert.onnx2tf_retry import (
    Attempt,
    Failure,
    advice,
    disagreement,
    first_node,
    ladder,
    node_op_type,
    parse_failure,
)
from edgepack.convert.onnx_fix import fix_input_shapes, load_onnx, save_onnx
from edgepack.deps import require
from edgepack.errors import ConversionError
from edgepack.modelio import describe, read_specs
from edgepack.tools import first_line, fresh_dir, tool_meta

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions

TIMEOUT_S = 1800
_NHWC_FROM_NCHW = (0, 2, 3, 1)

_CHILD = """
import json, sys
import numpy as np
import onnx2tf.onnx2tf as onnx2tf_main

def offline_sample_images():
    return np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)

onnx2tf_main.download_test_image_data = offline_sample_images
onnx2tf_main.convert(**json.loads(sys.argv[1]))
"""


def _child_env() -> tuple[dict[str, str], bool]:
    """The child's environment, with this interpreter's scripts (``onnxsim``) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("PYTHONHASHSEED", "0")
    return env, shutil.which("onnxsim", path=env["PATH"]) is not None


def _run_onnx2tf(onnx_path: Path, out: Path, keep_names: list[str], attempt: Attempt) -> Failure | None:
    """Run one attempt in a child process; None when it finished, else why it failed."""
    env, has_onnxsim = _child_env()
    args = {
        "input_onnx_file_path": str(onnx_path),
        "output_folder_path": str(out),
        "keep_ncw_or_nchw_or_ncdhw_input_names": keep_names or None,
        "copy_onnx_input_output_names_to_tflite": True,
        # a prepared graph is folded already (Ultralytics' way); onnx2tf's own onnxsim runs on the raw one only
        "not_use_onnxsim": attempt.prepared or not has_onnxsim,
        "non_verbose": True,
        **attempt.options,
    }
    kept = set(args.get("keep_shape_absolutely_input_names") or ())
    if kept:  # an input is kept one way or the other, not both
        args["keep_ncw_or_nchw_or_ncdhw_input_names"] = [name for name in keep_names if name not in kept] or None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(args)],
            cwd=onnx_path.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Failure(None, f"onnx2tf did not finish within {TIMEOUT_S} s")
    return parse_failure(done.stdout + done.stderr) if done.returncode != 0 else None


def _transposed(origins: Sequence[TensorSpec], actuals: Sequence[TensorSpec]) -> dict[str, list[int]]:
    """Outputs that onnx2tf turned from NCHW to NHWC: name -> permutation of the ONNX output."""
    moved = {}
    for origin, actual in zip(origins, actuals, strict=False):
        nhwc = tuple(origin.shape[i] for i in _NHWC_FROM_NCHW) if len(origin.shape) == 4 else None
        if nhwc and tuple(actual.shape) != tuple(origin.shape) and tuple(actual.shape) == nhwc:
            moved[actual.name] = list(_NHWC_FROM_NCHW)
    return moved


def _scalar_inputs(
    src: Artifact, specs: tuple[list[TensorSpec], list[TensorSpec]], facts: dict[str, Any]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Declare the source's scalar inputs as scalars: Keras gives them shape ``[None]`` in the .tflite.

    LiteRT takes a scalar there once the input is resized to ``[]`` (``strict=False``).
    """
    scalars = {spec.name for spec in src.inputs if spec.shape == ()}
    inputs = []
    for spec in specs[0]:
        if spec.name in scalars and tuple(spec.shape) in ((None,), (1,)):
            spec = spec.with_shape(())
            facts.setdefault("scalar_inputs", []).append(spec.name)
        inputs.append(spec)
    return inputs, specs[1]


def _attempt(job: Path, graph: Any, src: Artifact, attempt: Attempt, reference: Any) -> dict[str, Any]:
    """Run one rung in ``job`` and check its .tflite against onnxruntime; the record for the meta."""
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    onnx_copy = job / "model.onnx"
    save_onnx(graph, onnx_copy)
    keep = [spec.name for spec in src.inputs if 3 <= len(spec.shape) <= 5]
    started = time.perf_counter()
    failure = _run_onnx2tf(onnx_copy, job / "out", keep, attempt)
    record: dict[str, Any] = {"attempt": attempt.label, "options": attempt.options, "prepared": attempt.prepared}
    record["seconds"] = round(time.perf_counter() - started, 1)
    produced = job / "out" / "model_float32.tflite"
    if failure is None and not produced.is_file():
        failure = Failure(None, f"onnx2tf finished without writing {produced.name}")
    if failure is not None:
        node = failure.node or first_node(graph, failure.op_type)
        op_type = failure.op_type or node_op_type(graph, node)
        record.update(error=failure.reason, node=node, op_type=op_type, unsupported=failure.unsupported)
        return {**record, "ok": False}
    try:
        error, why = disagreement(produced, reference, src.inputs)
    except Exception as exc:  # noqa: BLE001 - a .tflite LiteRT cannot run is a failed rung
        error, why = float("inf"), f"LiteRT cannot run the .tflite ({first_line(exc)[:200]})"
    record["max_relative_error"] = error if error != float("inf") else None
    return {**record, "ok": why is None, "error": why} if why else {**record, "ok": True}


def _what_to_change(culprit: dict[str, Any]) -> str:
    if culprit.get("unsupported"):
        return (
            f"export the model without {culprit['op_type']} ops (onnx2tf has no converter for them), "
            "or target a runtime that takes ONNX (onnxruntime, openvino)"
        )
    return advice(culprit.get("op_type"))


def _final_error(tried: list[dict[str, Any]]) -> ConversionError:
    """One error for a ladder where no rung worked: the ONNX node onnx2tf stopped at and what to change."""
    named = [record for record in tried if record.get("node")]
    counts = Counter(record["node"] for record in named)
    plural = "" if len(tried) == 1 else "s"
    summary = "; ".join(f"{record['attempt']}: {record['error']}"[:160] for record in tried)
    if named:
        node = counts.most_common(1)[0][0]
        culprit = next(record for record in named if record["node"] == node)
        op = f" ({culprit['op_type']})" if culprit.get("op_type") else ""
        return ConversionError(
            f"onnx2tf could not convert ONNX node {node}{op} ({len(tried)} attempt{plural}: {summary}).",
            hint=f"To convert it, {_what_to_change(culprit)}.",
        )
    return ConversionError(
        f"no onnx2tf attempt gave a .tflite that matches the ONNX model ({summary}).",
        hint=f"To convert it, {advice(None)}.",
    )


def _run_ladder(src: Artifact, job: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare the graph and run the ladder until a rung agrees with onnxruntime; (prep facts, attempts).

    Raises:
        ConversionError: no rung gave an agreeing .tflite.
    """
    model = load_onnx(src.path)
    fix_input_shapes(model, src.inputs)
    prepared, prep = prepare(model, src.inputs)
    kind = graph_kind(prepared, src.inputs)
    prep["output_shapes"] = [  # static once the inputs are: what onnxruntime returns
        [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        for value in prepared.graph.output
    ]
    tried: list[dict[str, Any]] = []
    deadline = time.perf_counter() + TIMEOUT_S
    for attempt in ladder(kind, src.inputs):
        record = _attempt(job, prepared if attempt.prepared else model, src, attempt, model)
        tried.append(record)
        if record["ok"]:
            return {**prep, "graph_kind": kind}, {
                "attempts": tried,
                "chosen": attempt.label,
                "options": attempt.options,
            }
        if record.get("unsupported") or time.perf_counter() > deadline:
            break
    raise _final_error(tried)


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert an ONNX source to ``workdir/model.tflite`` (fp32, or fp16 weights for precision "fp16").

    The graph is prepared first (``onnx2tf_prep``), then onnx2tf runs rung by rung
    (``onnx2tf_retry.ladder``) until a .tflite agrees with onnxruntime. ``meta["prepare"]`` says
    what the preparation did; ``meta["attempts"]`` lists every rung: its options, its error
    (the ONNX node onnx2tf stopped at) or its agreement. The float SavedModel of the rung that
    worked is kept in ``workdir/saved_model`` (``meta["saved_model"]``): int8 quantization
    (``edgepack.quantize.litert``) starts from it.

    Raises:
        ModelError: the source is not a readable ONNX model.
        ConversionError: no rung converts the model; the error names the ONNX node and what to change.
    """
    require("onnx2tf")  # fail early, in this process, with the install command
    workdir = fresh_dir(workdir).resolve()  # the child runs in another folder
    started = time.perf_counter()
    job = workdir / "onnx2tf"
    prep, ladder_facts = _run_ladder(src, job)
    suffix = "float16" if options.precision == "fp16" else "float32"
    produced = job / "out" / f"model_{suffix}.tflite"
    if not produced.is_file():
        raise ConversionError(f"onnx2tf finished without writing {produced.name}.", hint="Report it as a bug.")
    path = workdir / "model.tflite"
    shutil.move(produced, path)
    facts: dict[str, Any] = {"prepare": prep, **ladder_facts}
    if (job / "out" / "saved_model.pb").is_file():  # the float graph: int8 quantization starts from it
        for extra in (job / "out").glob("*.tflite"):
            extra.unlink()
        shutil.rmtree(workdir / "saved_model", ignore_errors=True)
        shutil.move(job / "out", workdir / "saved_model")
        facts["saved_model"] = str(workdir / "saved_model")
    shutil.rmtree(job, ignore_errors=True)
    specs = _scalar_inputs(src, read_specs(path, ModelFormat.TFLITE), facts)
    moved = _transposed(src.outputs, specs[1])
    if moved:
        facts["transposed_outputs"] = moved
    unit = {
        actual.name: shape
        for shape, actual in zip(prep["output_shapes"], specs[1], strict=False)
        if actual.name not in moved and None not in shape and list(actual.shape) != shape
    }
    if unit:  # onnx2tf moved a size-1 dim (e.g. an LSTM state (2, 1, 128) as (1, 2, 128)): same data, reshape
        facts["reshaped_outputs"] = unit
    meta = tool_meta("onnx2tf", precision=options.precision, seconds=round(time.perf_counter() - started, 3), **facts)
    return describe(src, path, ModelFormat.TFLITE, specs, meta=meta)
