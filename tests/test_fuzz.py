"""Bad input never crashes and nothing partial is written (issue #6, item 6).

A seeded corpus of corrupted inputs: truncated and bit-flipped models of every source format,
files of the wrong format, malformed profiles, bad calibration data and hostile bundle archives.
Each one must end in one edgepack error (never InternalError) with a one-line message, and leave
the output folder empty; a bit flip that still gives a valid model must give a complete bundle.
Most cases go through the Python API in this process (TensorFlow is imported once); a subset
goes through the real CLI in subprocesses, two at a time.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack import api
from edgepack.artifact import TensorSpec
from edgepack.calibration import load_dataset
from edgepack.errors import (
    DataError,
    EdgepackError,
    InternalError,
    ModelError,
    ProfileError,
    UsageError,
    VerificationError,
)
from edgepack.profiles import Profile, load_profile

ROOT = Path(__file__).resolve().parent.parent
SEED = 6  # issue number: the corpus is the same on every run
FAST_TARGET = {  # cheap targets: no emulator, no onnx2tf
    "onnx": "rpi4-arm64-onnxruntime",
    "tflite": "rpi4-arm64",
    "keras": "rpi4-arm64",
    "h5": "rpi4-arm64",
    "savedmodel": "rpi4-arm64",
}
ONNX_INPUT = TensorSpec("input", (1, 3, 16, 16), "float32")  # tiny_onnx_path's input


# --------------------------------------------------------------------------- the contract


def written(out: Path) -> list[str]:
    """Every path under ``out`` (the out folder must stay empty or absent after a failure)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


def assert_clean(exc: BaseException, out: Path | None = None) -> EdgepackError:
    """One of our errors (not a wrapped bug), a one-line message, and nothing in ``out``."""
    assert isinstance(exc, EdgepackError), f"not an edgepack error: {exc!r}"
    assert not isinstance(exc, InternalError), exc.one_line()
    line = exc.one_line()
    assert line and "\n" not in line
    assert "internal error" not in line and "Traceback" not in line, line
    if out is not None:
        assert written(out) == [], f"partial output after {type(exc).__name__}: {written(out)}"
    return exc


def fails_cleanly(action: Callable[[], Any], out: Path | None = None) -> EdgepackError:
    with pytest.raises(Exception) as info:  # noqa: PT011 - which error is the point of assert_clean
        action()
    return assert_clean(info.value, out)


def package(model: Path, target: str, out: Path, **kwargs: Any) -> Any:
    return api.package(model, targets=[target], out=out, device_check=False, **kwargs)


def package_outcome(model: Path, target: str, out: Path) -> str:
    """A damaged model either fails cleanly with nothing written, or (a harmless flip) gives a complete bundle."""
    try:
        result = package(model, target, out)
    except Exception as exc:  # noqa: BLE001 - checked by assert_clean
        assert_clean(exc, out)
        return "error"
    (done,) = result.targets
    assert done.archive is not None and done.archive.is_file()
    assert api.verify(done.archive).files_checked > 0 and api.verify(done.bundle).files_checked > 0
    return "bundle"


# --------------------------------------------------------------------------- damaged models


def cut_points(n: int) -> dict[str, int]:
    return {"0": 0, "1": 1, "7": 7, "half": n // 2, "len-1": n - 1}


HEADER_OFFSETS = {"onnx": (0, 1, 2), "tflite": (0, 4, 5, 7), "keras": (0, 3, 8, 26), "h5": (0, 4, 8, 12)}
SEEDED_FLIPS = 8


def flip(data: bytes, case: str, fmt: str) -> bytes:
    """Flip one bit: at a header offset (``h<offset>``) or at a seeded offset (``s<k>``)."""
    rng = random.Random(f"{SEED}-{fmt}-{case}")
    offset = int(case[1:]) if case.startswith("h") else rng.randrange(len(data))
    damaged = bytearray(data)
    damaged[offset] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def damage(data: bytes, case: str, fmt: str) -> bytes:
    if case.startswith("cut-"):
        return data[: cut_points(len(data))[case[4:]]]
    return flip(data, case, fmt)


CUTS = [f"cut-{k}" for k in cut_points(100)]
FILE_CASES = [
    (fmt, case)
    for fmt in ("onnx", "tflite", "keras", "h5")
    for case in [*CUTS, *(f"h{o}" for o in HEADER_OFFSETS[fmt]), *(f"s{k}" for k in range(SEEDED_FLIPS))]
]


@pytest.fixture(scope="module")
def originals(tiny_onnx_path, tiny_tflite_path, tiny_keras_path, tiny_h5_path, tiny_savedmodel_path) -> dict:
    return {
        "onnx": tiny_onnx_path,
        "tflite": tiny_tflite_path,
        "keras": tiny_keras_path,
        "h5": tiny_h5_path,
        "savedmodel": tiny_savedmodel_path,
    }


@pytest.mark.parametrize(("fmt", "case"), FILE_CASES, ids=[f"{f}-{c}" for f, c in FILE_CASES])
def test_damaged_model_file(originals: dict, tmp_path: Path, fmt: str, case: str) -> None:
    model = tmp_path / f"model.{fmt}"
    model.write_bytes(damage(originals[fmt].read_bytes(), case, fmt))
    outcome = package_outcome(model, FAST_TARGET[fmt], tmp_path / "out")
    if case.startswith("cut-"):
        assert outcome == "error"  # a truncated model is never taken for a whole one


INSPECT_CASES = [(f, c) for f, c in FILE_CASES if f in ("onnx", "tflite") or c.startswith("cut-")]


@pytest.mark.parametrize(("fmt", "case"), INSPECT_CASES, ids=[f"{f}-{c}" for f, c in INSPECT_CASES])
def test_damaged_model_inspect(originals: dict, tmp_path: Path, fmt: str, case: str) -> None:
    model = tmp_path / f"model.{fmt}"
    model.write_bytes(damage(originals[fmt].read_bytes(), case, fmt))
    try:
        api.inspect(model)
    except Exception as exc:  # noqa: BLE001
        assert_clean(exc)
    else:
        assert not case.startswith("cut-")


def _savedmodel_case(folder: Path, case: str) -> None:
    pb = folder / "saved_model.pb"
    if case == "no-variables":
        shutil.rmtree(folder / "variables")
    elif case == "empty-variables":
        for f in (folder / "variables").iterdir():
            f.unlink()
    elif case == "half-variables":
        for f in (folder / "variables").glob("*.data*"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif case == "no-pb":
        pb.unlink()
    elif case == "pb-is-folder":
        pb.unlink()
        pb.mkdir()
    else:
        pb.write_bytes(damage(pb.read_bytes(), case, "savedmodel"))


SAVEDMODEL_CASES = [
    *CUTS,
    "h0",
    "h2",
    *(f"s{k}" for k in range(4)),
    "no-variables",
    "empty-variables",
    "half-variables",
    "no-pb",
    "pb-is-folder",
]


@pytest.mark.parametrize("case", SAVEDMODEL_CASES)
def test_damaged_savedmodel(originals: dict, tmp_path: Path, case: str) -> None:
    model = tmp_path / "saved"
    shutil.copytree(originals["savedmodel"], model)
    _savedmodel_case(model, case)
    outcome = package_outcome(model, FAST_TARGET["savedmodel"], tmp_path / "out")
    if case.startswith("cut-") or "variables" in case or "pb" in case:
        assert outcome == "error"


# --------------------------------------------------------------------------- wrong formats


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _h5(path: Path, attrs: dict[str, Any]) -> None:
    import h5py

    with h5py.File(path, "w") as fh:
        fh.create_dataset("weights", data=np.zeros(4, np.float32))
        fh.attrs.update(attrs)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _onnx_with(edit: Callable[[Any], bytes | None]) -> bytes:
    from conftest import build_tiny_onnx

    model = build_tiny_onnx(1)
    edited = edit(model)
    return edited if edited is not None else model.SerializeToString()


def _untyped_input(model: Any) -> None:  # a sequence/map input, or a damaged type
    model.graph.input[0].type.tensor_type.elem_type = 0


def _empty_graph(model: Any) -> None:
    del model.graph.node[:]


def _binary_op_type(model: Any) -> bytes:
    data = model.SerializeToString()
    return data.replace(b"GlobalAveragePool", b"GlobalAverage\xa2#(\xd2")


def _lambda_keras(path: Path) -> None:
    config = {"class_name": "Functional", "config": {"layers": [{"class_name": "Lambda", "config": {"name": "f"}}]}}
    _zip(path, {"config.json": json.dumps(config).encode(), "metadata.json": b"{}"})


def _tflite_edited(edit: Callable[[Any], None]) -> Callable[[Path], None]:
    """A maker of the tiny .tflite (``tiny.tflite`` beside the target) with ``edit`` applied to its object tree."""

    def make(path: Path) -> None:
        import flatbuffers

        from edgepack.macs import load_tflite

        model = load_tflite(path.parent / "tiny.tflite")
        edit(model)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        path.write_bytes(bytes(builder.Output()))

    return make


def _set(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)


WRONG_FORMATS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "png-named-onnx": ("model.onnx", lambda p: p.write_bytes(_png())),
    "png-named-tflite": ("model.tflite", lambda p: p.write_bytes(_png())),
    "zip-without-config-named-keras": ("model.keras", lambda p: _zip(p, {"weights.h5": b"x"})),
    "empty-zip-named-keras": ("model.keras", lambda p: _zip(p, {})),
    "keras-config-not-json": ("model.keras", lambda p: _zip(p, {"config.json": b"{not json"})),
    "keras-config-a-list": ("model.keras", lambda p: _zip(p, {"config.json": b"[1, 2]"})),
    "keras-config-nested-900": ("model.keras", lambda p: _zip(p, {"config.json": b"[" * 900 + b"]" * 900})),
    "keras-lambda-untrusted": ("model.keras", _lambda_keras),
    "h5-without-model-config": ("model.h5", lambda p: _h5(p, {})),
    "h5-model-config-garbage": ("model.h5", lambda p: _h5(p, {"model_config": "{{{"})),
    "h5-model-config-wrong-class": ("model.h5", lambda p: _h5(p, {"model_config": '{"class_name": "Nope"}'})),
    "pickle-named-onnx": ("model.onnx", lambda p: p.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))),
    "pickle-named-pkl": ("model.pkl", lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=2))),
    "torch-checkpoint": (
        "model.pt",
        lambda p: _zip(p, {"archive/data.pkl": b"\x80\x02}q\x00.", "archive/version": b"3"}),
    ),
    "openvino-xml": ("model.xml", lambda p: p.write_text('<?xml version="1.0"?>\n<net name="x"></net>\n')),
    "text-file": ("model.onnx", lambda p: p.write_text("hello, I am not a model\n")),
    "tflite-magic-then-garbage": ("model.tflite", lambda p: p.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 200)),
    "tflite-tensor-index-out-of-range": (
        "model.tflite",
        _tflite_edited(lambda m: _set(m.subgraphs[0].operators[0], "inputs", np.array([9999, 1, 2], np.int32))),
    ),
    "tflite-operator-without-inputs": (
        "model.tflite",
        _tflite_edited(lambda m: _set(m.subgraphs[0].operators[1], "inputs", None)),
    ),
    "tflite-opcode-out-of-range": (
        "model.tflite",
        _tflite_edited(lambda m: _set(m.subgraphs[0].operators[0], "opcodeIndex", 77)),
    ),
    "tflite-no-subgraph": ("model.tflite", _tflite_edited(lambda m: _set(m, "subgraphs", []))),
    "tflite-name-not-utf8": (
        "model.tflite",
        _tflite_edited(lambda m: _set(m.subgraphs[0].tensors[0], "name", b"in\xa4put")),
    ),
    "onnx-untyped-input": ("model.onnx", lambda p: p.write_bytes(_onnx_with(_untyped_input))),
    "onnx-empty-graph": ("model.onnx", lambda p: p.write_bytes(_onnx_with(_empty_graph))),
    "onnx-op-type-not-utf8": ("model.onnx", lambda p: p.write_bytes(_onnx_with(_binary_op_type))),
    "empty-folder": ("model", lambda p: p.mkdir()),
    "fifo": ("model.onnx", lambda p: os.mkfifo(p)),
    "missing": ("model.onnx", lambda p: None),
}


READABLE_BY_INSPECT = {"onnx-untyped-input", "tflite-operator-without-inputs"}


def make_wrong_format(case: str, folder: Path, originals: dict) -> Path:
    name, make = WRONG_FORMATS[case]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(originals["tflite"], folder / "tiny.tflite")  # what the .tflite edits start from
    make(folder / name)
    return folder / name


@pytest.mark.parametrize("case", sorted(WRONG_FORMATS))
def test_wrong_format(originals: dict, tmp_path: Path, case: str) -> None:
    model = make_wrong_format(case, tmp_path / "in", originals)
    out = tmp_path / "out"
    target = FAST_TARGET["tflite" if model.suffix == ".tflite" else "onnx"]
    error = fails_cleanly(lambda: package(model, target, out), out)
    assert isinstance(error, ModelError), error.one_line()
    if case in READABLE_BY_INSPECT:  # inspect reports such a model; only packaging must run it
        api.inspect(model)
    elif case != "fifo":
        assert isinstance(fails_cleanly(lambda: api.inspect(model)), ModelError)


def test_model_path_too_long(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fails_cleanly(lambda: package(tmp_path / ("m" * 5000 + ".onnx"), "rpi4-arm64-onnxruntime", out), out)


# --------------------------------------------------------------------------- malformed profiles

BASE = 'extends = "rpi4-arm64-onnxruntime"\nname = "fuzz"\n'
TABLES = ("accuracy", "latency", "quantize", "emulation", "device", "inputs")
PROFILE_CASES: dict[str, str] = {
    "not-toml": "name = \n",
    "not-utf8": "name = '\udcff'\n",
    "binary": "\x00\x01\x02PK",
    "empty": "",
    "only-comment": "# nothing\n",
    "unknown-top-key": BASE + "bogus = 1\n",
    **{f"unknown-key-in-{t}": BASE + f"[{t}]\nbogus = 1\n" for t in TABLES},
    "unknown-key-in-tensorrt": 'extends = "jetson-orin-trt"\nname = "fuzz"\n[tensorrt]\nbogus = 1\n',
    "unknown-step-options-table": BASE + "[step_options.bogus]\nx = 1\n",
    "unknown-nested-table": BASE + "[emulation.deeper]\nx = 1\n",
    "name-not-a-string": BASE + "name = 5\n",
    "name-a-date": 'extends = "rpi4-arm64-onnxruntime"\nname = 1979-05-27\n',
    "name-with-spaces": 'extends = "rpi4-arm64-onnxruntime"\nname = "My Pi"\n',
    "steps-a-string": BASE + 'steps = "convert"\n',
    "steps-unknown": BASE + 'steps = ["convert", "teleport"]\n',
    "steps-out-of-order": BASE + 'steps = ["bundle", "convert"]\n',
    "steps-repeated": BASE + 'steps = ["convert", "convert"]\n',
    "table-as-value": BASE + "accuracy = 5\n",
    "value-as-table": BASE + "[opset]\nx = 1\n",
    "step-options-a-list": BASE + "step_options = [1, 2]\n",
    "step-options-inner-scalar": BASE + "[step_options]\nconvert = 5\n",
    "format-unknown": BASE + 'format = "caffe"\n',
    "runtime-format-mismatch": BASE + 'runtime = "litert"\n',
    "arch-unknown": BASE + 'arch = "mips"\n',
    "precision-not-listed": BASE + 'precision = "fp16"\n',
    "precisions-empty": BASE + "precisions = []\n",
    "opset-too-old": BASE + "opset = 3\n",
    "opset-a-float": BASE + "opset = 17.5\n",
    "batch-zero": BASE + "[inputs]\nbatch = 0\n",
    "shape-not-ints": BASE + '[inputs]\nshapes = {input = "big"}\n',
    "cores-zero": BASE + "[device]\ncores = 0\n",
    "clock-negative": BASE + "[device]\nclock_ghz = -1.0\n",
    "cosine-over-one": BASE + "[accuracy]\nmin_cosine = 2.0\n",
    "tolerance-nan": BASE + "[accuracy]\nmax_abs_error = nan\n",
    "tolerance-zero": BASE + "[accuracy]\nmax_abs_error = 0.0\n",
    "holdout-one": BASE + "[quantize]\nholdout = 1.0\n",
    "quantize-method-unknown": BASE + '[quantize]\nmethod = "magic"\n',
    "runs-zero": BASE + "[latency]\nruns = 0\n",
    "qemu-without-cpu": BASE + '[emulation]\nmode = "qemu-user"\nqemu_cpu = ""\n',
    "emulation-none-no-reason": BASE + '[emulation]\nmode = "none"\n',
    "emulation-mode-unknown": BASE + '[emulation]\nmode = "warp"\n',
    "tensorrt-missing-table": BASE + 'runtime = "tensorrt"\n',
    "tensorrt-jetpack-unmapped": 'extends = "jetson-orin-trt"\nname = "fuzz"\n[tensorrt]\njetpack = "0.1"\n',
    "extends-missing-name": 'extends = "nokia-3310"\nname = "fuzz"\n',
    "extends-missing-file": 'extends = "nowhere.toml"\nname = "fuzz"\n',
    "extends-an-int": 'extends = 5\nname = "fuzz"\n',
    "extends-a-list": 'extends = ["rpi4-arm64"]\nname = "fuzz"\n',
    "extends-a-folder": 'extends = "/"\nname = "fuzz"\n',
    "extends-empty": 'extends = ""\nname = "fuzz"\n',
    "extends-itself": 'extends = "profile.toml"\nname = "fuzz"\n',
    "extends-cycle": 'extends = "other.toml"\nname = "fuzz"\n',
    "extends-binary-file": 'extends = "blob.toml"\nname = "fuzz"\n',
    "missing-required": 'name = "fuzz"\n',
}
# Found by this corpus and fixed in profiles.py.
PROFILE_CASES |= {
    "extends-name-too-long": 'extends = "' + "a" * 5000 + '"\nname = "fuzz"\n',
    "shape-negative": BASE + "[inputs]\nshapes = {input = [-1, 3]}\n",
    "arrays-nested-700": BASE + "[step_options.convert]\nx = " + "[" * 700 + "]" * 700 + "\n",
    "tolerance-inf": BASE + "[accuracy]\nmax_abs_error = inf\n",
}
# Found by this corpus, still open in profiles.py (see the fuzz report).
PROFILE_BUGS = {
    "extends-toml-path-too-long": 'extends = "' + "a" * 5000 + '.toml"\nname = "fuzz"\n',
}


def _profile_files(tmp_path: Path, text: str) -> Path:
    (tmp_path / "other.toml").write_text('extends = "profile.toml"\nname = "other"\n')
    (tmp_path / "blob.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    path = tmp_path / "profile.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


@pytest.mark.parametrize("case", sorted(PROFILE_CASES))
def test_malformed_profile(tmp_path: Path, case: str) -> None:
    path = _profile_files(tmp_path, PROFILE_CASES[case])
    assert isinstance(fails_cleanly(lambda: load_profile(path)), ProfileError)


@pytest.mark.parametrize("case", ["unknown-key-in-device", "extends-cycle", "not-toml", "runtime-format-mismatch"])
def test_malformed_profile_through_package(tmp_path: Path, tiny_onnx_path: Path, case: str) -> None:
    path = _profile_files(tmp_path, PROFILE_CASES[case])
    out = tmp_path / "out"
    assert isinstance(fails_cleanly(lambda: package(tiny_onnx_path, str(path), out), out), ProfileError)


@pytest.mark.parametrize("case", sorted(PROFILE_BUGS))
def test_malformed_profile_lead_fix(tmp_path: Path, case: str) -> None:
    path = _profile_files(tmp_path, PROFILE_BUGS[case])
    assert isinstance(fails_cleanly(lambda: load_profile(path)), ProfileError)


def test_target_name_too_long(tmp_path: Path, tiny_onnx_path: Path) -> None:
    out = tmp_path / "out"
    assert isinstance(fails_cleanly(lambda: package(tiny_onnx_path, "t" * 5000, out), out), ProfileError)


def test_impossible_opset_is_refused(tmp_path: Path, tiny_onnx_path: Path) -> None:
    path = _profile_files(tmp_path, BASE + "opset = 99999999999999999999999\n")
    out = tmp_path / "out"
    assert isinstance(fails_cleanly(lambda: package(tiny_onnx_path, str(path), out), out), ProfileError)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


KEYS = [*Profile.model_fields, *TABLES, "extends", "bogus", "mode", "batch", "cores", "jetpack", "max_abs_error"]
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["rpi4-arm64", "onnx", "litert", "fp32", "convert", "qemu-user", "x.toml"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8), base=st.booleans())
def test_profile_parser_property_tables(tmp_path: Path, table: dict[str, Any], base: bool) -> None:
    """Any TOML table gives a Profile or a ProfileError, never anything else."""
    text = (BASE if base and "extends" not in table and "name" not in table else "") + "".join(
        f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in table.items()
    )
    path = tmp_path / "prop.toml"
    path.write_text(text)
    try:
        assert isinstance(load_profile(path), Profile)
    except Exception as exc:  # noqa: BLE001
        assert isinstance(assert_clean(exc), ProfileError)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("[]{}=\"'.,=#\n abcnx01-_")), max_size=80) | st.text(max_size=60))
def test_profile_parser_property_text(tmp_path: Path, text: str) -> None:
    """Any text gives a Profile or a ProfileError."""
    path = tmp_path / "prop.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_profile(path)
    except Exception as exc:  # noqa: BLE001
        assert isinstance(assert_clean(exc), ProfileError)


# --------------------------------------------------------------------------- bad calibration data


def _npy_bytes(header: bytes, payload: bytes = b"\0" * 256) -> bytes:
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def _good() -> np.ndarray:
    return np.random.default_rng(SEED).random((16, 3, 16, 16), dtype=np.float32)


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array, allow_pickle=True)


def _savez(path: Path, **arrays: Any) -> None:
    np.savez(path, **arrays)


def _damaged_npy(path: Path, case: str) -> None:
    buf = io.BytesIO()
    np.save(buf, _good())
    path.write_bytes(damage(buf.getvalue(), case, "npy"))


def _damaged_npz(path: Path, case: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=_good())
    path.write_bytes(damage(buf.getvalue(), case, "npz"))


def _folder(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir()
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _encrypted_npz(path: Path) -> None:
    _zip(path, {"x.npy": _npy(_good())})
    data = bytearray(path.read_bytes())
    data[6] |= 1  # the "encrypted" flag, in the local header and the central directory
    data[data.rfind(b"PK\x01\x02") + 8] |= 1
    path.write_bytes(bytes(data))


NPY_HEADERS = {
    "negative-shape": b"{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 3, 16, 16), }",
    "huge-shape": b"{'descr': '<f4', 'fortran_order': False, 'shape': (4000000000000, 3, 16, 16), }",
    "bad-dtype": b"{'descr': 'zz9', 'fortran_order': False, 'shape': (5,), }",
    "code": b"__import__('os').system('false')",
    "unclosed": b"{'descr': '<f4', 'shape': (16,",
}
PRE = b'size = [16, 16]\nlayout = "NCHW"\nchannel_order = "RGB"\nscale = "1/255"\n'


def _rgb_png(seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


DATA_CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    **{f"npy-{c}": ("d.npy", lambda p, c=c: _damaged_npy(p, c)) for c in [*CUTS, "h0", "h6", "h9", "h10", "h60"]},
    **{f"npz-{c}": ("d.npz", lambda p, c=c: _damaged_npz(p, c)) for c in [*CUTS, "h0", "h30", "s0", "s1"]},
    "npy-wrong-shape": ("d.npy", lambda p: _save(p, _good()[:, :1])),
    "npy-wrong-rank": ("d.npy", lambda p: _save(p, _good().reshape(16, -1))),
    "npy-nan": ("d.npy", lambda p: _save(p, np.where(_good() > 0.99, np.nan, _good()).astype(np.float32))),
    "npy-inf": ("d.npy", lambda p: _save(p, np.full((16, 3, 16, 16), np.inf, np.float32))),
    "npy-int64": ("d.npy", lambda p: _save(p, np.zeros((16, 3, 16, 16), np.int64))),
    "npy-complex": ("d.npy", lambda p: _save(p, np.zeros((16, 3, 16, 16), np.complex64))),
    "npy-strings": ("d.npy", lambda p: _save(p, np.full((16, 3, 16, 16), "a"))),
    "npy-datetime": ("d.npy", lambda p: _save(p, np.zeros((16, 3, 16, 16), "datetime64[s]"))),
    "npy-structured": ("d.npy", lambda p: _save(p, np.zeros((16, 3, 16, 16), [("a", "f4")]))),
    "npy-object-pickle": ("d.npy", lambda p: _save(p, np.array([{"a": 1}] * 16, dtype=object))),
    "npy-empty": ("d.npy", lambda p: _save(p, np.zeros((0, 3, 16, 16), np.float32))),
    "npy-scalar": ("d.npy", lambda p: _save(p, np.float32(1))),
    "npy-too-few": ("d.npy", lambda p: _save(p, _good()[:2])),
    **{f"npy-header-{k}": ("d.npy", lambda p, h=h: p.write_bytes(_npy_bytes(h))) for k, h in NPY_HEADERS.items()},
    "npy-version-9": ("d.npy", lambda p: p.write_bytes(b"\x93NUMPY\x09\x00" + _npy(_good())[8:])),
    "png-named-npy": ("d.npy", lambda p: p.write_bytes(_png())),
    "npz-wrong-key": ("d.npz", lambda p: _savez(p, images=_good())),
    "npz-no-arrays": ("d.npz", lambda p: _savez(p)),
    "npz-labels-mismatch": ("d.npz", lambda p: _savez(p, x=_good(), y=np.arange(3))),
    "npz-object-labels": ("d.npz", lambda p: _savez(p, x=_good(), y=np.array(["a"] * 16, dtype=object))),
    "npz-object-data": ("d.npz", lambda p: _savez(p, x=np.array([None] * 16, dtype=object))),
    "npz-member-not-npy": ("d.npz", lambda p: _zip(p, {"x.npy": b"hello world"})),
    "npz-encrypted": ("d.npz", _encrypted_npz),
    "npz-data-shorter-than-header": ("d.npz", lambda p: _zip(p, {"x.npy": _npy(_good())[:300]})),
    "text-named-npz": ("d.npz", lambda p: p.write_text("x,y\n1,2\n")),
    "csv-file": ("d.csv", lambda p: p.write_text("x,y\n1,2\n")),
    "missing": ("d.npz", lambda p: None),
    "folder-empty": ("d", lambda p: p.mkdir()),
    "folder-corrupt-npy": (
        "d",
        lambda p: _folder(p, {**{f"{i:03d}.npy": _npy(_good()[:4]) for i in range(3)}, "003.npy": b"\x93NUMPY"}),
    ),
    "folder-short-npy": ("d", lambda p: _folder(p, {"000.npy": _npy(_good()[:8]), "001.npy": _npy(_good()[:8])[:-4]})),
    "folder-pickle-npy": (
        "d",
        lambda p: _folder(p, {"000.npy": _npy(_good()[:8]), "001.npy": _npy(np.array([1], dtype=object))}),
    ),
    "folder-mixed-kinds": ("d", lambda p: _folder(p, {"a.npy": _npy(_good()), "b.png": _rgb_png()})),
    "folder-mixed-dtypes": (
        "d",
        lambda p: _folder(p, {"a.npy": _npy(_good()[:8]), "b.npy": _npy(_good()[:8].astype(np.float64))}),
    ),
    "folder-corrupt-png": (
        "d",
        lambda p: _folder(
            p, {**{f"{i}.png": _rgb_png(i) for i in range(8)}, "8.png": _rgb_png()[:40], "preprocess.toml": PRE}
        ),
    ),
    "folder-corrupt-first-png": (
        "d",
        lambda p: _folder(p, {"0.png": b"\x89PNG\r\n", "1.png": _rgb_png(), "preprocess.toml": PRE}),
    ),
    "folder-npy-named-png": ("d", lambda p: _folder(p, {"0.png": _npy(_good()), "preprocess.toml": PRE})),
    "folder-png-no-preprocess": ("d", lambda p: _folder(p, {"0.png": _rgb_png()})),
    "folder-preprocess-not-toml": ("d", lambda p: _folder(p, {"0.png": _rgb_png(), "preprocess.toml": b"[[[\n"})),
    "folder-preprocess-not-utf8": ("d", lambda p: _folder(p, {"0.png": _rgb_png(), "preprocess.toml": b"\xff\xfe"})),
    "folder-preprocess-bad-values": (
        "d",
        lambda p: _folder(p, {"0.png": _rgb_png(), "preprocess.toml": b"size = [0, -1]\nscale = '1/0'\n"}),
    ),
    "folder-preprocess-wrong-layout": (
        "d",
        lambda p: _folder(p, {"0.png": _rgb_png(), "preprocess.toml": PRE.replace(b"NCHW", b"NHWC")}),
    ),
    "folder-class-dir-corrupt-png": (
        "d",
        lambda p: _folder(p, {"a/0.png": _rgb_png(), "b/1.png": _rgb_png()[:30], "preprocess.toml": PRE}),
    ),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_calibration_data(tmp_path: Path, case: str) -> None:
    name, make = DATA_CASES[case]
    path = tmp_path / name
    make(path)

    def load() -> None:
        dataset = load_dataset(path, [ONNX_INPUT])
        for _ in dataset:  # a damaged later file shows up while reading, still as a DataError
            pass

    error = fails_cleanly(load)
    assert isinstance(error, DataError), error.one_line()


@pytest.mark.parametrize(
    "case", ["npy-nan", "npz-cut-half", "npy-object-pickle", "npz-wrong-key", "folder-corrupt-npy", "npy-header-code"]
)
def test_bad_calibration_data_through_package(tmp_path: Path, tiny_onnx_path: Path, case: str) -> None:
    name, make = DATA_CASES[case]
    make(tmp_path / name)
    out = tmp_path / "out"
    error = fails_cleanly(lambda: package(tiny_onnx_path, "rpi4-arm64-onnxruntime", out, data=tmp_path / name), out)
    assert isinstance(error, DataError)


# --------------------------------------------------------------------------- hostile bundle archives


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]], mode: str = "w:gz") -> None:
    """members: (name, tar type or None for a plain file, data or link target)."""
    with tarfile.open(path, mode) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = data.decode()
            tar.addfile(info)


def _zip_entry(path: Path, name: str, mode: int | None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, b"/etc/passwd")


MANIFEST = b'{"files": {}, "manifest_sha256": "0"}\n'
ARCHIVE_CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "tar-absolute": ("b.tar.gz", lambda p: _tar(p, [("/tmp/edgepack-fuzz-abs", None, b"x")])),
    "tar-dotdot": ("b.tar.gz", lambda p: _tar(p, [("b/manifest.json", None, MANIFEST), ("../evil", None, b"x")])),
    "tar-nested-dotdot": ("b.tar.gz", lambda p: _tar(p, [("b/x/../../../evil", None, b"x")])),
    "tar-symlink": ("b.tar.gz", lambda p: _tar(p, [("b/model.onnx", tarfile.SYMTYPE, b"/etc/passwd")])),
    "tar-symlink-write-through": (
        "b.tar.gz",
        lambda p: _tar(p, [("l", tarfile.SYMTYPE, b".."), ("l/evil", None, b"x")]),
    ),
    "tar-hardlink": ("b.tar.gz", lambda p: _tar(p, [("b/hard", tarfile.LNKTYPE, b"/etc/passwd")])),
    "tar-chardev": ("b.tar.gz", lambda p: _tar(p, [("b/dev", tarfile.CHRTYPE, b"")])),
    "tar-blockdev": ("b.tar.gz", lambda p: _tar(p, [("b/blk", tarfile.BLKTYPE, b"")])),
    "tar-fifo": ("b.tar.gz", lambda p: _tar(p, [("b/fifo", tarfile.FIFOTYPE, b"")])),
    "tar-duplicate": ("b.tar.gz", lambda p: _tar(p, [("b/a", None, b"1"), ("b/a", None, b"2")])),
    "tar-backslash": ("b.tar.gz", lambda p: _tar(p, [("..\\evil", None, b"x")])),
    "tar-plain-uncompressed-symlink": ("b.tar", lambda p: _tar(p, [("b/l", tarfile.SYMTYPE, b"/")], "w")),
    "tar-no-manifest": ("b.tar.gz", lambda p: _tar(p, [("b/model.onnx", None, b"x")])),
    "tar-bad-manifest": ("b.tar.gz", lambda p: _tar(p, [("b/manifest.json", None, b"{nope")])),
    "tgz-truncated": (
        "b.tar.gz",
        lambda p: (_tar(p, [("b/a", None, os.urandom(4096))]), p.write_bytes(p.read_bytes()[:200])),
    ),
    "gzip-of-garbage": ("b.tar.gz", lambda p: p.write_bytes(__import__("gzip").compress(b"\xff" * 1000))),
    "png-named-tgz": ("b.tar.gz", lambda p: p.write_bytes(_png())),
    "empty-file": ("b.tar.gz", lambda p: p.write_bytes(b"")),
    "zip-absolute": ("b.zip", lambda p: _zip_entry(p, "/tmp/edgepack-fuzz-zip", None)),
    "zip-dotdot": ("b.zip", lambda p: _zip_entry(p, "a/../../evil", None)),
    "zip-symlink": ("b.zip", lambda p: _zip_entry(p, "link", stat.S_IFLNK | 0o777)),
    "zip-device": ("b.zip", lambda p: _zip_entry(p, "dev", stat.S_IFCHR | 0o644)),
    "zip-truncated": ("b.zip", lambda p: (_zip_entry(p, "a", None), p.write_bytes(p.read_bytes()[:30]))),
}


@pytest.mark.parametrize("case", sorted(ARCHIVE_CASES))
def test_hostile_archive_verify(tmp_path: Path, case: str) -> None:
    name, make = ARCHIVE_CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = work / name
    make(archive)
    error = fails_cleanly(lambda: api.verify(archive))
    assert isinstance(error, VerificationError), error.one_line()
    assert [p.name for p in work.iterdir()] == [name]  # nothing unpacked beside it
    assert not (tmp_path / "evil").exists() and not Path("/tmp/edgepack-fuzz-abs").exists()


# --------------------------------------------------------------------------- the real CLI


CLI_MODELS = [
    ("onnx", "cut-0", "rpi4-arm64-onnxruntime"),
    ("onnx", "cut-half", "rpi4-arm64-onnxruntime"),
    ("onnx", "h0", "intel-openvino-cpu"),
    ("tflite", "cut-7", "rpi4-arm64"),
    ("tflite", "h4", "rpi4-arm64-onnxruntime"),
    ("keras", "cut-half", "rpi4-arm64"),
    ("h5", "cut-half", "intel-openvino-cpu"),
    ("savedmodel", "no-variables", "rpi4-arm64"),
]
CLI_WRONG_FORMATS = [
    "png-named-onnx",
    "pickle-named-onnx",
    "torch-checkpoint",
    "zip-without-config-named-keras",
    "h5-without-model-config",
    "onnx-op-type-not-utf8",
]
CLI_INSPECT = ["png-named-onnx", "pickle-named-onnx"]
CLI_PROFILES = ["not-toml", "unknown-key-in-device", "extends-cycle", "extends-missing-name", "steps-out-of-order"]
CLI_DATA = ["npy-nan", "npy-object-pickle", "npz-cut-half", "folder-corrupt-png"]
CLI_ARCHIVES = ["tar-absolute", "tar-symlink", "zip-dotdot", "tgz-truncated"]


def _cli_cases(originals: dict, root: Path) -> dict[str, tuple[list[str], type[EdgepackError], Path | None]]:
    """name -> (argv, expected error class, out folder) for ~30 representative cases."""
    cases: dict[str, tuple[list[str], type[EdgepackError], Path | None]] = {}

    for fmt, case, target in CLI_MODELS:
        path = root / f"{fmt}-{case}" / ("saved" if fmt == "savedmodel" else f"model.{fmt}")
        path.parent.mkdir(parents=True)
        if fmt == "savedmodel":
            shutil.copytree(originals["savedmodel"], path)
            _savedmodel_case(path, case)
        else:
            path.write_bytes(damage(originals[fmt].read_bytes(), case, fmt))
        out = path.parent / "out"
        cases[f"{fmt}-{case}"] = (
            ["package", str(path), "-t", target, "-o", str(out), "--no-device-check"],
            ModelError,
            out,
        )
    for case in CLI_WRONG_FORMATS:
        path = make_wrong_format(case, root / case, originals)
        out = root / case / "out"
        cases[case] = (["package", str(path), "-t", "rpi4-arm64-onnxruntime", "-o", str(out)], ModelError, out)
        if case in CLI_INSPECT:
            cases[f"inspect-{case}"] = (["inspect", str(path)], ModelError, None)
    onnx = str(originals["onnx"])
    for case in CLI_PROFILES:
        folder = root / f"profile-{case}"
        folder.mkdir()
        out = folder / "out"
        path = _profile_files(folder, PROFILE_CASES[case])
        cases[f"profile-{case}"] = (["package", onnx, "-t", str(path), "-o", str(out)], ProfileError, out)
    for case in CLI_DATA:
        name, make = DATA_CASES[case]
        folder = root / f"data-{case}"
        folder.mkdir()
        make(folder / name)
        out = folder / "out"
        argv = ["package", onnx, "-t", "rpi4-arm64-onnxruntime", "-o", str(out), "--data", str(folder / name)]
        cases[f"data-{case}"] = (argv, DataError, out)
    for case in CLI_ARCHIVES:
        name, make = ARCHIVE_CASES[case]
        folder = root / f"archive-{case}"
        folder.mkdir()
        make(folder / name)
        cases[f"verify-{case}"] = (["verify", str(folder / name)], VerificationError, None)
    out = root / "shape" / "out"
    cases["bad-input-shape"] = (["package", onnx, "-t", "rpi4-arm64-onnxruntime", "-o", str(out),
                                 "--input-shape", "input=1,three,16,16"], UsageError, out)  # fmt: skip
    return cases


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edgepack", *argv], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def cli_runs(originals: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every CLI case once, two processes at a time (each pays its own framework imports)."""
    cases = _cli_cases(originals, tmp_path_factory.mktemp("cli"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(cases, pool.map(_run_cli, (argv for argv, _, _ in cases.values())), strict=True))
    return {name: (cases[name], procs[name]) for name in cases}


CLI_NAMES = [
    *(f"{f}-{c}" for f, c, _ in CLI_MODELS),
    *CLI_WRONG_FORMATS,
    *(f"inspect-{c}" for c in CLI_INSPECT),
    *(f"profile-{c}" for c in CLI_PROFILES),
    *(f"data-{c}" for c in CLI_DATA),
    *(f"verify-{c}" for c in CLI_ARCHIVES),
    "bad-input-shape",
]


@pytest.mark.parametrize("name", CLI_NAMES)
def test_cli_one_line_error_and_exit_code(cli_runs: dict[str, Any], name: str) -> None:
    (_argv, cls, out), proc = cli_runs[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edgepack: error [{cls.kind}]: "), lines[0]
    assert proc.returncode == cls.exit_code, (proc.returncode, lines[0])
    if out is not None:
        assert written(out) == []


def test_corpus_is_big_enough() -> None:
    api_cases = (
        len(FILE_CASES) + len(INSPECT_CASES) + len(SAVEDMODEL_CASES) + len(WRONG_FORMATS) + len(PROFILE_CASES)
        + len(DATA_CASES) + len(ARCHIVE_CASES)
    )  # fmt: skip
    assert api_cases >= 200 and len(CLI_NAMES) >= 30
