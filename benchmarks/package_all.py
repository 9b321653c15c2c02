"""Benchmark: edgepack packaging a MobileNetV2-sized Keras model for every target vs. plain converter scripts.

Both are timed in the same run, on the same model, one after another:

* ``edgepack``: ``edgepack.package(model, targets=["all"])`` -- conversion, simplification, validation of
  every artifact against the Keras model, operator checks, bundles and archives (device checks off,
  since the baseline has none).
* ``plain, per target``: what a user scripts by hand today, one target after another, calling the same
  converters (TFLiteConverter, tf2onnx, onnxsim, OpenVINO) with no validation at all.
* ``plain, de-duplicated``: the same converters, each distinct conversion made once (the best a careful
  hand-written script does).

Prints wall times and the ratios edgepack / baseline (target: <= 1.0 against the per-target script).
Random weights are fine for timing. Run: ``python benchmarks/package_all.py [--alpha 1.0]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CI", "true")


def build_model(path: Path, alpha: float) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), alpha=alpha)
    model.save(path)


def plain_tflite(model_path: Path, out: Path, fp16: bool) -> None:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if fp16:
        converter.target_spec.supported_types = [tf.float16]
    out.write_bytes(converter.convert())


def plain_onnx(model_path: Path, out: Path, opset: int, simplify: bool) -> None:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    model = keras.saving.load_model(model_path, compile=False)
    spec = (tf.TensorSpec((1, 224, 224, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    if simplify:
        import onnxsim

        proto, _ = onnxsim.simplify(proto)
    onnx.save(proto, out)


def plain_openvino(onnx_path: Path, out: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(onnx_path), out, compress_to_fp16=False)


def plain_per_target(model_path: Path, work: Path) -> None:
    """One target after another, as a hand-written script does (same converters, no validation)."""
    for name in ("android-arm64", "rpi4-arm64", "rpi5-arm64", "rpi-armv7"):
        plain_tflite(model_path, work / f"{name}.tflite", fp16=False)
    plain_tflite(model_path, work / "android-gpu.tflite", fp16=True)
    for name in ("rpi4-ort", "rpi5-ort"):
        plain_onnx(model_path, work / f"{name}.onnx", opset=17, simplify=True)
    plain_onnx(model_path, work / "jetson.onnx", opset=17, simplify=True)
    plain_onnx(model_path, work / "openvino.onnx", opset=17, simplify=True)
    plain_openvino(work / "openvino.onnx", work / "openvino.xml")


def plain_deduplicated(model_path: Path, work: Path) -> None:
    """Each distinct conversion once."""
    plain_tflite(model_path, work / "fp32.tflite", fp16=False)
    plain_tflite(model_path, work / "fp16.tflite", fp16=True)
    plain_onnx(model_path, work / "model.onnx", opset=17, simplify=True)
    plain_openvino(work / "model.onnx", work / "model.xml")


def timed_subprocess(code: str) -> float:
    """Run ``code`` in a fresh interpreter (imports included, like a user's script) and time it."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgepack-bench-"))
    try:
        model = work / "mobilenetv2.keras"
        build_model(model, args.alpha)
        here = "import sys; sys.path.insert(0, 'benchmarks'); import package_all as b; from pathlib import Path\n"
        runs = {
            "edgepack --target all": (
                "import edgepack\n"
                f"edgepack.package({str(model)!r}, targets=['all'], out={str(work / 'out')!r}, device_check=False)\n"
            ),
            "plain, per target": here + f"w = Path({str(work / 'plain1')!r}); w.mkdir()\n"
            f"b.plain_per_target(Path({str(model)!r}), w)\n",
            "plain, de-duplicated": here + f"w = Path({str(work / 'plain2')!r}); w.mkdir()\n"
            f"b.plain_deduplicated(Path({str(model)!r}), w)\n",
        }
        times = {name: timed_subprocess(code) for name, code in runs.items()}
        ours = times["edgepack --target all"]
        print(f"model: MobileNetV2 alpha={args.alpha}, 224x224x3, random weights; {os.cpu_count()} CPUs")
        for name, seconds in times.items():
            print(f"{name:24s} {seconds:8.1f} s")
        print(f"ratio edgepack / plain per target    = {ours / times['plain, per target']:.2f}  (target <= 1.0)")
        print(f"ratio edgepack / plain de-duplicated = {ours / times['plain, de-duplicated']:.2f}")
        print(
            "edgepack also validated every artifact against the Keras model and wrote sealed bundles;"
            " device checks were off for both."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
