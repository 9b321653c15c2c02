"""Running a bundle's own run.py on the device (native, QEMU, Docker or SSH) and comparing with the host.

The host reference is the same artifact run in the host's runtime on the same
inputs; the device run must agree within the profile's tolerance. The result
has two parts: ``facts`` (deterministic: runner, CPU, runtime versions,
agreement) for the manifest, and ``measurements`` (wall-clock latency,
instruction counts, estimates) that vary by run or machine, for the report.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import DeviceCheckError
from edgepack.profiles import Profile

# Runner name -> what its wall-clock latency is (runners may say better with a ``latency_label``).
LATENCY_LABELS = {
    "native": "measured natively on this x86_64 host",
    "qemu-user": "EMULATED (QEMU user-mode TCG on an x86_64 host): not a device time",
}


@dataclass(frozen=True)
class CheckResult:
    """Deterministic facts (for the manifest) and volatile measurements (for the report)."""

    facts: dict[str, Any]
    measurements: dict[str, Any] = field(default_factory=dict)
    estimate: Any = None  # edgepack.estimate.Estimate of the device latency, when there is one

    def to_dict(self) -> dict[str, Any]:
        return {**self.facts, "measurements": self.measurements}


def _inputs(manifest: dict[str, Any], samples: Sequence[Sequence[np.ndarray]] | None, seed: int) -> list[np.ndarray]:
    if samples:
        return [np.asarray(a) for a in samples[0]]
    rng = np.random.default_rng(seed)  # float noise; run.py and the host runtime quantize it for int8 inputs
    return [rng.random(s["shape"]).astype(np.float32) for s in manifest["inputs"]]


def manifest_specs(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """The manifest's inputs as TensorSpecs."""
    from edgepack.artifact import TensorSpec

    return tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"])


def host_outputs(bundle: Path, manifest: dict[str, Any], feeds: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the bundle's model in the host runtime (the reference)."""
    from edgepack.artifact import Artifact, ModelFormat, TensorSpec
    from edgepack.runtimes import open_session

    ins = manifest_specs(manifest)
    outs = tuple(TensorSpec(o["name"], tuple(o["shape"]), o["dtype"]) for o in manifest["outputs"])
    files = tuple(bundle / f for f in manifest["model"]["files"])
    fmt = ModelFormat(manifest["model"]["format"])
    artifact = Artifact.from_file(bundle / manifest["model"]["file"], fmt, ins, outs, files=files)
    return open_session(artifact, threads=1, precision="f32").run(feeds)


def summarize_latency(times_ms: Sequence[float], label: str) -> dict[str, Any]:
    """Median and spread of run.py's timed runs, with what they are (``label``) and every sample."""
    from edgepack.estimate import spread

    return {"label": label, **spread(times_ms), "samples_ms": sorted(times_ms)}


def compare(reference: list[np.ndarray], device: dict[str, np.ndarray], names: list[str], profile: Profile) -> dict:
    """Per-output agreement between the host and the device run; collects every mismatch."""
    rows, failures = [], []
    for name, ref in zip(names, reference):
        got = device.get(name)
        if got is None or got.shape != ref.shape:
            failures.append(f"{name}: device output {None if got is None else got.shape} vs host {ref.shape}")
            continue
        err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        rows.append({"output": name, "max_abs_error": err})
        if not err <= profile.accuracy.max_abs_error:
            failures.append(f"{name}: max abs error {err:.3g} > {profile.accuracy.max_abs_error:g}")
    return {"outputs": rows, "agree": not failures, "failures": failures}


def check_bundle(
    bundle: Path,
    profile: Profile,
    *,
    samples: Sequence[Sequence[np.ndarray]] | None = None,
    seed: int = 0,
    runner: str | None = None,
    runner_options: dict[str, Any] | None = None,
    progress: Any = None,
) -> CheckResult:
    """Run the bundle's run.py where ``runner`` (default: the profile's emulation mode) says; compare with the host.

    Raises:
        DeviceCheckError: run.py failed on the device, or its outputs disagree with the host's.
    """
    from edgepack.emulator import get_runner

    if (runner or profile.emulation.mode) == "none":
        return CheckResult({"ran": False, "reason": profile.emulation.reason})
    options = dict(runner_options or {})
    if (runner or profile.emulation.mode) == "qemu-user" and progress is not None:
        options.setdefault("progress", progress)
    backend = get_runner(profile, runner, **options)
    manifest = json.loads((bundle / "manifest.json").read_text())
    feeds = _inputs(manifest, samples, seed)
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as tmp:
        io = Path(tmp)
        np.savez(io / "in.npz", **{i["name"]: a for i, a in zip(manifest["inputs"], feeds)})
        latency = profile.latency
        args = [
            "--input",
            str(io / "in.npz"),
            "--output",
            str(io / "out.npz"),
            "--report",
            str(io / "stats.json"),
            "--runs",
            str(latency.runs),
            "--warmup",
            str(latency.warmup),
            "--threads",
            str(latency.threads),
        ]
        if profile.runtime.value == "openvino":
            args += ["--precision", "f32"]
        result = backend.run(bundle, args, env={})
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeviceCheckError(
                f"{profile.name}: run.py failed on the {backend.name} runner: {tail[0][:300]}",
                hint="Check the bundle's requirements.txt against the device (see `edgepack check --debug`).",
            )
        stats = json.loads((io / "stats.json").read_text())
        with np.load(io / "out.npz", allow_pickle=False) as data:
            device = {k: data[k] for k in data.files}
    agreement = compare(
        host_outputs(bundle, manifest, feeds), device, [o["name"] for o in manifest["outputs"]], profile
    )
    if not agreement["agree"]:
        raise DeviceCheckError(
            f"{profile.name}: run.py on the {backend.name} runner disagrees with the host: "
            + "; ".join(agreement["failures"]),
            hint="The device runtime computes differently; compare runtime versions in the report.",
        )
    return _result(profile, backend, result, stats, agreement, bundle, manifest)


def _result(
    profile: Profile, backend: Any, result: Any, stats: dict, agreement: dict, bundle: Path, manifest: dict
) -> CheckResult:
    emulated = backend.name == "qemu-user"
    facts = {
        "ran": True,
        "runner": backend.name,
        "machine": stats.get("machine"),
        "cpu": profile.emulation.qemu_cpu if emulated else None,
        "proxy": _proxy_note(profile) if emulated else None,
        "runtime": stats.get("runtime"),
        "runtime_version": stats.get("runtime_version"),
        "numpy_version": stats.get("numpy_version"),
        "python": stats.get("python"),
        "precision": "f32" if profile.runtime.value == "openvino" else None,
        "agreement": agreement,
    }
    label = getattr(backend, "latency_label", None) or stats.get("latency_label") or LATENCY_LABELS.get(backend.name)
    measurements: dict[str, Any] = {"latency": summarize_latency(stats["latency_ms"], str(label))}
    measurements["instructions"] = {
        "per_inference": result.instructions,
        "note": result.note or "guest instructions in run.py's timed loop, per inference (stable to ~0.1%)",
        "qemu_cpu": profile.emulation.qemu_cpu if emulated else None,
    }
    estimate = None
    if emulated:
        measurements["figures"], estimate = _figures(profile, bundle, manifest, stats, result)
    return CheckResult(facts, measurements, estimate)


def _figures(profile: Profile, bundle: Path, manifest: dict, stats: dict, result: Any) -> tuple[dict, Any]:
    """Emulated time, instruction count, device estimate and roofline bound (edgepack.estimate)."""
    from edgepack.estimate import latency_figures

    return latency_figures(
        times_ms=stats["latency_ms"],
        instructions=None if profile.delegate == "gpu" else result.instructions,
        cost=_cost(bundle, manifest),
        device=profile.device,
        precision=manifest["model"].get("precision", profile.precision.value),
        threads=profile.latency.threads,
        count_note="the count covers the CPU path, not the GPU delegate" if profile.delegate == "gpu" else result.note,
    )


def _cost(bundle: Path, manifest: dict) -> Any:
    from edgepack.macs import estimate_onnx, estimate_tflite

    model = bundle / manifest["model"]["file"]
    if manifest["model"]["format"] == "tflite":
        return estimate_tflite(model)
    if manifest["model"]["format"] == "onnx":
        import onnx

        return estimate_onnx(onnx.load(str(model)))
    return None


def _proxy_note(profile: Profile) -> str | None:
    if profile.name.startswith("android"):
        return "LiteRT on Linux aarch64 with XNNPACK: a proxy for the phone's CPU path, not the phone"
    return None
