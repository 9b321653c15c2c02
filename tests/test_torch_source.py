"""PyTorch sources: .pt2 programs, refused and trusted .pt/.pth files, and the export checked against PyTorch."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifact import Layout, ModelFormat
from edgepack.errors import ConversionError, ModelError
from edgepack.source import detect_format, open_source

torch = pytest.importorskip("torch")
nets = pytest.importorskip("tests.torch_nets")

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[1]


def _pt2(path: Path, module, x) -> Path:
    torch.export.save(torch.export.export(module.eval(), (x,)), str(path))
    return path


def _export(src, folder: Path, **kwargs):
    from edgepack.convert import ConvertOptions
    from edgepack.convert.torch_onnx import export_checked

    return export_checked(src, folder, ConvertOptions(opset=17, trust_code=True), **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same small net as a .pt2, TorchScript, a pickled module, a legacy pickle and a state dict."""
    folder = tmp_path_factory.mktemp("torchfiles")
    torch.manual_seed(0)
    module, x = nets.SegmentationHead().eval(), torch.randn(1, 3, 16, 16)
    out = {"pt2": _pt2(folder / "seg.pt2", module, x)}
    torch.jit.save(torch.jit.trace(module, x), str(folder / "seg_ts.pt"))
    torch.save(module, str(folder / "seg_pickle.pth"))
    torch.save(module, str(folder / "seg_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(module.state_dict(), str(folder / "seg_weights.pt"))
    out.update(ts=folder / "seg_ts.pt", pickle=folder / "seg_pickle.pth", legacy=folder / "seg_legacy.pt")
    out["weights"] = folder / "seg_weights.pt"
    return out


def test_pt2_is_detected_and_read_without_running_code(files):
    assert detect_format(files["pt2"]) is ModelFormat.TORCH
    src = open_source(files["pt2"])
    assert src.format is ModelFormat.TORCH
    assert [(i.name, i.shape, i.dtype) for i in src.inputs] == [("x", (1, 3, 16, 16), "float32")]
    assert [(o.name, o.shape) for o in src.outputs] == [("output", (1, 5, 16, 16))]

def test_inspect_reads_a_pt2_through_its_checked_export(files):
    import edgepack

    report = edgepack.inspect(files["pt2"])
    assert report.format is ModelFormat.TORCH and report.path == str(files["pt2"])
    assert report.ops.get("Conv", 0) >= 1 and report.cost.macs > 0
    assert any("ONNX export" in note for note in report.notes)



@pytest.mark.parametrize("kind", ["ts", "pickle", "legacy"])
def test_code_running_files_are_refused_without_the_flag(files, kind):
    with pytest.raises(ModelError, match="--trust-model-code") as caught:
        open_source(files[kind])
    assert "\n" not in caught.value.one_line() and "PyTorch" in caught.value.one_line()


def test_a_plain_pickle_is_still_refused_outright(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ModelError, match="never loads pickles"):
        detect_format(path, trust_code=True)


def test_cli_refuses_torchscript_without_the_flag_and_writes_nothing(files, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "edgepack",
        "package",
        str(files["ts"]),
        "-t",
        "rpi4-arm64-onnxruntime",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == ModelError.exit_code, proc.stderr
    assert "--trust-model-code" in proc.stderr + proc.stdout
    assert not out.exists()


def test_trusted_torchscript_loads_with_jit_and_falls_back_to_the_torchscript_exporter(files, tmp_path):
    """torch.export cannot trace a ScriptModule: the dynamo attempt fails, the TorchScript exporter is taken.

    A batch given as a range stays dynamic in the ONNX (as for an ONNX source's dynamic dim).
    """
    from edgepack.convert import ConvertOptions
    from edgepack.convert.torch_onnx import export_checked
    from edgepack.shapes import ranges_from_meta

    src = open_source(files["ts"], trust_code=True, input_shapes={"x": [(1, 2, 4), 3, 16, 16]})
    assert src.inputs[0].shape == (2, 3, 16, 16) and src.meta["shape_ranges"][0]["max"] == [4, 3, 16, 16]
    assert [o.shape for o in src.outputs] == [(2, 5, 16, 16)]
    options = ConvertOptions(opset=17, trust_code=True, shape_ranges=ranges_from_meta(src.meta))
    onnx = export_checked(src, tmp_path / "onnx", options)
    attempts = onnx.meta["export_attempts"]
    assert onnx.meta["exporter"] == "torchscript"
    assert [a["exporter"] for a in attempts] == ["dynamo", "torchscript"]
    assert not attempts[0]["ok"] and attempts[0]["error"]
    assert attempts[1]["ok"] and attempts[1]["max_abs_error"] < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx.path))
    assert not isinstance(session.get_inputs()[0].shape[0], int)
    assert session.run(None, {"x": np.zeros((4, 3, 16, 16), np.float32)})[0].shape == (4, 5, 16, 16)


def test_trusted_pickle_loads_and_a_state_dict_is_named(files):
    src = open_source(files["pickle"], trust_code=True, input_shapes={"x": (1, 3, 16, 16)})
    assert src.outputs[0].shape == (1, 5, 16, 16)
    with pytest.raises(ModelError, match="state dict"):
        open_source(files["weights"], trust_code=True, input_shapes={"x": (1, 3, 16, 16)})


def test_trusted_module_without_shapes_asks_for_them(files):
    with pytest.raises(ModelError, match="--input-shape"):
        open_source(files["ts"], trust_code=True)


def test_dynamic_batch_pt2_takes_the_profile_batch(tmp_path):
    module, x = nets.DigitsCNN().eval(), torch.randn(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "dyn.pt2"))
    src = open_source(tmp_path / "dyn.pt2", batch=1)
    assert src.meta["declared_inputs"][0]["shape"] == [None, 1, 8, 8]
    assert src.inputs[0].shape == (1, 1, 8, 8)


def test_without_torch_a_pt2_names_the_extra(files):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgepack.source import open_source\n"
        "from edgepack.errors import MissingDependencyError\n"
        f"try:\n    open_source({str(files['pt2'])!r})\n"
        "except MissingDependencyError as exc:\n    print(exc.one_line())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "pip install 'edgepack[torch]'" in proc.stdout, proc.stdout + proc.stderr


def test_without_onnxscript_the_export_names_the_extra_instead_of_falling_back(files, tmp_path):
    code = (
        "import sys; sys.modules['onnxscript'] = None\n"
        "from pathlib import Path\n"
        "from edgepack.convert import ConvertOptions\n"
        "from edgepack.convert.torch_onnx import export_checked\n"
        "from edgepack.errors import MissingDependencyError\n"
        "from edgepack.source import open_source\n"
        f"src = open_source({str(files['pt2'])!r})\n"
        f"try:\n    export_checked(src, Path({str(tmp_path)!r}), ConvertOptions())\n"
        "except MissingDependencyError as exc:\n    print(exc.one_line())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "pip install 'edgepack[torch]'" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "dynamo").exists()


def test_help_imports_no_torch():
    code = (
        "import runpy, sys\nsys.argv = ['edgepack', '--help']\n"
        "try:\n    runpy.run_module('edgepack', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'onnxscript') if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], proc.stderr


# --------------------------------------------------------------------------- export checked against PyTorch


def _live(tmp_path: Path, module, x):
    from edgepack.torchio import save_live

    return open_source(save_live(module.eval(), (x,), tmp_path / "live"), trust_code=True)


REFERENCE_NETS = {
    "mobilenet_v3_small": (nets.MobileNetV3Small, (1, 3, 64, 64)),
    "resnet18": (nets.ResNet18Style, (1, 3, 64, 64)),
    "segmentation": (nets.SegmentationHead, (1, 3, 32, 32)),
    "transformer": (nets.TinyTransformer, (1, 10, 32)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_NETS))
def test_reference_architectures_export_with_dynamo_and_agree(tmp_path, name):
    make, shape = REFERENCE_NETS[name]
    torch.manual_seed(0)
    src = _live(tmp_path, make(), torch.randn(*shape))
    onnx = _export(src, tmp_path / "onnx")
    attempt = onnx.meta["export_attempts"][0]
    assert onnx.meta["exporter"] == "dynamo" and len(onnx.meta["export_attempts"]) == 1
    assert attempt["ok"] and attempt["max_abs_error"] < 1e-4 and attempt["min_cosine"] > 0.9999
    assert onnx.meta["opset"] == 17  # the dynamo exporter's opset 18, lowered for the run
    if len(shape) == 4:
        assert onnx.inputs[0].layout is Layout.NCHW


def test_a_wrong_dynamo_export_takes_the_fallback(tmp_path):
    src = _live(tmp_path, nets.ExportOnlyBranch(), torch.randn(1, 3, 16, 16))
    onnx = _export(src, tmp_path / "onnx")
    dynamo, fallback = onnx.meta["export_attempts"]
    assert onnx.meta["exporter"] == "torchscript"
    assert not dynamo["ok"] and dynamo["max_abs_error"] > 0.1 and dynamo["failures"]
    assert fallback["ok"] and fallback["max_abs_error"] < 1e-5
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx.path))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    module = torch.load(str(src.path), weights_only=False)["module"]
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert np.abs(session.run(None, {"x": x})[0] - expected).max() < 1e-5
    assert [p.name for p in Path(onnx.path).parent.glob("**/*.data")] == []  # one self-contained file


def test_when_both_exporters_disagree_nothing_is_made(tmp_path):
    src = _live(tmp_path, nets.WrongWhenExported(), torch.randn(1, 3, 16, 16))
    with pytest.raises(ConversionError) as caught:
        _export(src, tmp_path / "onnx")
    line = caught.value.one_line()
    assert "dynamo:" in line and "torchscript:" in line and "\n" not in str(caught.value)
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_validation_inputs_are_used_when_given(tmp_path):
    src = _live(tmp_path, nets.DigitsCNN(), torch.randn(1, 1, 8, 8))
    samples = [[np.full((1, 1, 8, 8), v, np.float32)] for v in (0.0, 0.5, 1.0)]
    onnx = _export(src, tmp_path / "onnx", samples=samples)
    assert onnx.meta["export_check"] == {"inputs": "validation inputs", "samples": 3}
