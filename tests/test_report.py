"""report.md and report.html: content, latency labels, offline HTML, escaping, no matplotlib."""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import edgepack
from edgepack.charts import short_name
from edgepack.layer_names import short_converter_name
from edgepack.report import NOT_FASTER, Chart, fmt, render_markdown, report_blocks, wall_time_kind
from edgepack.report_html import render_html

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
DATA = ROOT / "calibration" / "digits" / "digits.npz"
TARGETS = ["rpi4-arm64-onnxruntime", "intel-openvino-cpu"]
CLAIMS_MEASURED = re.compile(r"(?<!not )\bmeasured\b", re.IGNORECASE)
PNG = '<img src="data:image/png;base64,'

# The device figures of a QEMU run, shaped as edgepack.devicecheck and edgepack.estimate write them.
EMULATED = {
    "latency": {
        "label": "EMULATED (QEMU user-mode TCG on an x86_64 host): not a device time",
        "median_ms": 0.6039,
        "min_ms": 0.5706,
        "max_ms": 4.7429,
        "stdev_ms": 0.9006,
        "runs": 5,
        "samples_ms": [0.5706, 0.5745, 0.6039, 0.6322, 4.7429],
    },
    "instructions": {"per_inference": 160236, "note": "guest instructions", "qemu_cpu": "cortex-a72"},
    "figures": {
        "instructions": {
            "label": "executed guest instructions per inference (stable across runs and hosts: the regression metric)",
            "per_inference": 160236,
        },
        "estimate": {
            "label": "estimate for the device from the instruction count and the profile's device facts, not measured",
            "formula": "t = N / (IPC * f) = 160,236 / (0.9 * 1.8 GHz) = 0.10 ms; band: IPC in [IPC / 1.75, IPC * 1.75]",
            "value_ms": 0.09891,
            "low_ms": 0.05652,
            "high_ms": 0.17309,
        },
        "roofline": {
            "label": "roofline lower bound from MACs, weight bytes, peak compute and bandwidth: the device cannot be "
            "faster",
            "formula": "max(2 * 309,248 MAC / (14.4 GFLOP/s * 2 * 1) = 0.02 ms, 10,112 B / 12.8 GB/s = 0.00 ms)",
            "bound_ms": 0.021476,
            "limit": "compute",
            "notes": ["memory term: weights only, read once per inference"],
        },
        "notes": [],
    },
}
QEMU_FACTS = {
    "ran": True,
    "runner": "qemu-user",
    "machine": "aarch64",
    "cpu": "cortex-a72",
    "runtime": "onnxruntime",
    "runtime_version": "1.32.0",
    "python": "3.11.2",
    "numpy_version": "2.4.6",
    "agreement": {"agree": True, "failures": [], "outputs": [{"output": "probs", "max_abs_error": 0.0}]},
}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """(manifest, measurements) of real int8 bundles, without the device check."""
    out = tmp_path_factory.mktemp("report")
    result = edgepack.package(DIGITS, targets=TARGETS, precision="int8", data=DATA, out=out, device_check=False)
    return {
        t.target: (t.manifest, json.loads((Path(t.bundle) / "report" / "measurements.json").read_text()))
        for t in result.targets
    }


@pytest.fixture
def emulated(real) -> tuple[dict, dict]:
    """A real ONNX Runtime int8 manifest with a hand-built QEMU device check."""
    manifest, measurements = copy.deepcopy(real["rpi4-arm64-onnxruntime"])
    manifest["device_check"] = copy.deepcopy(QEMU_FACTS)
    return manifest, {**measurements, **copy.deepcopy(EMULATED)}


def _line(text: str, *needles: str) -> str:
    """The one line of ``text`` holding every needle."""
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, (needles, lines)
    return lines[0]


class StrictParser(HTMLParser):
    """Fails on mismatched tags; collects attribute values and tag names."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.attributes: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes += [value or "" for _, value in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def _parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], parser.stack
    return parser


def test_markdown_has_the_gate_figures_and_budget(real):
    for name, (manifest, measurements) in real.items():
        text = render_markdown(manifest, measurements)
        gate = manifest["quantization"]["gate"]
        assert "## Accuracy gate: int8 against the float model" in text, name
        for output in gate["outputs"]:
            row = _line(text, f"| {output['name']} | {fmt(output['max_abs_error'])} |")
            assert f"{output['cosine']:.6f}" in row and fmt(output["sqnr_db"]) in row
            assert fmt(output["top1_agreement"]) in row
        assert f"float accuracy: {100 * gate['float_accuracy']:.2f}%" in text
        assert f"int8 accuracy: {100 * gate['quantized_accuracy']:.2f}%" in text
        assert f"accuracy drop: {100 * gate['accuracy_drop']:.2f} points" in text
        for check in gate["checks"]:
            row = _line(text, f"| {check['kind'].replace('_', ' ')} | {check['output']} |")
            assert fmt(check["budget"]) in row and fmt(check["threshold"]) in row and "pass" in row
        assert "Accuracy gate PASSED." in text


def test_markdown_has_quantization_settings_io_params_layers_and_sizes(real):
    manifest, measurements = copy.deepcopy(real["rpi4-arm64-onnxruntime"])
    quant = manifest["quantization"]
    quant["io"]["image"] = {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}
    text = render_markdown(manifest, measurements)
    assert "| image | int8 | 0.003906 | -128 |" in text
    assert "| probs | float32 | - | - |" in text
    assert f"method {quant['settings']['method']}" in text
    assert f"calibration samples: {quant['settings']['calibration_samples']}" in text
    assert "| layer | converter name | op | SQNR dB | RMSE / scale | MSE | kept in float |" in text
    for layer in quant["layers"]:
        name, op, sqnr = short_converter_name(layer["name"]), layer["op_type"], fmt(layer["sqnr_db"])
        assert f"| {layer['source']} | {name} | {op} | {sqnr} |" in text
    size = quant["size"]
    assert f"size: float {size['float_bytes']:,} B" in text and f"int8 {size['quantized_bytes']:,} B" in text
    assert "None: every layer is quantized." in text
    assert "| 1 | 0 | - |" in text  # the one attempt, no layer in float


def test_repaired_layers_and_every_attempt_are_listed(real):
    manifest, measurements = copy.deepcopy(real["intel-openvino-cpu"])
    quant = manifest["quantization"]
    worst, source = quant["layers"][0]["name"], quant["layers"][0]["source"]
    first = copy.deepcopy(quant["repaired"]["attempts"][0])
    second = {**first, "float_layers": 1, "excluded": [worst], "size_bytes": 40000, "quantized_accuracy": 0.98}
    quant["repaired"] = {"float_layers": [worst], "attempts": [{**first, "passed": False}, second]}
    text = render_markdown(manifest, measurements)
    assert f"- {source} ({worst})" in text.split("### Layers kept in float (repair)")[1]
    assert _line(text, "| 1 | 0 | - |").endswith("| FAIL |")
    assert "40,000 B" in _line(text, f"| 2 | 1 | {source} |")
    assert _line(text, f"| {source} | {short_converter_name(worst)} | {quant['layers'][0]['op_type']} |").endswith(
        "| yes |"
    )
    chart = next(b for b in report_blocks(manifest, measurements) if isinstance(b, Chart) and b.kind == "layers")
    assert [row["float"] for row in chart.data["layers"]].count(True) == 1


@pytest.mark.parametrize("ratio, loud", [(0.385, True), (1.0, True), (1.77, False)])
def test_int8_not_faster_is_loud(real, ratio, loud):
    manifest, measurements = copy.deepcopy(real["rpi4-arm64-onnxruntime"])
    measurements["quantization"]["latency"].update(ratio=ratio, int8_ms=0.05, float_ms=0.05 * ratio)
    text, page = render_markdown(manifest, measurements), render_html(manifest, measurements)
    assert (NOT_FASTER in text) is loud
    assert ("> **WARNING: " + NOT_FASTER in text) is loud
    assert ('<p class="warn">WARNING: ' + NOT_FASTER in page) is loud
    assert "host (x86_64) proxy, not the device" in text


def test_device_figures_keep_their_labels(emulated):
    manifest, measurements = emulated
    text = render_markdown(manifest, measurements)
    figures = measurements["figures"]
    wall = _line(text, "median 0.604 ms")
    assert "EMULATED" in wall and measurements["latency"]["label"] in wall and "4.74 ms" in wall
    estimate = _line(text, "0.0989 ms")
    assert (
        "estimate" in estimate and figures["estimate"]["label"] in estimate and "band 0.0565 ms - 0.173 ms" in estimate
    )
    roofline = _line(text, "0.0215 ms")
    assert "lower bound" in roofline and figures["roofline"]["label"] in roofline
    for line in (wall, estimate, roofline):
        assert not CLAIMS_MEASURED.search(line), line
    assert "160,236" in _line(text, "instructions per inference")
    assert f"estimate formula: {figures['estimate']['formula']}" in text
    assert f"roofline formula: {figures['roofline']['formula']}" in text
    assert "emulated CPU: cortex-a72" in text and "runtime on the device: onnxruntime 1.32.0" in text
    assert "outputs agree with the host: yes" in text
    assert "latency budget 200 ms, applied to the estimate: within the budget" in text
    assert not CLAIMS_MEASURED.search(text.split("## Device check")[1])


def test_a_measured_run_says_measured_with_its_label(emulated):
    manifest, measurements = emulated
    manifest["device_check"].update(runner="ssh", cpu=None)
    label = "MEASURED on the device (pi.local, over ssh)"
    measurements = {"latency": {**measurements["latency"], "label": label}, "instructions": {"note": "not counted"}}
    text = render_markdown(manifest, measurements)
    row = _line(text, "median 0.604 ms")
    assert row.startswith("| wall time, measured |") and label in row
    assert "EMULATED" not in text.split("## Device check")[1]
    assert wall_time_kind("measured natively on this x86_64 host") == "measured"
    assert wall_time_kind("emulated: docker --platform linux/arm64 under qemu on this host") == "EMULATED"
    assert wall_time_kind("estimate for the device, not measured") == ""


def test_validation_and_compression_sections():
    manifest = _fp32_manifest()
    measurements = {
        "compression": [
            {
                "method": "prune-structured",
                "latency": {
                    "before_ms": 0.0168,
                    "after_ms": 0.0115,
                    "runs": 30,
                    "runtime": "litert",
                    "speedup": 1.459,
                    "threads": 1,
                },
            }
        ]
    }
    text = render_markdown(manifest, measurements)
    assert "## Validation against the source model" in text and "Validation PASSED." in text
    assert "Budget: max abs error <= 0.05, cosine >= 0.999, top-1 agreement >= 0.99." in text
    assert "## Compression 1: prune-structured" in text
    assert _line(text, "| MACs per inference |").endswith("| 309,248 | 80,896 |")
    assert _line(text, "| gzip archive size |") == "| gzip archive size | 40,924 B = 40.0 KiB | 17,940 B = 17.5 KiB |"
    assert "speed-up 1.459x" in _line(text, "host latency (litert")
    assert "| conv0 | Conv2D | 144 -> 72 | 16 -> 8 | 0.00% |" in text
    assert "Not run: skipped (--no-device-check)." in text
    page = render_html(manifest, measurements)
    assert page.count(PNG) == 1  # the before/after size chart
    assert render_markdown(manifest, None)  # measurements are optional


def test_html_is_offline_parseable_and_has_every_chart(emulated):
    manifest, measurements = emulated
    page = render_html(manifest, measurements)
    parser = _parse(page)
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}
    for value in parser.attributes:
        assert "http://" not in value and "https://" not in value and "//" not in value.split(":", 1)[0], value
    style = page.split("<style>")[1].split("</style>")[0]
    assert "url(" not in style and "@import" not in style
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # per-layer SQNR, float vs int8 size, latency distribution
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert "Per-layer quantization error" in page and "Model size: float vs int8" in page
    assert "Wall time per inference\nEMULATED (QEMU user-mode TCG" in page


def test_html_escapes_manifest_strings(emulated):
    manifest, measurements = emulated
    evil = "<script>alert(1)</script> $x_1$ & co"
    manifest["target"]["description"] = evil
    manifest["quantization"]["layers"][0]["name"] = evil
    measurements["latency"]["label"] = "EMULATED " + evil
    page = render_html(manifest, measurements)
    _parse(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; $x_1$ &amp; co" in page
    assert page.count(PNG) == 3  # math text is off: "$x_1$" in a label draws as it is


def test_html_without_matplotlib(emulated, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    manifest, measurements = emulated
    page = render_html(manifest, measurements)
    _parse(page)
    assert PNG not in page
    assert "Charts are not included: matplotlib is not installed." in page
    assert "pip install &#x27;edgepack[report]&#x27;" in page
    assert "median 0.604 ms" in page and "0.0989 ms" in page  # the figures are all still there


def test_short_chart_names():
    assert short_name("model_1/block_1/conv1_1/Relu;model_1/block_1/bn1_1/add") == "conv1_1/Relu"
    assert short_name("/conv0/Conv_output_0") == "conv0/Conv_output_0"
    assert len(short_name("x/" + "a" * 100)) == 40


def _fp32_manifest() -> dict:
    """An fp32 manifest after structured pruning, shaped as the bundle stages write it."""
    stats = {"format": "keras", "eval_samples": 60, "sparsity": 0.0}
    before = {
        **stats,
        "accuracy": 0.9833,
        "archive_bytes": 40924,
        "file_bytes": 79930,
        "macs": 309248,
        "nonzero_params": 10074,
        "params": 10074,
    }
    after = {
        **stats,
        "accuracy": 0.7667,
        "agreement": 0.7667,
        "archive_bytes": 17940,
        "file_bytes": 54892,
        "macs": 80896,
        "nonzero_params": 3890,
        "params": 3890,
    }
    layer = {
        "name": "conv0",
        "op": "Conv2D",
        "params_before": 144,
        "params_after": 72,
        "channels_before": 16,
        "channels_after": 8,
        "sparsity": 0.0,
        "zeros_after": 0,
    }
    return {
        "target": {"name": "rpi4-arm64", "description": "Raspberry Pi 4: LiteRT .tflite"},
        "model": {"file": "model.tflite", "format": "tflite", "precision": "fp32", "size_bytes": 18644},
        "runtime": {"name": "litert", "version": ">=1.0", "arch": "aarch64", "delegate": "xnnpack"},
        "source": {"file": "digits_cnn.keras", "format": "keras", "sha256": "87490dcd4538b738" * 4},
        "steps": [
            {"name": "convert", "from": "keras", "to": "tflite", "tool": "tflite-converter", "tool_version": "2.21.0"}
        ],
        "validation": {
            "samples": 32,
            "passed": True,
            "failures": [],
            "precision": "f32",
            "reference_runtime": "tensorflow",
            "reference_version": "2.21.0",
            "candidate_runtime": "litert",
            "candidate_version": "2.3.0",
            "outputs": [
                {"name": "probs", "max_abs_error": 2.4e-07, "cosine": 1.0, "sqnr_db": 120.0, "top1_agreement": 1.0}
            ],
            "tolerance": {"max_abs_error": 0.05, "min_cosine": 0.999, "min_top1_agreement": 0.99},
        },
        "compression": [
            {
                "method": "prune-structured",
                "before": before,
                "after": after,
                "layers": [layer],
                "settings": {"sparsity": 0.5, "structured": True},
                "notes": [],
            }
        ],
        "compatibility": {
            "checked": True,
            "ok": True,
            "verdict": "compatible",
            "table": "litert",
            "runtime": "litert",
            "unsupported": [],
            "unknown": [],
            "notes": [],
        },
        "device_check": {"ran": False, "reason": "skipped (--no-device-check)"},
    }
