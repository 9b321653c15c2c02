"""Running a bundle's own run.py on the device (native, QEMU, Docker or SSH) and comparing with the host.

The host reference is the same artifact run in the host's runtime on the same
inputs; the device run must agree within the profile's tolerance. The result
has two parts: ``facts`` (deterministic: runner, CPU, runtime versions,
agreement over every sample, what the runtime executed: ``delegation``) for the
manifest, and ``measurements`` (wall-clock latency, instruction counts,
estimates) that vary by run or machine, for the report.

Under emulation one process checks every sample and counts one inference, the first
sample's own when the model is big (:mod:`edgepack.checkplan`); timed repetitions are
left to runners whose wall time means something.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.checkplan import TIMED_RUNNERS, emulated_samples, run_args
from edgepack.errors import DeviceCheckError
from edgepack.profiles import Profile

COUNT_NOTE = (
    "guest instructions of the runtime's invoke call alone, per inference (arm64 LiteRT: identical run to run; "
    "ONNX Runtime within 1e-5, 32-bit ARM within 1e-4)"
)
COLD_NOTE = (
    "cold: the first inference, counted instead of a second one for a model this big; it includes the "
    "runtime's first-run setup (docs/latency.md gives what that adds)"
)
# Runner name -> what its wall-clock latency is (runners may say better with a ``latency_label``).
EMULATED_RUNNERS = ("qemu-user", "docker")  # runners that are not the device itself
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
        """Facts, ``instructions_per_inference`` (None when not counted) and the measurements (``check --json``)."""
        count = self.measurements.get("instructions_per_inference")
        return {**self.facts, "instructions_per_inference": count, "measurements": self.measurements}


def _samples(
    manifest: dict[str, Any], samples: Sequence[Sequence[np.ndarray]] | None, seed: int
) -> list[list[np.ndarray]]:
    """Every validation sample (all are checked in one device process), or one seeded random sample."""
    if samples:
        return [[np.asarray(a) for a in sample] for sample in samples]
    rng = np.random.default_rng(seed)
    io = (manifest.get("quantization") or {}).get("io") or {}
    sample = []
    for spec in manifest["inputs"]:
        quantized = (io.get(spec["name"]) or {}).get("scale") is not None
        if np.dtype(spec["dtype"]).kind in "iub" and not quantized:  # ids, flags, rates: small integers
            sample.append(rng.integers(0, 2, size=spec["shape"]).astype(spec["dtype"]))
        else:  # float noise; run.py and the host runtime quantize it for an int8 input
            sample.append(rng.random(spec["shape"]).astype(np.float32))
    return [sample]


def _cost_or_none(bundle: Path, manifest: dict[str, Any]) -> Any:
    try:
        return _cost(bundle, manifest)
    except Exception:  # noqa: BLE001 - an uncountable model is checked on every sample
        return None


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
        # Rounding differences between two runtimes' float kernels grow with the values: the tolerance is
        # absolute for outputs within [-1, 1] and relative to the output's largest magnitude beyond (a
        # detector's pixel coordinates, logits in the hundreds).
        scale = max(1.0, float(np.max(np.abs(ref.astype(np.float64))))) if ref.size else 1.0
        allowed = profile.accuracy.max_abs_error * scale
        rows.append({"output": name, "max_abs_error": err} | ({"scale": scale} if scale > 1.0 else {}))
        if not err <= allowed:  # NaN fails too
            why = f" ({profile.accuracy.max_abs_error:g} x the output's magnitude {scale:.3g})" if scale > 1 else ""
            failures.append(f"{name}: max abs error {err:.3g} > {allowed:.3g}{why}")
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

    Every sample's outputs are compared, from one device process. Where wall time means something
    (:data:`TIMED_RUNNERS`) run.py then times ``latency.runs`` inferences; elsewhere (emulation) it
    counts one (:func:`edgepack.checkplan.run_args`), and an identical emulated run (same model bytes,
    guest, ``-cpu``, inputs) is done once and shared (:mod:`edgepack.emulator.runcache`).

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
    feeds = _samples(manifest, samples, seed)
    total = len(feeds)
    cost = None  # the bundle's MACs and bytes: read once, for the sample cap and the latency figures
    if (runner or profile.emulation.mode) not in TIMED_RUNNERS:
        cost = _cost_or_none(bundle, manifest)
        feeds = feeds[: emulated_samples(profile, cost, total)]
    names = [i["name"] for i in manifest["inputs"]]
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as tmp:
        io = Path(tmp)
        arrays: dict[str, Any] = {f"{k}:{n}": a for k, sample in enumerate(feeds) for n, a in zip(names, sample)}
        np.savez(io / "in.npz", **arrays)
        args = run_args(profile, backend.name, bundle, cost)
        result, shared = _run(backend, bundle, manifest, io, args)
        if result.returncode != 0:
            crash = crash_signal(result)
            if crash is not None:
                raise _crash_error(profile, backend.name, bundle, io, args, crash)
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeviceCheckError(
                f"{profile.name}: run.py failed on the {backend.name} runner: {tail[0][:300]}",
                hint="Check the bundle's requirements.txt against the device (see `edgepack check --debug`).",
            )
        stats = json.loads((io / "stats.json").read_text())
        with np.load(io / "out.npz", allow_pickle=False) as data:
            device = {k: data[k] for k in data.files}
    agreement = compare_samples(bundle, manifest, feeds, device, profile)
    if len(feeds) < total:  # said where it happened: the other samples were validated on the host only
        agreement["of"] = total
    if not agreement["agree"]:
        raise DeviceCheckError(
            f"{profile.name}: run.py on the {backend.name} runner disagrees with the host: "
            + "; ".join(agreement["failures"][:5]),
            hint="The device runtime computes differently; compare runtime versions in the report.",
        )
    check = _result(profile, backend, result, stats, agreement, bundle, manifest, cost)
    check.measurements["shared_run"] = shared
    require_execution(profile, check.facts.get("delegation"))
    return check


def fallbacks(delegation: dict[str, Any] | None, *, full_delegation: bool, int8: bool) -> list[str]:
    """What ran otherwise than a profile requires: operators left on reference kernels, or no int8 execution.

    Args:
        delegation: run.py's ``delegation`` facts (None: nothing is known, so nothing is reported).
        full_delegation: Every operator must run in the delegate (LiteRT).
        int8: int8 kernels must have run.
    """
    if not delegation or delegation.get("error"):
        return []
    problems = []
    reference = delegation.get("reference_ops") or {}
    if full_delegation and reference:
        ops = ", ".join(f"{n} x{c}" for n, c in reference.items())
        problems.append(f"{sum(reference.values())} operator(s) ran on reference kernels, not the delegate: {ops}")
    if int8 and delegation.get("int8") is False:
        problems.append("no int8 kernel ran (exec precisions: {})".format(
            delegation.get("exec_precisions") or delegation.get("tensor_types") or "float only"))
    return problems


def require_execution(profile: Profile, delegation: dict[str, Any] | None) -> None:
    """Fail when the profile requires full delegation (``device.require_delegation``) or int8 execution
    (``device.require_int8``) and the device did otherwise.

    Raises:
        DelegationError: an operator fell back, or int8 did not run, where the profile requires it (exit 13).
    """
    from edgepack.errors import DelegationError

    problems = fallbacks(
        delegation, full_delegation=profile.device.require_delegation, int8=profile.device.require_int8
    )
    if problems:
        raise DelegationError(
            f"{profile.name}: " + "; ".join(problems),
            hint="See the device check's `delegation` record; change the model's operators or relax the profile.",
        )


SIGNALS = {4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 11: "SIGSEGV"}


def crash_signal(result: Any) -> int | None:
    """The signal that killed run.py (a crash in native code, not a Python error), or None.

    A local process reports it as a negative return code; qemu-user also prints
    ``qemu: uncaught target signal N`` (and a shell in between returns 128 + N).
    """
    import re

    found = re.search(r"uncaught target signal (\d+)", result.stderr or "")
    if found:
        return int(found.group(1))
    if result.returncode < 0:
        return -result.returncode
    return result.returncode - 128 if result.returncode - 128 in SIGNALS else None


def _crash_error(profile: Profile, runner: str, bundle: Path, io: Path, args: list[str], signal: int) -> Exception:
    """Says what crashed and where; reruns run.py on this host to tell an emulator crash from the bundle's own."""
    from edgepack.emulator import LocalRunner

    name = SIGNALS.get(signal, f"signal {signal}")
    em = profile.emulation
    where = f"qemu-{em.qemu_arch} -cpu {em.qemu_cpu}" if runner == "qemu-user" else runner
    files = ["--input", str(io / "in.npz"), "--output", str(io / "host.npz"), "--report", str(io / "host.json")]
    host = LocalRunner().run(bundle, [*files, *args], env={})
    runtime = ", ".join(em.wheels) or profile.runtime.value
    if host.ok and runner in EMULATED_RUNNERS:
        return DeviceCheckError(
            f"{profile.name}: run.py crashed with {name} in native code under the emulator ({where}, {runtime}) "
            "while the same run.py and inputs run on this host: the emulated runtime crashed, not the bundle.",
            hint="Check on the device with `edgepack check --runner ssh://user@host`, or skip with --no-device-check; "
            "`edgepack check --debug` shows the guest's output.",
        )
    if host.ok:
        return DeviceCheckError(
            f"{profile.name}: run.py crashed with {name} in native code on the {runner} runner "
            "while it runs on this host: the device's runtime build crashes on this model.",
            hint="Compare the device's runtime version with the host's (`edgepack check --debug`).",
        )
    return DeviceCheckError(
        f"{profile.name}: run.py crashed with {name} in native code on the {runner} runner and fails on this host "
        f"too (exit {host.returncode}): the runtime crashes on this model.",
        hint="Run `python run.py` in the bundle folder to see the failure.",
    )


def _run(backend: Any, bundle: Path, manifest: dict, io: Path, args: list[str]) -> tuple[Any, bool]:
    """Run run.py (or read back an identical emulated run); returns the result and whether it was shared."""
    files = ["--input", str(io / "in.npz"), "--output", str(io / "out.npz"), "--report", str(io / "stats.json")]
    identity = getattr(backend, "identity", None)
    if identity is None:
        return backend.run(bundle, [*files, *args], env={}), False
    from edgepack.emulator import runcache

    name = runcache.digest(bundle=bundle, manifest=manifest, runner=identity(), inputs=io / "in.npz", args=args)
    with runcache.claim(name):  # an identical run on another worker thread: wait for it, then read it back
        stored = runcache.load(name, io, getattr(backend, "root", None))
        if stored is not None:
            return stored, True
        result = backend.run(bundle, [*files, *args], env={})
        runcache.store(name, io, result, getattr(backend, "root", None))
    return result, False


def compare_samples(
    bundle: Path, manifest: dict, feeds: list[list[np.ndarray]], device: dict[str, np.ndarray], profile: Profile
) -> dict:
    """Agreement of every sample's device outputs (keyed ``"<i>:<output>"``) with the host's, worst error per output."""
    names = [o["name"] for o in manifest["outputs"]]
    worst: dict[str, float] = {}
    failures: list[str] = []
    for k, sample in enumerate(feeds):
        got = {n: device[f"{k}:{n}"] for n in names if f"{k}:{n}" in device}
        if not got and k == 0:
            got = {n: device[n] for n in names if n in device}  # a run.py that predates several samples
        one = compare(host_outputs(bundle, manifest, sample), got, names, profile)
        failures += [f"sample {k}: {f}" for f in one["failures"]]
        for row in one["outputs"]:
            worst[row["output"]] = max(worst.get(row["output"], 0.0), row["max_abs_error"])
    # the source model's name beside the model file's (onnx2tf's Identity_2 is torch.onnx's onnx::Shape_422)
    source = {o["name"]: o["source_name"] for o in manifest["outputs"] if o.get("source_name", o["name"]) != o["name"]}
    rows = [
        {"output": n, "max_abs_error": worst[n]} | ({"source_name": source[n]} if n in source else {})
        for n in names
        if n in worst
    ]
    return {"outputs": rows, "samples": len(feeds), "agree": not failures, "failures": failures}


def _result(
    profile: Profile, backend: Any, result: Any, stats: dict, agreement: dict, bundle: Path, manifest: dict, cost: Any
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
        "delegation": stats.get("delegation"),
    }
    label = getattr(backend, "latency_label", None) or stats.get("latency_label") or LATENCY_LABELS.get(backend.name)
    times = _times(stats)
    cold = bool(stats.get("count_first"))
    if cold:
        label = f"{label} (the first sample's inference, cold)"
    elif stats.get("count_ms") is not None and not stats.get("latency_ms"):
        label = f"{label} (one block of {stats.get('count')} inference(s) after {stats.get('warmup')} warm-up)"
    measurements: dict[str, Any] = {"latency": summarize_latency(times, str(label))}
    measurements["instructions"] = {
        "per_inference": result.instructions,
        "note": (result.note or COUNT_NOTE) + (f"; {COLD_NOTE}" if cold else ""),
        "qemu_cpu": profile.emulation.qemu_cpu if emulated else None,
        "cold": cold,
    }
    measurements["instructions_per_inference"] = result.instructions
    estimate = None
    if emulated:
        measurements["figures"], estimate = _figures(profile, bundle, manifest, stats, result, cost)
    return CheckResult(facts, measurements, estimate)


def _figures(
    profile: Profile, bundle: Path, manifest: dict, stats: dict, result: Any, cost: Any
) -> tuple[dict, Any]:
    """Emulated time, instruction count, device estimate and roofline bound (edgepack.estimate)."""
    from edgepack.estimate import latency_figures

    return latency_figures(
        times_ms=_times(stats),
        instructions=None if profile.delegate == "gpu" else result.instructions,
        cost=cost if cost is not None else _cost(bundle, manifest),  # read once by check_bundle when it could
        device=profile.device,
        precision=manifest["model"].get("precision", profile.precision.value),
        threads=profile.latency.threads,
        count_note="the count covers the CPU path, not the GPU delegate" if profile.delegate == "gpu" else result.note,
    )


def _times(stats: dict) -> list[float]:
    """run.py's per-inference times: its timed runs, else its counted block's time per inference."""
    return list(stats.get("latency_ms") or []) or ([stats["count_ms"]] if stats.get("count_ms") is not None else [])


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
