"""Per-layer figures named by the source model's layers: the matcher on real converter names, and a bundle's report.

The converter names are made for real from the shipped digits CNN (layers image, conv0, bn0, relu0, conv1,
bn1, relu1, pool, flatten, probs): TFLiteConverter's fused tensor names, tf2onnx's generated ``Conv__3``
nodes, OpenVINO's ``Conv__3/WithoutBiases``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

import edgepack
from edgepack.artifact import Artifact, ModelFormat
from edgepack.charts import layer_label
from edgepack.errors import AccuracyError
from edgepack.layer_names import (
    converter_aliases,
    display_name,
    short_converter_name,
    source_layer,
    source_layer_names,
    source_layers,
)
from edgepack.report import Chart, report_blocks

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.keras"
DATA = ROOT / "calibration" / "digits" / "digits.npz"
DIGITS_LAYERS = ("image", "conv0", "bn0", "relu0", "conv1", "bn1", "relu1", "pool", "flatten", "probs")
SOURCE_LAYER = re.compile(r"\| (conv0|conv1|bn0|bn1|relu0|relu1|pool|flatten|probs)\b[^|]*\| ")


def _strict(**quantize):
    """rpi4-arm64-onnxruntime at int8 with a budget the digits int8 model misses (97.3% vs 98.7%)."""
    from edgepack.profiles import load_profile

    return load_profile(
        "rpi4-arm64-onnxruntime",
        overrides={
            "precision": "int8",
            "accuracy": {"int8_min_relative_accuracy": 1.0},
            "quantize": quantize,
            "latency": {"runs": 3},
        },
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Artifact]:
    """The digits CNN and what the converters make of it: float .tflite, ONNX (tf2onnx), OpenVINO IR."""
    from edgepack.convert import ConvertOptions, convert
    from edgepack.source import open_source

    work = tmp_path_factory.mktemp("layer-names")
    source = open_source(DIGITS, batch=1)
    onnx = convert(source, ModelFormat.ONNX, work / "onnx", ConvertOptions())
    return {
        "source": source,
        "tflite": convert(source, ModelFormat.TFLITE, work / "tflite", ConvertOptions()),
        "onnx": onnx,
        "openvino": convert(onnx, ModelFormat.OPENVINO, work / "openvino", ConvertOptions()),
    }


# --------------------------------------------------------------------------- the matcher, on made-up names


def test_keras_retraced_scopes_and_wrappers_are_seen_through():
    names = ["conv1", "bn1", "relu1"]
    fused = "StatefulPartitionedCall/m_1/relu1_1/Relu;m_1/bn1_1/batchnorm/add_1;m_1/conv1_1/convolution"
    assert source_layer(fused, names) == "relu1"  # the first fused part names the op
    assert source_layers(fused, names) == ("relu1", "bn1", "conv1")
    assert source_layer("serving_default_image:0", ["image"]) == "image"
    assert source_layer("edgepack_fixed_shape_1/m_1/conv1_1/convolution:0", names) == "conv1"


def test_an_exact_name_wins_over_a_retraced_one():
    assert source_layer("m/conv_1/Conv2D", ["conv", "conv_1"]) == "conv_1"
    assert source_layer("m/conv_2/Conv2D", ["conv", "conv_1"]) == "conv"


def test_the_deepest_segment_and_the_longest_run_win():
    assert source_layer("model/backbone_1/conv1_1/Relu", ["backbone", "conv1"]) == "conv1"  # nested model
    torch_names = ["/backbone/conv1/Conv", "/backbone/conv1/Conv_output_0", "/head/Gemm"]
    assert source_layer("/backbone/conv1/Conv", torch_names) == "/backbone/conv1/Conv"
    assert source_layer("/backbone/conv1/Conv_output_0_DequantizeLinear_Output", torch_names) == (
        "/backbone/conv1/Conv_output_0"
    )
    assert source_layer("/head/Gemm_quant", torch_names) is None


def test_nothing_matching_is_none_not_a_guess():
    names = ["conv1", "dense"]
    for name in ("Conv__3", "StatefulPartitionedCall_1:0", "arith.constant", "model/conv12/Relu", "convolution", ""):
        assert source_layer(name, names) is None, name
    assert source_layers("Conv__3", names) == ()
    assert source_layer("model/add/1", ["1", "2"]) is None  # bare numbers (old PyTorch tensor names) name nothing


def test_an_op_named_like_a_layer_does_not_take_its_scope():
    names = ["bn1", "add_1", "add"]  # a ResNet's residual adds share names with TensorFlow's ops
    assert source_layer("model_1/bn1_1/batchnorm/add_1", names) == "bn1"
    assert source_layer("model_1/add_1_1/Add", names) == "add_1"
    assert source_layer("add_1", names) == "add_1"


def test_aliases_name_generated_nodes_through_their_weights():
    aliases = {"Conv__3": ("model_1/conv0_1/convolution/merged_input:0", "model_1/relu0_1/Relu:0")}
    assert source_layer("Conv__3", ["conv0", "relu0"], aliases=aliases) == "conv0"
    assert source_layer("Conv__3/WithoutBiases", ["conv0"], aliases=aliases) == "conv0"  # OpenVINO's suffix
    assert source_layer("Conv__4", ["conv0"], aliases=aliases) is None


def test_short_and_display_names():
    fused = "edgepack_fixed_shape_1/m_1/relu1_1/Relu;m_1/bn1_1/batchnorm/add_1;m_1/conv1_1/convolution"
    assert short_converter_name(fused) == "m_1/relu1_1/Relu;..."
    assert len(short_converter_name("x/" + "a" * 200)) == 60
    assert display_name(fused, "relu1", "TFLite") == "relu1 (TFLite: m_1/relu1_1/Relu;...)"
    assert display_name("Conv__3", None, "ONNX") == "Conv__3"
    assert display_name("probs", "probs", "OpenVINO") == "probs"


# --------------------------------------------------------------------------- reading the source's names


def test_names_are_read_from_the_files(converted, tmp_path):
    source = converted["source"]
    assert source_layer_names(source) == DIGITS_LAYERS
    onnx_names = source_layer_names(converted["onnx"])
    assert {"Conv__3", "digits_cnn_1/relu0_1/Relu:0", "image", "probs"} <= set(onnx_names)
    tflite = converted["tflite"]
    tflite_names = source_layer_names(tflite)
    assert {spec.name for spec in (*tflite.inputs, *tflite.outputs)} <= set(tflite_names)
    assert any("digits_cnn_1/conv0_1/convolution" in n for n in tflite_names)
    damaged = tmp_path / "damaged.keras"
    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr("config.json", "{not json")
    broken = Artifact(damaged, ModelFormat.KERAS, "0" * 64, source.inputs, source.outputs)
    assert source_layer_names(broken) == ("image", "probs")  # its I/O names, no error


def test_h5_names_come_from_the_model_config(tiny_keras_model, tiny_h5_path):
    from edgepack.source import open_source

    expected = [layer.name for layer in tiny_keras_model.layers]
    names = source_layer_names(open_source(tiny_h5_path, batch=1))
    assert [n for n in names if n in expected] == expected
    assert "float32" not in names  # a dtype policy's name is not a layer


# --------------------------------------------------------------------------- real converter names


def test_tflite_fused_names_map_to_the_keras_layers(converted):
    from edgepack.macs import load_tflite

    names = source_layer_names(converted["source"])
    aliases = converter_aliases(converted["tflite"])
    tensors = [t.name.decode() for t in load_tflite(converted["tflite"].path).subgraphs[0].tensors]
    found = {n: source_layers(n, names, aliases=aliases) for n in tensors}
    fused = [n for n in tensors if ";" in n and "conv1_1" in n and "relu1_1" in n]
    assert fused and all(found[n][0] == "relu1" and "conv1" in found[n] for n in fused)
    assert {found[n][0] for n in tensors if found[n]} >= {"conv0", "conv1", "relu0", "pool", "flatten", "probs"}
    output = converted["tflite"].outputs[0].name  # StatefulPartitionedCall_1:0: named by the signature
    assert source_layer(output, names) is None and found[output] == ("probs",)


def test_tf2onnx_and_openvino_nodes_map_to_the_keras_layers(converted):
    import onnx
    import openvino as ov

    names = source_layer_names(converted["source"])
    aliases = converter_aliases(converted["onnx"], converted["openvino"])
    convs = [n.name for n in onnx.load(str(converted["onnx"].path)).graph.node if n.op_type == "Conv"]
    assert [source_layer(n, names) for n in convs] == [None, None]  # tf2onnx's Conv__3, Conv__4
    assert [source_layer(n, names, aliases=aliases) for n in convs] == ["conv0", "conv1"]
    model = ov.Core().read_model(str(converted["openvino"].path))
    ops = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    assert [source_layer(n, names, aliases=aliases) for n in ops] == ["conv0", "conv1", "probs"]


# --------------------------------------------------------------------------- quantization and the bundle


def test_accuracy_error_names_the_source_layers_first(converted, tmp_path):
    from edgepack.calibration import load_dataset
    from edgepack.quantize import quantize_for_target

    source, onnx = converted["source"], converted["onnx"]
    profile = _strict(max_float_layers=0)
    calibration, heldout = load_dataset(DATA, source.inputs).split(profile.quantize.holdout, seed=0)
    with pytest.raises(AccuracyError) as caught:
        quantize_for_target(
            source=source,
            pre=onnx,
            float_artifact=onnx,
            profile=profile,
            calibration=calibration,
            heldout=heldout,
            workdir=tmp_path,
            seed=0,
        )
    worst = str(caught.value).split("Worst layers: ")[1]
    culprits = re.findall(r"(\w+) \(ONNX: ([^)]+)\) \[(\w+), SQNR", worst)
    assert culprits and culprits[0][0] in DIGITS_LAYERS, worst
    assert ("conv0", "Conv__3", "Conv") in culprits and ("conv1", "Conv__4", "Conv") in culprits, worst


def test_bundle_report_names_the_keras_layers(tmp_path):
    result = edgepack.package(
        DIGITS,
        targets=[_strict(max_float_layers=1)],
        out=tmp_path / "out",
        data=DATA,
        precision="int8",
        device_check=False,
        allow_accuracy_drop=True,
    )
    (target,) = result.targets
    quant = target.manifest["quantization"]
    layers = {e["name"]: e for e in quant["layers"]}
    assert layers["Conv__3"]["source"] == "conv0" and layers["Conv__4"]["source"] == "conv1"
    assert all(e["source"] in DIGITS_LAYERS for e in quant["layers"]), quant["layers"]
    repaired = quant["repaired"]
    assert len(repaired["attempts"]) == 2 and not repaired["attempts"][0]["passed"]  # the gate failed once
    kept = repaired["attempts"][1]["excluded"]
    assert repaired["attempts"][1]["excluded_source"] == [layers[kept[0]]["source"]]
    report = (target.bundle / "report" / "report.md").read_text()
    table = report.split("### Per-layer error")[1].split("\n\n")[2]
    assert "| layer | converter name | op |" in table
    for row in table.splitlines()[2:]:
        assert SOURCE_LAYER.match(row), row
    assert "| conv0 | Conv__3 | Conv |" in table and "| conv1 | Conv__4 | Conv |" in table
    chart = next(b for b in report_blocks(target.manifest, {}) if isinstance(b, Chart) and b.kind == "layers")
    labels = {layer_label(row) for row in chart.data["layers"]}
    assert {"conv0 [Conv]", "conv1 [Conv]"} <= labels
    float_list = report.split("### Layers kept in float (repair)")[1].split("\n\n")[1]
    source = layers[kept[0]]["source"]
    assert float_list.startswith(f"- {source} ({short_converter_name(kept[0])})"), float_list
