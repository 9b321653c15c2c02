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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepack.artifact import Artifact, ModelFormat, TensorSpec
from edgepack.convert._common import describe, fresh_dir, read_specs, tool_meta
from edgepack.convert.onnx_fix import fix_input_shapes, load_onnx, save_onnx
from edgepack.deps import require
from edgepack.errors import ConversionError

if TYPE_CHECKING:
    from edgepack.convert import ConvertOptions

TIMEOUT_S = 1800
_NHWC_FROM_NCHW = (0, 2, 3, 1)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

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


def _run_onnx2tf(onnx_path: Path, out: Path, keep_names: list[str]) -> dict[str, Any]:
    env, has_onnxsim = _child_env()
    args = {
        "input_onnx_file_path": str(onnx_path),
        "output_folder_path": str(out),
        "keep_ncw_or_nchw_or_ncdhw_input_names": keep_names or None,
        "copy_onnx_input_output_names_to_tflite": True,
        "not_use_onnxsim": not has_onnxsim,
        "non_verbose": True,
    }
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
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(
            f"onnx2tf did not finish within {TIMEOUT_S} s.", hint="Convert a smaller model, or convert it yourself."
        ) from exc
    if done.returncode != 0:
        raise ConversionError(
            f"onnx2tf could not convert the model ({_reason(done.stdout + done.stderr)}).",
            hint="Check that the model runs in onnxruntime; onnx2tf lacks some ops (see its README).",
        )
    return {"onnxsim": has_onnxsim}


def _reason(text: str) -> str:
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("I0000", "W0000", "WARNING: All log"))]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def _transposed(origins: Sequence[TensorSpec], actuals: Sequence[TensorSpec]) -> dict[str, list[int]]:
    """Outputs that onnx2tf turned from NCHW to NHWC: name -> permutation of the ONNX output."""
    moved = {}
    for origin, actual in zip(origins, actuals, strict=False):
        nhwc = tuple(origin.shape[i] for i in _NHWC_FROM_NCHW) if len(origin.shape) == 4 else None
        if nhwc and tuple(actual.shape) != tuple(origin.shape) and tuple(actual.shape) == nhwc:
            moved[actual.name] = list(_NHWC_FROM_NCHW)
    return moved


def convert(src: Artifact, workdir: Path, options: ConvertOptions) -> Artifact:
    """Convert an ONNX source to ``workdir/model.tflite`` (fp32, or fp16 weights for precision "fp16").

    The float SavedModel onnx2tf writes is kept in ``workdir/saved_model`` (``meta["saved_model"]``):
    int8 quantization (``edgepack.quantize.litert``) starts from it.

    Raises:
        ModelError: the source is not a readable ONNX model.
        ConversionError: onnx2tf fails or times out.
    """
    require("onnx2tf")  # fail early, in this process, with the install command
    workdir = fresh_dir(workdir).resolve()  # the child runs in another folder
    started = time.perf_counter()
    job = workdir / "onnx2tf"
    job.mkdir(exist_ok=True)
    model = load_onnx(src.path)
    fix_input_shapes(model, src.inputs)
    onnx_copy = job / "model.onnx"
    save_onnx(model, onnx_copy)
    keep = [spec.name for spec in src.inputs if 3 <= len(spec.shape) <= 5]
    facts = _run_onnx2tf(onnx_copy, job / "out", keep)
    suffix = "float16" if options.precision == "fp16" else "float32"
    produced = job / "out" / f"model_{suffix}.tflite"
    if not produced.is_file():
        raise ConversionError(f"onnx2tf finished without writing {produced.name}.", hint="Report it as a bug.")
    path = workdir / "model.tflite"
    shutil.move(produced, path)
    if (job / "out" / "saved_model.pb").is_file():  # the float graph: int8 quantization starts from it
        for extra in (job / "out").glob("*.tflite"):
            extra.unlink()
        shutil.move(job / "out", workdir / "saved_model")
        facts["saved_model"] = str(workdir / "saved_model")
    shutil.rmtree(job, ignore_errors=True)
    specs = read_specs(path, ModelFormat.TFLITE)
    moved = _transposed(src.outputs, specs[1])
    if moved:
        facts["transposed_outputs"] = moved
    meta = tool_meta("onnx2tf", precision=options.precision, seconds=round(time.perf_counter() - started, 3), **facts)
    return describe(src, path, ModelFormat.TFLITE, specs, meta=meta)
