"""One target's failure never touches another: shared intermediates, exit codes, nothing left in OUT."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgepack
from edgepack.context import Intermediates
from edgepack.errors import AccuracyError, ConversionError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
OVERVIEW = ["index.html", "summary.csv", "summary.json"]  # the run's model x target overview
GOOD = ["jetson-orin-trt", "rpi4-arm64"]


def _impossible_profile(folder: Path) -> Path:
    """A user's profile that shares the Keras -> ONNX hop with the good targets, then fails its own check."""
    path = folder / "strict-openvino.toml"
    path.write_text(
        'extends = "intel-openvino-cpu"\nname = "strict-openvino"\n'
        "[accuracy]\nmax_abs_error = 1e-30\nmin_cosine = 1.0\n"
    )
    return path


def test_a_failing_target_leaves_the_others_byte_identical(tmp_path: Path) -> None:
    alone = edgepack.package(DIGITS, targets=GOOD, out=tmp_path / "alone", device_check=False)
    assert alone.ok
    bad = _impossible_profile(tmp_path)
    with pytest.raises(AccuracyError) as caught:  # the first failure's class, whatever came before it
        edgepack.package(DIGITS, targets=[bad, *GOOD], out=tmp_path / "mixed", device_check=False)
    mixed = caught.value.result
    assert [t.target for t in mixed.failures] == ["strict-openvino"]
    assert isinstance(caught.value.__cause__, AccuracyError)
    assert "strict-openvino" in str(caught.value) and "1 of 3 targets failed" in str(caught.value)
    for name in GOOD:
        archive = f"{name}.tar.gz"
        assert (tmp_path / "mixed" / archive).read_bytes() == (tmp_path / "alone" / archive).read_bytes(), name
    # The failed target left nothing behind in OUT: no folder, no archive, no lock, no staging leftovers.
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == sorted(
        [*GOOD, *(f"{n}.tar.gz" for n in GOOD), *OVERVIEW]
    )


def test_a_failed_intermediate_is_remembered_and_its_folder_never_reused(tmp_path: Path) -> None:
    store = Intermediates(tmp_path / "steps")
    folders: list[Path] = []

    def failing(folder: Path):
        folders.append(folder)
        (folder / "half-written").write_text("x")
        raise ConversionError("the converter broke.")

    def working(folder: Path):
        folders.append(folder)
        (folder / "model").write_text("ok")
        return folder / "model", {"name": "convert"}

    for _ in range(2):  # asked twice: made once, failed once, raised twice
        with pytest.raises(ConversionError, match="the converter broke"):
            store.get(("convert", "abc", "tflite"), failing)
    assert len(folders) == 1
    made, record = store.get(("convert", "abc", "onnx"), working)  # another key is untouched by the failure
    assert made.read_text() == "ok" and record == {"name": "convert"}
    assert store.get(("convert", "abc", "onnx"), working)[0] == made  # made once
    assert len(folders) == 2 and folders[0] != folders[1]
