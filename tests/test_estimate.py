"""Latency figures: the device estimate, the roofline bound and the budget, on hand-computed numbers.

One test (marked ``emulation``) counts a tiny bundle's instructions under QEMU and estimates from them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgepack.errors import LatencyBudgetError, ProfileError
from edgepack.estimate import (
    DEFAULT_IPC_UNCERTAINTY,
    EMULATED_LABEL,
    PARALLEL_FRACTION_RANGE,
    check_budget,
    compute_scale,
    device_estimate,
    emulated_wall_time,
    latency_figures,
    roofline,
    speedup,
)
from edgepack.macs import Cost
from edgepack.profiles import Precision, load_profile

RUN_PY = Path(__file__).resolve().parent.parent / "edgepack" / "templates" / "run.py"


def _device(**overrides) -> SimpleNamespace:
    """A 1 GHz, IPC 1, 4-core device: 1e6 instructions take exactly 1 ms on one core."""
    facts = {
        "name": "test board",
        "cpu": "Cortex-A72",
        "cores": 4,
        "clock_ghz": 1.0,
        "ipc": 1.0,
        "ipc_uncertainty": 2.0,
        "peak_gflops": 10.0,
        "mem_bandwidth_gbs": 10.0,
    }
    return SimpleNamespace(**{**facts, **overrides})


def _cost(macs: int, weight_bytes: int, activation_bytes: int = 0) -> Cost:
    return Cost(macs=macs, params=weight_bytes // 4, weight_bytes=weight_bytes, activation_bytes=activation_bytes)


# --------------------------------------------------------------------------- device estimate


def test_estimate_is_instructions_over_ipc_times_clock():
    est = device_estimate(1_000_000, _device())
    assert est.value_ms == pytest.approx(1.0)
    assert (est.low_ms, est.high_ms) == pytest.approx((0.5, 2.0))  # ipc x/÷ 2
    assert "1,000,000" in est.formula and "1 GHz" in est.formula
    assert est.inputs["ipc"] == 1.0 and est.inputs["threads"] == 1 and est.inputs["parallel_fraction"] is None
    # 2.4 GHz, IPC 1.5: 3.6e9 instructions per second -> 360e6 instructions take 100 ms.
    assert device_estimate(360_000_000, _device(clock_ghz=2.4, ipc=1.5)).value_ms == pytest.approx(100.0)


def test_more_threads_divide_by_amdahls_speedup():
    est = device_estimate(1_000_000, _device(), threads=4)
    # p = 0.75: S(4) = 1 / (0.25 + 0.75 / 4) = 1 / 0.4375
    assert est.value_ms == pytest.approx(0.4375)
    p_low, p_high = PARALLEL_FRACTION_RANGE
    assert est.low_ms == pytest.approx(0.5 * ((1 - p_high) + p_high / 4))
    assert est.high_ms == pytest.approx(2.0 * ((1 - p_low) + p_low / 4))
    assert device_estimate(1_000_000, _device(), threads=16).value_ms == est.value_ms  # capped at the 4 cores
    assert speedup(1) == 1.0


def test_a_device_parallel_fraction_replaces_the_generic_one():
    device = _device(parallel_fraction=0.45, parallel_fraction_range=(0.05, 0.65))
    est = device_estimate(1_000_000, device, threads=4)
    assert est.value_ms == pytest.approx((1 - 0.45) + 0.45 / 4)  # t1 = 1 ms
    assert est.low_ms == pytest.approx(0.5 * ((1 - 0.65) + 0.65 / 4))
    assert est.high_ms == pytest.approx(2.0 * ((1 - 0.05) + 0.05 / 4))
    assert est.inputs["parallel_fraction"] == 0.45 and "p = 0.45 in [0.05, 0.65]" in est.formula
    # the generic band stays for boards without one, and one thread ignores p
    assert device_estimate(1_000_000, device).value_ms == pytest.approx(1.0)


def test_the_pi4_profile_carries_its_measured_thread_scaling():
    from edgepack.profiles import load_profile

    for name in ("rpi4-arm64", "rpi4-arm64-onnxruntime"):
        device = load_profile(name).device
        assert device.parallel_fraction == 0.45 and tuple(device.parallel_fraction_range) == (0.05, 0.65), name
    for name in ("rpi5-arm64", "rpi5-arm64-onnxruntime"):  # extends rpi4-arm64 but scales like the generic board
        device = load_profile(name).device
        assert device.parallel_fraction == 0.75 and tuple(device.parallel_fraction_range) == (0.4, 0.95), name


def test_a_parallel_fraction_outside_its_band_is_refused():
    from pydantic import ValidationError

    from edgepack.profiles import Device

    facts = {"name": "b", "cores": 4, "clock_ghz": 1.0, "ram_gb": 1.0}
    with pytest.raises(ValidationError, match="inside parallel_fraction_range"):
        Device(**facts, parallel_fraction=0.9, parallel_fraction_range=(0.1, 0.5))
    with pytest.raises(ValidationError, match="low <= high"):
        Device(**facts, parallel_fraction_range=(0.6, 0.5))


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize(("ipc", "uncertainty"), [(0.5, 1.3), (0.9, 1.75), (2.0, 3.0)])
def test_the_band_contains_the_value(ipc, uncertainty, threads):
    est = device_estimate(123_456_789, _device(ipc=ipc, ipc_uncertainty=uncertainty), threads=threads)
    assert 0 < est.low_ms < est.value_ms < est.high_ms
    assert est.to_dict()["value_ms"] == est.value_ms and est.to_dict()["label"].startswith("estimate")


def test_a_profile_without_ipc_uncertainty_gets_the_default_band():
    device = load_profile("rpi4-arm64").device.model_copy(update={"ipc_uncertainty": None})
    est = device_estimate(10_000_000, device)
    assert est.inputs["ipc_uncertainty"] == DEFAULT_IPC_UNCERTAINTY
    assert est.high_ms / est.value_ms == pytest.approx(DEFAULT_IPC_UNCERTAINTY)
    tuned = device_estimate(10_000_000, load_profile("rpi4-arm64").device)
    assert tuned.inputs["ipc_uncertainty"] == 1.75 and tuned.high_ms / tuned.value_ms == pytest.approx(1.75)


def test_estimate_rejects_what_it_cannot_use():
    with pytest.raises(ProfileError, match="no ipc"):
        device_estimate(1_000, _device(ipc=None))
    for bad in (0, -5, True):
        with pytest.raises(ValueError):
            device_estimate(bad, _device())
    with pytest.raises(ValueError):
        device_estimate(1_000, _device(), threads=0)


# --------------------------------------------------------------------------- roofline


def test_roofline_picks_memory_for_a_weight_heavy_low_mac_model():
    # 100 MB of weights at 10 GB/s = 10 ms; 1,000 MACs at 10 GFLOP/s = 0.2 us.
    bound = roofline(_cost(macs=1_000, weight_bytes=100_000_000), _device(), precision="fp32")
    assert bound.limit == "memory"
    assert bound.bound_ms == pytest.approx(10.0) == bound.memory_ms
    assert bound.compute_ms == pytest.approx(2e-4)


def test_roofline_picks_compute_for_a_conv_heavy_model():
    # 5e9 MACs = 1e10 FLOP at 10 GFLOP/s = 1000 ms; 1 MB of weights = 0.1 ms.
    bound = roofline(
        _cost(macs=5_000_000_000, weight_bytes=1_000_000, activation_bytes=50_000_000), _device(), precision="fp32"
    )
    assert bound.limit == "compute"
    assert bound.bound_ms == pytest.approx(1000.0)
    assert bound.activation_ms == pytest.approx(5.0)  # reported, not in the bound
    assert "weights only" in " ".join(bound.notes)
    assert bound.to_dict()["inputs"]["macs"] == 5_000_000_000


def test_roofline_threads_scale_compute_but_not_memory():
    cost = _cost(macs=5_000_000_000, weight_bytes=20_000_000)
    one, four = (roofline(cost, _device(), precision="fp32", threads=n) for n in (1, 4))
    assert four.compute_ms == pytest.approx(one.compute_ms / 4)
    assert four.memory_ms == one.memory_ms


@pytest.mark.parametrize(
    ("cpu", "precision", "scale"),
    [
        ("Cortex-A76 (BCM2712)", "int8", 4.0),  # ARMv8.2 DotProd: SDOT, 16 int8 MACs per instruction
        ("Cortex-A72 (BCM2711)", "int8", 2.0),  # ARMv8.0: no DotProd
        ("Cortex-A53 in AArch32 (BCM2837B0)", "int8", 2.0),
        ("Cortex-A76", "dynamic", 4.0),  # LiteRT's hybrid kernels multiply int8
        ("Cortex-A76", "fp16", 2.0),  # ARMv8.2 FP16 arithmetic
        ("Cortex-A72", "fp16", 1.0),
        ("Cortex-A72", "fp32", 1.0),
        ("Intel Core, AVX2", "int8", 2.0),  # not in the table: the generic rule
        ("Intel Core, AVX2", "fp16", 1.0),
    ],
)
def test_int8_and_fp16_scale_the_compute_peak_by_the_isa(cpu, precision, scale):
    device = _device(cpu=cpu)
    assert compute_scale(device, precision)[0] == scale
    cost = _cost(macs=5_000_000_000, weight_bytes=1_000)
    fp32 = roofline(cost, device, precision="fp32")
    assert roofline(cost, device, precision=precision).compute_ms == pytest.approx(fp32.compute_ms / scale)


def test_roofline_takes_the_precision_enum_and_rejects_unknown_ones():
    cost = _cost(macs=1_000_000, weight_bytes=1_000)
    assert roofline(cost, _device(cpu="Cortex-A76"), precision=Precision.INT8).compute_scale == 4.0
    with pytest.raises(ValueError, match="unknown precision"):
        roofline(cost, _device(), precision="int4")
    with pytest.raises(ProfileError):
        roofline(cost, _device(peak_gflops=None, mem_bandwidth_gbs=None), precision="fp32")


def test_every_builtin_profile_with_device_facts_gives_a_roofline():
    cost = _cost(macs=300_000_000, weight_bytes=14_000_000)
    for name in ("rpi4-arm64", "rpi5-arm64", "rpi-armv7", "android-arm64", "intel-openvino-cpu", "jetson-orin-trt"):
        profile = load_profile(name)
        bound = roofline(cost, profile.device, precision=profile.precision)
        assert math.isfinite(bound.bound_ms) and bound.bound_ms > 0, name


# --------------------------------------------------------------------------- budget


def test_over_budget_raises_latency_budget_error_with_exit_code_9():
    est = device_estimate(150_000_000, _device())  # 150 ms, band 75-300
    with pytest.raises(LatencyBudgetError) as info:
        check_budget(est, 100.0, "rpi4-arm64")
    assert info.value.exit_code == 9
    line = info.value.one_line()
    assert "rpi4-arm64" in line and "150.0 ms" in line and "75.0-300.0 ms" in line and "100 ms" in line
    assert "int8" in line and "latency.budget_ms" in line


def test_under_budget_or_without_one_passes():
    est = device_estimate(50_000_000, _device())  # 50 ms
    assert check_budget(est, 100.0, "t") == {"budget_ms": 100.0, "estimate_ms": est.value_ms, "within_budget": True}
    assert check_budget(est, None, "t")["within_budget"] is None


# --------------------------------------------------------------------------- the four figures


def test_emulated_wall_time_is_median_and_spread_labelled_as_emulated():
    summary = emulated_wall_time([30.0, 10.0, 20.0])
    assert summary["label"] == EMULATED_LABEL and "not device time" in summary["label"]
    assert (summary["median_ms"], summary["min_ms"], summary["max_ms"], summary["runs"]) == (20.0, 10.0, 30.0, 3)
    with pytest.raises(ValueError):
        emulated_wall_time([])


def test_latency_figures_say_why_a_figure_is_missing():
    cost = _cost(macs=5_000_000_000, weight_bytes=1_000_000)
    figures, est = latency_figures(
        times_ms=[1.0, 2.0], instructions=None, cost=cost, device=_device(), precision="fp32", count_note="no plugin"
    )
    assert est is None and figures["estimate"] is None and "no plugin" in figures["notes"][0]
    assert figures["roofline"]["limit"] == "compute" and figures["emulated"]["runs"] == 2
    # 1e6 instructions = 1 ms, below the 1000 ms bound: the ipc must be too optimistic for this model.
    figures, est = latency_figures(
        times_ms=[1.0], instructions=1_000_000, cost=cost, device=_device(), precision="fp32"
    )
    assert est.value_ms == pytest.approx(1.0) and figures["instructions"]["per_inference"] == 1_000_000
    assert any("below the roofline" in n for n in figures["notes"])
    json.dumps(figures)  # the report is plain JSON


# --------------------------------------------------------------------------- emulated


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded (1, 32) -> (1, 64) MatMul + ReLU .tflite with run.py and a manifest."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 64)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 32], tf.float32, name="x")])
    def model(x):
        return {"y": tf.nn.relu(tf.matmul(x, weight))}

    folder = tmp_path_factory.mktemp("estimate_bundle")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    (folder / "model.tflite").write_bytes(converter.convert())
    shutil.copy(RUN_PY, folder / "run.py")
    manifest = {
        "model": {"file": "model.tflite"},
        "runtime": {"name": "litert"},
        "inputs": [{"name": "x", "shape": [1, 32], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 64], "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.emulation
@pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="the qemu backend fetches Debian packages with apt-get and dpkg-deb",
)
def test_a_counted_tiny_bundle_gives_a_finite_positive_estimate(tiny_bundle, tmp_path_factory):
    from edgepack.emulator import get_runner
    from edgepack.macs import estimate_tflite

    profile = load_profile("rpi4-arm64")
    root = Path(os.environ["EDGEPACK_CACHE"]) if os.environ.get("EDGEPACK_CACHE") else tmp_path_factory.mktemp("cache")
    report = tmp_path_factory.mktemp("report") / "stats.json"
    runner = get_runner(profile, root=root, count_instructions=True, timeout_s=300)
    result = runner.run(tiny_bundle, ["--runs", "0", "--count", "1", "--warmup", "1", "--report", str(report)], env={})
    assert result.ok, result.stderr[-2000:]
    # The plugin is built at setup; a failed build is a failure here, not a skip.
    assert result.instructions is not None, f"no instruction count: {result.note}"

    times = [json.loads(report.read_text())["count_ms"]]
    cost = estimate_tflite(tiny_bundle / "model.tflite")
    figures, est = latency_figures(
        times_ms=times, instructions=result.instructions, cost=cost, device=profile.device, precision="fp32"
    )
    assert math.isfinite(est.value_ms) and 0 < est.low_ms < est.value_ms < est.high_ms
    assert est.value_ms < 10.0  # a 2,048-MAC model: well under 10 ms on a Pi 4
    assert figures["emulated"]["label"] == EMULATED_LABEL and figures["roofline"]["bound_ms"] > 0
    assert check_budget(est, profile.latency.budget_ms, profile.name)["within_budget"] is True
