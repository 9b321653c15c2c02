"""The latency estimator's error out of sample: estimate vs published device measurements (docs/latency.md).

Each case pairs a network that the profiles' ``ipc`` was NOT calibrated on with a published device time
(sources in docs/latency.md, "Out-of-sample error"). For each case the script reads the instruction count of
our bundle from a saved ``edgepack check --json`` (``CHECKS/<network>_<target>.json``), or runs that check
when ``--run`` is given. It then applies :func:`edgepack.estimate.device_estimate` with the threads of the
published run, and prints the estimate, its band, the published figure, their ratio, whether the band holds
it, the ipc the publication implies and the roofline. The in-sample MobileNetV2 rows (counts from
docs/latency.md) are printed with them. ``--propose`` prints, per profile, the ipc and ipc_uncertainty the
cases imply; ``--ipc PROFILE=VALUE`` re-runs the table with another ipc.

Models and bundles (what docs/latency.md used; all random weights, fp32):

* YOLOv8n/s, YOLO11n/s: ``pip download --no-deps ultralytics==8.3.39``, unzip it, and in a separate venv
  with torch (plus opencv-python-headless, pandas, py-cpuinfo for its imports) build
  ``ultralytics.nn.tasks.DetectionModel("yolov8n.yaml", nc=80).eval().fuse()``, set ``export = True`` and
  ``format = "onnx"`` on its ``Detect`` head and ``torch.onnx.export(..., opset_version=17, dynamo=False)``
  at 1x3x640x640.
* MobileNet v1, v3 Large, v3 Small: ``keras.applications.MobileNet / MobileNetV3Large / MobileNetV3Small``
  with ``weights=None``, 224x224x3 (``include_preprocessing=False`` for v3), saved as ``.keras``.
* ``edgepack package MODEL --target rpi5-arm64 --precision fp32 --no-device-check --out BUNDLES/NAME``
  (the Keras ones with ``--target rpi4-arm64``), and ``--target rpi5-arm64-onnxruntime --out
  BUNDLES/NAME_ort`` for the ONNX Runtime bundles. ``--run`` then checks each archive under each case's
  profile, one at a time, with a 3000 s emulator limit (a 640x640 YOLOv8s can overrun the CLI's 600 s on a
  busy host).

    python benchmarks/estimator_error.py --checks CHECKS
    python benchmarks/estimator_error.py --checks CHECKS --bundles BUNDLES --run --propose
    python benchmarks/estimator_error.py --checks CHECKS --ipc rpi5-arm64=1.8 --ipc rpi4-arm64=1.0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgepack.errors import EdgepackError  # noqa: E402
from edgepack.estimate import PARALLEL_FRACTION_RANGE, device_estimate, roofline, speedup  # noqa: E402
from edgepack.profiles import load_profile  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One published device time and the bundle whose instruction count it is compared with.

    Attributes:
        network: Model name; with ``target`` it names the saved check, ``<network>_<target>.json``.
        target: Profile whose device facts make the estimate (and whose ``-cpu`` counted the bundle).
        bundle: The bundle's archive, relative to ``--bundles``.
        threads: Threads of the published run (as stated, or the runtime's default; see the source).
        published_ms: The published time per inference.
        source: Citation key in docs/latency.md.
        count: A fixed count (in-sample rows, from docs/latency.md) instead of a check.
    """

    network: str
    target: str
    bundle: str
    threads: int
    published_ms: float
    source: str
    count: int | None = None

    @property
    def in_sample(self) -> bool:
        """A calibration row (MobileNetV2), shown for comparison."""
        return self.count is not None


_TFL5, _ORT5, _TFL4 = "rpi5-arm64.tar.gz", "rpi5-arm64-onnxruntime.tar.gz", "rpi4-arm64.tar.gz"

CASES: tuple[Case, ...] = (
    # Ultralytics Raspberry Pi guide, YOLOv8 revision [U8]: FP32, 640x640, batch 1; TF Lite = 1 thread, ONNX = 4.
    Case("yolov8n", "rpi5-arm64", f"yolov8n/{_TFL5}", 1, 380.67, "U8"),
    Case("yolov8n", "rpi4-arm64", f"yolov8n/{_TFL5}", 1, 950.29, "U8"),
    Case("yolov8s", "rpi5-arm64", f"yolov8s/{_TFL5}", 1, 1013.27, "U8"),
    Case("yolov8s", "rpi4-arm64", f"yolov8s/{_TFL5}", 1, 2945.03, "U8"),
    Case("yolov8n", "rpi5-arm64-onnxruntime", f"yolov8n_ort/{_ORT5}", 4, 198.69, "U8"),
    Case("yolov8n", "rpi4-arm64-onnxruntime", f"yolov8n_ort/{_ORT5}", 4, 560.04, "U8"),
    Case("yolov8s", "rpi5-arm64-onnxruntime", f"yolov8s_ort/{_ORT5}", 4, 451.37, "U8"),
    Case("yolov8s", "rpi4-arm64-onnxruntime", f"yolov8s_ort/{_ORT5}", 4, 1436.33, "U8"),
    # Ultralytics Raspberry Pi guide, YOLO11 revision benchmarked with ultralytics 8.3.39 [U11]: Pi 5 only.
    Case("yolo11n", "rpi5-arm64", f"yolo11n/{_TFL5}", 1, 317.398, "U11"),
    Case("yolo11s", "rpi5-arm64", f"yolo11s/{_TFL5}", 1, 849.86, "U11"),
    Case("yolo11n", "rpi5-arm64-onnxruntime", f"yolo11n_ort/{_ORT5}", 4, 168.082, "U11"),
    Case("yolo11s", "rpi5-arm64-onnxruntime", f"yolo11s_ort/{_ORT5}", 4, 324.17, "U11"),
    # XNNPACK README, Raspberry Pi table, "RPi 4 (BCM2711, ARM64)", multi-threaded (4) [X1]: the calibration's
    # source, other networks.
    Case("mobilenet_v1", "rpi4-arm64", f"mobilenet_v1/{_TFL4}", 4, 77.0, "X1"),
    Case("mobilenet_v3_large", "rpi4-arm64", f"mobilenet_v3_large/{_TFL4}", 4, 40.0, "X1"),
    Case("mobilenet_v3_small", "rpi4-arm64", f"mobilenet_v3_small/{_TFL4}", 4, 15.0, "X1"),
    # In sample: the calibration's own MobileNetV2 fp32 rows (counts from docs/latency.md).
    Case("mobilenet_v2", "rpi4-arm64", "", 4, 46.0, "X1", count=123_444_385),
    Case("mobilenet_v2", "rpi5-arm64", "", 4, 10.89, "A1", count=120_559_416),
)


def run_check(archive: Path, target: str) -> dict:
    """``edgepack check ARCHIVE --target TARGET --json``, with a 3000 s emulator limit instead of 600 s."""
    from edgepack.archive import safe_extract
    from edgepack.devicecheck import check_bundle
    from edgepack.integrity import archive_root, verify_bundle

    with tempfile.TemporaryDirectory(prefix="estimator-error-") as tmp:
        safe_extract(archive, Path(tmp) / "x")
        folder = archive_root(Path(tmp) / "x")
        verify_bundle(folder)
        return check_bundle(folder, load_profile(target), runner_options={"timeout_s": 3000}).to_dict()


def read_check(case: Case, checks: Path, bundles: Path | None, run: bool) -> dict | None:
    """The case's saved ``edgepack check --json`` (run now with ``run``), or None."""
    saved = checks / f"{case.network}_{case.target}.json"
    if not saved.is_file() and run and bundles is not None and (bundles / case.bundle).is_file():
        try:
            result = run_check(bundles / case.bundle, case.target)
        except EdgepackError as exc:
            print(f"# {saved.stem}: check failed: {exc}", file=sys.stderr)
        else:
            checks.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(result, default=str))
    try:
        data = json.loads(saved.read_text())
    except (OSError, ValueError):  # missing, or a check still writing it
        return None
    data = data[0] if isinstance(data, list) else data
    return data if isinstance(data, dict) and data.get("instructions_per_inference") else None


def bound_ms(check: dict | None, case: Case, device) -> float | None:
    """The roofline lower bound at the published run's threads, from the check's MACs and weight bytes."""
    figures = ((check or {}).get("measurements") or {}).get("figures") or {}
    inputs = (figures.get("roofline") or {}).get("inputs")
    if not inputs:
        return None
    cost = SimpleNamespace(**{k: inputs[k] for k in ("macs", "weight_bytes", "activation_bytes")})
    return roofline(cost, device, precision="fp32", threads=case.threads).bound_ms


def implied_ipc(count: int, case: Case, device, parallel_fraction: float) -> float:
    """The ipc at which the estimate equals the published time: ``N / (t * S(n) * f)``."""
    n = min(case.threads, device.cores)
    s = speedup(n, parallel_fraction) if n > 1 else 1.0
    return count / (case.published_ms * 1e-3 * s * device.clock_ghz * 1e9)


def device_for(target: str, overrides: dict[str, float]):
    """The profile's device, with an ``--ipc`` override for it or for the profile it is named after."""
    device = load_profile(target).device
    key = max((k for k in overrides if target == k or target.startswith(k + "-")), key=len, default=None)
    return device.model_copy(update={"ipc": overrides[key]}) if key else device


def rows(checks: Path, bundles: Path | None, run: bool, overrides: dict[str, float] | None = None) -> list[dict]:
    """One result per case that has a count (``overrides``: profile name -> ipc to try instead)."""
    out = []
    for case in CASES:
        check = None if case.in_sample else read_check(case, checks, bundles, run)
        count = case.count if case.in_sample else (check or {}).get("instructions_per_inference")
        if count is None:
            print(f"# {case.network} on {case.target}: no count (no saved check)", file=sys.stderr)
            continue
        device = device_for(case.target, overrides or {})
        est = device_estimate(count, device, threads=case.threads)
        ipcs = [implied_ipc(count, case, device, p) for p in (0.75, *PARALLEL_FRACTION_RANGE)]
        out.append(
            {
                "case": case,
                "count": count,
                "estimate": est,
                "ratio": est.value_ms / case.published_ms,
                "inside": est.low_ms <= case.published_ms <= est.high_ms,
                "ipc": ipcs[0],
                "ipc_range": (min(ipcs), max(ipcs)) if case.threads > 1 else (ipcs[0], ipcs[0]),
                "bound": bound_ms(check, case, device),
            }
        )
    return out


def print_table(results: list[dict]) -> None:
    """The table of docs/latency.md, "Out-of-sample error"."""
    head = f"{'network':18s} {'set':3s} {'profile':23s} {'thr':>3s} {'instr (M)':>10s} {'estimate [band] ms':>27s} "
    print(head + f"{'published':>10s} {'est/pub':>7s} {'in band':>7s} {'implied ipc':>18s} {'roofline':>8s} src")
    for r in results:
        case, est = r["case"], r["estimate"]
        low, high = r["ipc_range"]
        ipc = f"{r['ipc']:.2f}" + (f" ({low:.2f}-{high:.2f})" if case.threads > 1 else "")
        band = f"{est.value_ms:8.1f} [{est.low_ms:7.1f}-{est.high_ms:7.1f}]"
        bound = "-" if r["bound"] is None else f"{r['bound']:.1f}"
        kind = "in" if case.in_sample else "out"
        print(
            f"{case.network:18s} {kind:3s} {case.target:23s} {case.threads:3d} {r['count'] / 1e6:10.1f} {band:>27s} "
            f"{case.published_ms:10.1f} {r['ratio']:7.2f} {'yes' if r['inside'] else 'NO':>7s} {ipc:>18s} "
            f"{bound:>8s} {case.source}"
        )
    outside = [r for r in results if not r["inside"]]
    ratios = [r["ratio"] for r in results if not r["case"].in_sample]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(
            f"\nout of sample: {len(ratios)} cases, est/pub {min(ratios):.2f}-{max(ratios):.2f}, "
            f"geometric mean {geo:.2f}; outside the band: {len(outside)}"
        )


def print_markdown(results: list[dict]) -> None:
    """The same table as Markdown, for docs/latency.md."""
    print(
        "| network | set | profile (`-cpu`) | threads | instructions / inference | estimate [band] | published "
        "| est / pub | in band | implied ipc | roofline | source |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        case, est = r["case"], r["estimate"]
        low, high = r["ipc_range"]
        ipc = f"{r['ipc']:.2f}" + (f" ({low:.2f}-{high:.2f})" if case.threads > 1 else "")
        bound = "-" if r["bound"] is None else f"{r['bound']:.1f} ms"
        print(
            f"| {case.network} | {'in' if case.in_sample else 'out'} | {case.target} | {case.threads} "
            f"| {r['count']:,} | {est.value_ms:.1f} ms [{est.low_ms:.1f}-{est.high_ms:.1f}] "
            f"| **{case.published_ms:g} ms** | {r['ratio']:.2f} | {'yes' if r['inside'] else '**no**'} | {ipc} "
            f"| {bound} | [{case.source}] |"
        )


def propose(results: list[dict]) -> None:
    """Per profile: the ipc at the geometric centre of the implied ipcs, and the u that holds them.

    The centre comes from the single-thread cases where a profile has any (their implied ipc does not
    depend on the thread scaling), else from the multi-thread cases at the nominal p. The needed ``u``
    makes ``[ipc / u, ipc * u]`` hold those implied ipcs, rounded up to 0.05; the proposed one is never
    below the profile's current ``u`` (a handful of cases does not justify a narrower band). The last
    column counts the cases, of every thread count, whose published time the proposed band holds.
    """
    by_profile: dict[str, list[dict]] = {}
    for r in results:
        by_profile.setdefault(r["case"].target, []).append(r)
    print(
        f"\n{'profile':24s} {'current ipc (u)':16s} {'implied ipcs (1 thread | n threads, nominal p)':48s} "
        f"{'needed u':>8s}  {'proposed ipc (u)':16s} held"
    )
    for target, items in by_profile.items():
        device = load_profile(target).device
        single = sorted(r["ipc"] for r in items if r["case"].threads == 1)
        multi = sorted(r["ipc"] for r in items if r["case"].threads > 1)
        values = single or multi
        centre = round(math.sqrt(values[0] * values[-1]), 2)
        needed = math.ceil(max(1.0, values[-1] / centre, centre / values[0]) * 20) / 20
        u_now = device.ipc_uncertainty or 2.0
        u_new = max(needed, u_now)
        trial = device.model_copy(update={"ipc": centre, "ipc_uncertainty": u_new})
        held = 0
        for r in items:
            est = device_estimate(r["count"], trial, threads=r["case"].threads)
            held += est.low_ms <= r["case"].published_ms <= est.high_ms
        listed = ", ".join(f"{v:.2f}" for v in single) + " | " + ", ".join(f"{v:.2f}" for v in multi)
        print(
            f"{target:24s} {f'{device.ipc:g} ({u_now:g})':16s} {listed:48s} {needed:8.2f}  "
            f"{f'{centre:g} ({u_new:g})':16s} {held}/{len(items)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=Path, required=True, help="folder of saved `edgepack check --json` files")
    parser.add_argument("--bundles", type=Path, help="folder of the bundles (for --run)")
    parser.add_argument("--run", action="store_true", help="run the missing checks (slow: minutes each)")
    parser.add_argument("--propose", action="store_true", help="print the ipc / ipc_uncertainty the cases imply")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--ipc",
        action="append",
        default=[],
        metavar="PROFILE=VALUE",
        help="try another ipc (also for the profiles named PROFILE-..., e.g. -onnxruntime)",
    )
    args = parser.parse_args()
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.ipc)}
    results = rows(args.checks, args.bundles, args.run, overrides)
    print_markdown(results) if args.markdown else print_table(results)
    if args.propose:
        propose(results)


if __name__ == "__main__":
    main()
