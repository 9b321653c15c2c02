"""Operator compatibility: the shipped tables, the JetPack -> TensorRT -> opset mapping, and each runtime's checker."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgepack.compat import CompatVerdict, check_compatibility
from edgepack.compat.check import precheck_onnx_for
from edgepack.compat.refresh import tflite_kernels
from edgepack.compat.tablefile import onnx2tf_ops, onnxruntime_cpu_kernels, to_toml
from edgepack.compat.tables import available, load_table
from edgepack.deps import version_of
from edgepack.profiles import Runtime, load_all, load_profile

TABLES = {
    "litert", "tflite_runtime", "onnxruntime_cpu", "onnx2tf", "openvino_onnx", "openvino_onnx_domains",
    "tensorrt_8.5", "tensorrt_8.6", "tensorrt_10.3",
}  # fmt: skip


def _jetson(tmp_path, jetpack: str):
    """The built-in Jetson profile on another JetPack, as a user's own profile file."""
    path = tmp_path / f"jetson-jp{jetpack}.toml"
    path.write_text(f'extends = "jetson-orin-trt"\nname = "jetson-jp{jetpack}"\n\n[tensorrt]\njetpack = "{jetpack}"\n')
    return load_profile(path)


# --------------------------------------------------------------------------- tables and the JetPack mapping


def test_every_table_loads_and_names_its_source() -> None:
    assert set(available()) == TABLES
    for name in TABLES:
        table = load_table(name)
        assert table.supported or table.versions or table.opsets, name
        assert "measured_with" in table.meta or table.meta["source"].startswith("https://"), name


def test_jetpack_maps_to_tensorrt_and_its_max_opset() -> None:
    trt = load_profile("jetson-orin-trt").tensorrt
    assert trt is not None
    assert trt.jetpack_tensorrt == {"5.1": "8.5", "6.0": "8.6", "6.1": "10.3", "6.2": "10.3"}
    assert trt.tensorrt_max_opset == {"8.5": 17, "8.6": 17, "10.3": 20}
    for version, max_opset in trt.tensorrt_max_opset.items():
        assert load_table(f"tensorrt_{version}").meta["max_opset"] == max_opset  # profile and table agree


def test_every_builtin_profile_has_a_table() -> None:
    for profile in load_all():
        verdict = check_compatibility({"Relu": 1}, profile, opset=17)
        assert verdict.table, profile.name
        assert verdict.ok, (profile.name, verdict)


def test_tensorrt_tables_grow_with_the_release() -> None:
    old, mid, new = (load_table(f"tensorrt_{v}") for v in ("8.5", "8.6", "10.3"))
    assert old.supported < mid.supported < new.supported | new.unknown
    assert {"LayerNormalization", "GroupNormalization", "IsInf"} == mid.supported - old.supported


# --------------------------------------------------------------------------- TensorRT


def test_tensorrt_85_names_every_unsupported_op_and_the_opset_note(tmp_path) -> None:
    profile = _jetson(tmp_path, "5.1")
    ops = {"Conv": 3, "LayerNormalization": 1, "com.example.MyOp": 2, "Relu": 3}
    verdict = check_compatibility(ops, profile, opset=19)
    assert isinstance(verdict, CompatVerdict)
    assert (verdict.target, verdict.runtime, verdict.ok) == ("jetson-jp5.1", "tensorrt", False)
    assert verdict.unsupported == ("LayerNormalization", "com.example.MyOp")
    assert verdict.verdict == "incompatible"
    assert "opset 19 > TensorRT 8.5 max 17; edgepack will convert it down" in verdict.notes
    assert any("custom-domain ops need a TensorRT plugin" in n for n in verdict.notes)


def test_tensorrt_103_runs_layernorm_but_not_custom_domains(tmp_path) -> None:
    verdict = check_compatibility({"LayerNormalization": 1, "com.example.MyOp": 1}, _jetson(tmp_path, "6.1"), opset=17)
    assert verdict.unsupported == ("com.example.MyOp",)
    assert not any("convert it down" in n for n in verdict.notes)


def test_tensorrt_undocumented_op_is_unknown_not_supported(tmp_path) -> None:
    verdict = check_compatibility({"Gelu": 1, "Conv": 1}, _jetson(tmp_path, "6.2"), opset=20)
    assert (verdict.ok, verdict.unsupported, verdict.unknown, verdict.verdict) == (False, (), ("Gelu",), "unknown")


def test_op_newer_than_the_target_opset_cannot_be_converted_down(tmp_path) -> None:
    verdict = check_compatibility({"GroupNormalization": 1}, _jetson(tmp_path, "6.0"), opset=18)
    assert verdict.unsupported == ("GroupNormalization",)
    assert any("needs opset 18 > target opset 17" in n for n in verdict.notes)


def test_tflite_ops_on_an_onnx_target_are_unknown() -> None:
    verdict = check_compatibility({"CONV_2D": 1}, load_profile("jetson-orin-trt"), opset=None, op_kind="tflite")
    assert (verdict.ok, verdict.unknown) == (False, ("CONV_2D",))


# --------------------------------------------------------------------------- ONNX Runtime, OpenVINO


def test_onnxruntime_cpu_kernels() -> None:
    profile = load_profile("rpi4-arm64-onnxruntime")
    assert check_compatibility({"Conv": 1, "com.microsoft.FusedConv": 1}, profile, opset=17).ok
    verdict = check_compatibility({"Upsample": 1, "com.example.Foo": 1}, profile, opset=17)
    assert verdict.unsupported == ("Upsample", "com.example.Foo")
    assert any("Upsample has no CPU kernel after opset 9" in n for n in verdict.notes)


def test_openvino_onnx_frontend() -> None:
    profile = load_profile("intel-openvino-cpu")
    assert check_compatibility({"Conv": 1, "com.microsoft.FusedConv": 1, "LpPool": 1}, profile, opset=17).ok
    verdict = check_compatibility({"Det": 1, "com.microsoft.Inverse": 1, "my.domain.Op": 1}, profile, opset=17)
    assert verdict.unsupported == ("Det", "com.microsoft.Inverse", "my.domain.Op")


# --------------------------------------------------------------------------- LiteRT and tflite-runtime


def test_litert_builtins_and_flex_ops() -> None:
    profile = load_profile("rpi4-arm64")
    assert check_compatibility({"CONV_2D": 1, "FULLY_CONNECTED": 2}, profile, opset=None, op_kind="tflite").ok
    verdict = check_compatibility({"CONV_2D": 1, "FlexErf": 1}, profile, opset=None, op_kind="tflite")
    assert verdict.unsupported == ("FlexErf",)
    assert any("select-TF (Flex) op" in n for n in verdict.notes)


def test_tflite_runtime_214_lacks_newer_ops_and_op_versions() -> None:
    old, new = load_profile("rpi-armv7"), load_profile("rpi4-arm64")
    assert old.runtime is Runtime.TFLITE_RUNTIME
    ops = {"STABLEHLO_ADD": 1, "FULLY_CONNECTED": 1}
    versions = {"FULLY_CONNECTED": 12}
    verdict = check_compatibility(ops, old, opset=None, op_kind="tflite", op_versions=versions)
    assert verdict.unsupported == ("FULLY_CONNECTED", "STABLEHLO_ADD")
    assert any("FULLY_CONNECTED v12 is outside tflite-runtime 2.14.0's v1-v10" in n for n in verdict.notes)
    assert check_compatibility(ops, new, opset=None, op_kind="tflite", op_versions=versions).ok


def test_onnx_graph_on_litert_goes_through_onnx2tf() -> None:
    verdict = check_compatibility({"Conv": 1, "Loop": 1}, load_profile("rpi4-arm64"), opset=17)
    assert verdict.unsupported == ("Loop",)
    assert any("onnx2tf 1.28.8" in n for n in verdict.notes)


def test_gpu_profile_says_delegate_coverage_is_unchecked() -> None:
    verdict = check_compatibility({"CONV_2D": 1}, load_profile("android-arm64-gpu"), opset=None, op_kind="tflite")
    assert verdict.ok and any("GPU delegate" in n for n in verdict.notes)


# --------------------------------------------------------------------------- regeneration


def test_table_writer_round_trips(tmp_path) -> None:
    text = to_toml(["source: here"], {"table": "x"}, {"supported": ["b", "a"], "opsets": {"com.x.Op": [1, 3]}})
    data = tomllib.loads(text)
    assert data["ops"]["supported"] == ["a", "b"] and data["ops"]["opsets"] == {"com.x.Op": [1, 3]}


def test_onnxruntime_kernel_registry_matches_the_installed_runtime() -> None:
    """The table's fallback for ops no test model covers is the installed runtime's kernel registry."""
    table = load_table("onnxruntime_cpu")
    assert table.meta["measured_with"] == f"onnxruntime {version_of('onnxruntime')}", "stale: see test_compat_measured"
    measured = {k: (v[0], v[1] if len(v) > 1 else None) for k, v in onnxruntime_cpu_kernels().items()}
    assert measured == dict(table.opsets)


def test_litert_table_matches_the_installed_runtime() -> None:
    import ai_edge_litert.schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    assert load_table("litert").meta["measured_with"] == f"ai-edge-litert {version_of('ai-edge-litert')}"
    measured = {k: tuple(v) for k, v in tflite_kernels(schema, Interpreter).items()}
    assert measured == dict(load_table("litert").versions)


def test_onnx2tf_table_covers_every_converter_once() -> None:
    """Every op onnx2tf has a converter for is supported, unsupported or unknown (not measured) - exactly one."""
    table = load_table("onnx2tf")
    sets = (table.supported, table.unsupported, table.unknown)
    assert sum(len(s) for s in sets) == len(frozenset().union(*sets))
    listed = {op.rpartition(".")[2] for op in table.supported | table.unsupported | table.unknown}
    assert set(onnx2tf_ops()) <= listed
    assert {"Conv", "Constant", "Shape", "If"} <= table.supported and "Loop" in table.unsupported


def test_onnx_function_ops_count_as_supported_by_onnxruntime():
    """HardSwish has no ORT kernel but is an ONNX function op: ORT expands it (a real model uses it)."""
    table = load_table("onnxruntime_cpu")
    assert "HardSwish" in table.supported and "HardSwish" not in table.opsets  # measured, not a kernel
    verdict = check_compatibility({"HardSwish": 3, "Conv": 2}, load_profile("rpi4-arm64-onnxruntime"), opset=15)
    assert verdict.ok and not verdict.unsupported
    made_up = check_compatibility({"NoSuchOp": 1}, load_profile("rpi4-arm64-onnxruntime"), opset=15)
    assert made_up.unsupported == ("NoSuchOp",)


# --------------------------------------------------------------------------- precheck of an ONNX source


def _onnx_source(tmp_path, nodes, initializers=()) -> Path:
    """A graph ``x -> nodes -> y`` written as given (custom-domain ops are loaded, never run)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    value = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), name) for name in initializers]
    graph = helper.make_graph(nodes, "g", [value("x", 1, [1, 4])], [value("y", 1, None)], inits)
    domains = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=domains), path)
    return path


def test_precheck_refuses_custom_domain_ops_onnx2tf_has_no_converter_for(tmp_path) -> None:
    from onnx import helper

    nodes = [
        helper.make_node("DynamicQuantizeLSTM", ["x"], ["h"], domain="com.microsoft"),
        helper.make_node("FusedConv", ["h", "w"], ["c"], domain="com.microsoft"),  # onnx2tf converts it
        helper.make_node("MatMulInteger", ["c", "w"], ["m"]),  # measured unsupported, but it has a converter
        helper.make_node("QuickGelu", ["w"], ["k"], domain="com.microsoft"),  # constants only: folding removes it
        helper.make_node("Add", ["m", "k"], ["y"]),
    ]
    path = _onnx_source(tmp_path, nodes, initializers=["w"])
    litert = [p for p in load_all() if p.runtime in (Runtime.LITERT, Runtime.TFLITE_RUNTIME)]
    assert litert

    for profile in litert:
        assert precheck_onnx_for(profile, path) == ["com.microsoft.DynamicQuantizeLSTM"], profile.name
    for profile in load_all():
        if profile not in litert:  # these take the ONNX graph as it is: checked after it is prepared
            assert precheck_onnx_for(profile, path) == [], profile.name


def test_precheck_leaves_ai_onnx_ops_to_the_conversion(tmp_path) -> None:
    from onnx import helper

    nodes = [helper.make_node("Loop", ["x"], ["l"]), helper.make_node("Erf", ["l"], ["y"])]  # both measured failing
    assert precheck_onnx_for(load_profile("rpi4-arm64"), _onnx_source(tmp_path, nodes)) == []


def test_onnx2tf_verdict_names_custom_domain_ops_without_a_converter() -> None:
    ops = {"com.microsoft.DynamicQuantizeLSTM": 2, "com.microsoft.FusedConv": 1, "Conv": 3}
    verdict = check_compatibility(ops, load_profile("rpi4-arm64"), opset=17)
    assert verdict.unsupported == ("com.microsoft.DynamicQuantizeLSTM",)
    assert "com.microsoft.FusedConv" in verdict.unknown  # onnx2tf has a converter no test model ran
    assert any(n.startswith("com.microsoft.DynamicQuantizeLSTM: onnx2tf has no converter") for n in verdict.notes)


def test_openvino_runs_onnxruntimes_dynamic_quantized_lstm() -> None:
    """The docs' table leaves it out, but OpenVINO's frontend converts it (the zoo's tashkeel-int8-msft ran)."""
    ops = {"com.microsoft.DynamicQuantizeLSTM": 2}
    verdict = check_compatibility(ops, load_profile("intel-openvino-cpu"), opset=17)
    assert verdict.ok and not verdict.unsupported
