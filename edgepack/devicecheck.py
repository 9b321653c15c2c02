"""Running a bundle's own run.py on the device (native, emulated or remote) and comparing with the host.

The host reference is the same artifact run in the host's runtime on the same
inputs; the device run must agree within the profile's tolerance.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.errors import DeviceCheckError
from edgepack.profiles import Profile


def _inputs(manifest: dict[str, Any], samples: Sequence[Sequence[np.ndarray]] | None, seed: int) -> list[np.ndarray]:
    if samples:
        return [np.asarray(a) for a in samples[0]]
    rng = np.random.default_rng(seed)
    return [rng.random(s["shape"], dtype=np.float64).astype(s["dtype"]) for s in manifest["inputs"]]


def host_outputs(bundle: Path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the bundle's model in the host runtime (the reference)."""
    import json

    from edgepack.artifact import Artifact, ModelFormat, TensorSpec
    from edgepack.runtimes import open_session

    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"]]
    out = [TensorSpec(o["name"], tuple(o["shape"]), o["dtype"]) for o in manifest["outputs"]]
    fmt = ModelFormat(manifest["model"]["format"])
    artifact = Artifact.from_file(bundle / manifest["model"]["file"], fmt, tuple(spec), tuple(out))
    return open_session(artifact, threads=1, precision="f32").run(feeds)


def summarize_latency(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "stdev_ms": statistics.pstdev(ordered) if len(ordered) > 1 else 0.0,
        "runs": len(ordered),
    }


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
        if err > profile.accuracy.max_abs_error:
            failures.append(f"{name}: max abs error {err:.3g} > {profile.accuracy.max_abs_error:g}")
    return {"outputs": rows, "agree": not failures, "failures": failures}


def run_native(bundle: Path, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(bundle / "run.py"), *args], capture_output=True, text=True, timeout=timeout, cwd=bundle
    )


def check_bundle(
    bundle: Path, profile: Profile, *, samples: Sequence[Sequence[np.ndarray]] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Run the bundle's run.py where the profile says (native, or qemu) and compare with the host.

    Raises:
        DeviceCheckError: run.py failed on the device or its outputs disagree with the host's.
    """
    import json

    mode = profile.emulation.mode
    if mode == "none":
        return {"ran": False, "reason": profile.emulation.reason}
    if mode == "qemu-user":
        from edgepack.emulator.check import check_emulated

        return check_emulated(bundle, profile, samples=samples, seed=seed)
    manifest = json.loads((bundle / "manifest.json").read_text())
    feeds = _inputs(manifest, samples, seed)
    names = [i["name"] for i in manifest["inputs"]]
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as tmp:
        tmpdir = Path(tmp)
        np.savez(tmpdir / "in.npz", **dict(zip(names, feeds)))
        args = [
            "--input",
            str(tmpdir / "in.npz"),
            "--output",
            str(tmpdir / "out.npz"),
            "--report",
            str(tmpdir / "stats.json"),
            "--runs",
            str(profile.latency.runs),
            "--warmup",
            str(profile.latency.warmup),
            "--threads",
            str(profile.latency.threads),
            "--precision",
            "f32",
        ]
        proc = run_native(bundle, args)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeviceCheckError(
                f"{profile.name}: run.py failed natively: {tail[0]}", hint="See the bundle's run.py."
            )
        stats = json.loads((tmpdir / "stats.json").read_text())
        with np.load(tmpdir / "out.npz", allow_pickle=False) as data:
            device = {k: data[k] for k in data.files}
    reference = host_outputs(bundle, feeds)
    agreement = compare(reference, device, [o["name"] for o in manifest["outputs"]], profile)
    if not agreement["agree"]:
        raise DeviceCheckError(f"{profile.name}: run.py disagrees with the host: " + "; ".join(agreement["failures"]))
    return {
        "ran": True,
        "runner": "native",
        "machine": stats["machine"],
        "runtime": stats["runtime"],
        "runtime_version": stats["runtime_version"],
        "precision": "f32" if profile.runtime.value == "openvino" else None,
        "agreement": agreement,
        "latency": {
            "label": "measured on this host (x86_64), not on the target device",
            **summarize_latency(stats["latency_ms"]),
        },
    }
