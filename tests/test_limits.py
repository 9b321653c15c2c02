"""Resource limits (issue #6, item 7): too big is refused with a clear message, big data is streamed.

"Larger than memory" is simulated by patching :func:`edgepack.memory.available_memory`, and big
files are sparse (``truncate``), so nothing here needs the memory or the disk it talks about.
"""

from __future__ import annotations

import io
import resource
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepack import api, memory
from edgepack.artifact import TensorSpec
from edgepack.calibration import load_dataset
from edgepack.errors import DataError, ModelError

GiB = 1 << 30
SPEC = TensorSpec("input", (1, 3, 16, 16), "float32")  # tiny_onnx_path's input


def _written(out: Path) -> list[Path]:
    return list(out.rglob("*")) if out.exists() else []


@pytest.fixture
def little_memory(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pretend 1 MiB of memory is available (the tiny models need a few KiB)."""
    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)
    return 1 << 20


def _bigger_than(path: Path, size: int) -> Path:
    """A sparse copy of ``path`` grown to ``size`` bytes: its header is real, the rest a hole."""
    big = path.parent / f"big{path.suffix}"
    with big.open("wb") as fh:
        fh.write(path.read_bytes())
        fh.truncate(size)
    return big


# --------------------------------------------------------------------------- models


def test_model_larger_than_memory_is_refused_before_it_is_read(
    tmp_path: Path, tiny_onnx_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 4 * GiB)
    model = _bigger_than(tiny_onnx_path, 64 * GiB)  # sparse: takes no disk
    out = tmp_path / "out"
    with pytest.raises(ModelError) as info:  # refused from its size (the message), not after reading 64 GiB
        api.package(model, targets=["rpi4-arm64-onnxruntime"], out=out, device_check=False)
    message = info.value.one_line()
    assert "needs about 128.0 GiB" in message and "4.0 GiB available" in message
    assert memory.OVERRIDE_ENV in message and _written(out) == []
    with pytest.raises(ModelError, match="available"):
        api.inspect(model)


def test_savedmodel_folder_counts_every_file(tmp_path: Path, tiny_savedmodel_path: Path, monkeypatch) -> None:
    size = memory.model_bytes(tiny_savedmodel_path)
    assert size > (tiny_savedmodel_path / "saved_model.pb").stat().st_size
    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: size)  # the folder fits once, not twice
    with pytest.raises(ModelError, match="needs about"):
        api.package(tiny_savedmodel_path, targets=["rpi4-arm64"], out=tmp_path / "out", device_check=False)


def test_override_env_lets_a_model_through(tmp_path: Path, tiny_onnx_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 1)
    monkeypatch.setenv(memory.OVERRIDE_ENV, "1")
    result = api.package(tiny_onnx_path, targets=["rpi4-arm64-onnxruntime"], out=tmp_path / "out", device_check=False)
    assert result.ok


def test_huge_input_shape_is_refused(tmp_path: Path, tiny_onnx_dynamic_path: Path, monkeypatch) -> None:
    """--input-shape (or a damaged file) asking for tensors bigger than memory: validation would OOM."""
    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * GiB)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"validation inputs 11\.4 GiB"):
        api.package(
            tiny_onnx_dynamic_path,
            targets=["rpi4-arm64-onnxruntime"],
            out=out,
            input_shapes=["input=500000,3,16,16"],  # a batch of 1.4 GiB, 8 validation samples
            device_check=False,
        )
    assert _written(out) == []


def _tflite_with_huge_tensor(src: Path, dst: Path) -> Path:
    """``src`` with one intermediate tensor's shape set to 256 GiB of float32 (as a bit flip can do)."""
    import flatbuffers

    from edgepack.macs import load_tflite

    model = load_tflite(src)
    graph = model.subgraphs[0]
    outputs = {int(i) for op in graph.operators for i in op.outputs} - {int(i) for i in graph.outputs}
    graph.tensors[min(outputs)].shape = np.array([1, 1 << 20, 1 << 10, 64], np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def test_tflite_claiming_huge_tensors_is_refused(tmp_path: Path, tiny_tflite_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(memory.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 16 * GiB)
    model = _tflite_with_huge_tensor(tiny_tflite_path, tmp_path / "bomb.tflite")
    assert model.stat().st_size < 10_000
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"its activations 256\.0 GiB"):
        api.package(model, targets=["rpi4-arm64"], out=out, device_check=False)
    assert _written(out) == []


def test_available_memory_is_a_positive_number() -> None:
    available = memory.available_memory()
    assert available is None or available > 0


# --------------------------------------------------------------------------- calibration data


def test_npy_folder_of_5000_files_streams_with_bounded_memory(tmp_path: Path) -> None:
    spec = TensorSpec("input", (1, 3, 32, 32), "float32")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5000):
        np.save(folder / f"{i:05d}.npy", rng.random((1, 3, 32, 32), dtype=np.float32))
    total = 5000 * 3 * 32 * 32 * 4  # 59 MiB of samples
    tracemalloc.start()
    try:
        dataset = load_dataset(folder, [spec])
        seen = sum(float(feed["input"][0, 0, 0, 0]) >= 0 for feed in dataset)
        dataset.describe()  # hashes every file, streamed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == seen == 5000
    # What stays is a few hundred bytes of bookkeeping a file (names, row counts), never the samples.
    assert peak < total / 5, f"peak {peak / 2**20:.1f} MiB for {total / 2**20:.1f} MiB of data"


def test_huge_npy_is_memory_mapped_and_only_the_used_samples_read(tmp_path: Path) -> None:
    rows = 3_000_000  # 8.6 GiB of float32 samples, as a sparse file
    path = tmp_path / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3, 16, 16), np.float32))
    header["shape"] = (rows, 3, 16, 16)
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.truncate(fh.tell() + rows * 3 * 16 * 16 * 4)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    dataset = load_dataset(path, [SPEC], max_samples=64)
    assert len(dataset) == 64 and dataset[63]["input"].shape == (1, 3, 16, 16)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 2**20
    assert grown_gib < 1, f"loading 64 samples of an 8.6 GiB file raised the peak memory by {grown_gib:.1f} GiB"


def _npz_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npz whose only array's header claims ``shape`` (its data is cut short: headers are read first)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,), np.float32))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 64)
    return path


def test_huge_npz_is_refused_from_its_headers(tmp_path: Path, tiny_onnx_path: Path) -> None:
    data = _npz_claiming(tmp_path / "huge.npz", (1_000_000, 3, 16, 16))  # 2.9 GiB claimed, 2 GiB budget
    with pytest.raises(DataError, match="memory budget"):
        load_dataset(data, [SPEC])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="memory budget"):
        api.package(tiny_onnx_path, targets=["rpi4-arm64-onnxruntime"], out=out, data=data, device_check=False)
    assert _written(out) == []


def test_npz_larger_than_available_memory_is_refused(tmp_path: Path, little_memory: int) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((400, 3, 16, 16), np.float32))  # 1.2 MiB, within the 2 GiB budget
    with pytest.raises(DataError, match="memory available"):
        load_dataset(data, [SPEC])
