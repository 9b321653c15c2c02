"""Build a TensorRT engine from the Jetson bundle's ONNX where an NVIDIA GPU and TensorRT are present.

Run with ``python -m pytest -m gpu`` on a machine with ``pip install tensorrt`` (the same TensorRT major
version as the profile's JetPack) and an NVIDIA GPU. The bundle's ONNX, opset and Q/DQ layout are what a
Jetson gets; only the GPU differs (engines are built on the device itself).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import edgepack

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
DATA = ROOT / "calibration" / "digits" / "digits.npz"


def _tensorrt():
    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi"], capture_output=True).returncode != 0:
        pytest.skip("no NVIDIA GPU (nvidia-smi)")
    return pytest.importorskip("tensorrt", reason="pip install tensorrt (the profile's TensorRT major version)")


def _build(trt, onnx_path: Path, *, fp16: bool, strongly_typed: bool) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "TensorRT could not build the engine"
    return bytes(engine)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_builds_from_the_jetson_bundle(tmp_path, precision):
    trt = _tensorrt()
    data = DATA if precision == "int8" else None
    result = edgepack.package(DIGITS, targets=["jetson-orin-trt"], out=tmp_path, precision=precision, data=data)
    bundle = result.targets[0].bundle
    script = (bundle / "build_engine.sh").read_text()
    strongly_typed = "--stronglyTyped" in script
    engine = _build(trt, bundle / "model.onnx", fp16="--fp16" in script, strongly_typed=strongly_typed)
    assert len(engine) > 1000
    if shutil.which("trtexec"):
        proc = subprocess.run(["sh", str(bundle / "build_engine.sh")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert (bundle / "model.engine").stat().st_size > 1000
