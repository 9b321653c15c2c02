"""What run.py's verification before loading costs on the emulated Raspberry Pi 4 (issue 14), in one run.

The shipped example (``examples/digits_cnn.keras``) is packaged for rpi4-arm64 and signed; its run.py then
runs under QEMU (``-cpu cortex-a72``), interleaved, ``--repeat`` times each:

* ``plain``: ``--skip-verify`` (nothing checked: the run as it was before verification);
* ``sealed``: the default: every file's sha256 and the manifest's seal;
* ``signed``: also the Ed25519 signature with ``--pubkey`` (imports ``cryptography``: PyPI's aarch64 wheel).

Printed: median process wall time of each (start-up, imports, one inference), the overhead of the checks
over ``plain`` (absolute and as a ratio), and the time run.py itself reports for ``verify_bundle``.
Goal: the overhead under 1 s.

    python benchmarks/verify_overhead.py [--repeat 5] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

VARIANTS = ("plain", "sealed", "signed")


def _package(folder: Path) -> tuple[Path, Path]:
    from edgepack import api
    from edgepack.signing import keygen

    keygen(folder / "k.pem", folder / "k.pub")
    out = folder / "out"
    api.package(ROOT / "examples" / "digits_cnn.keras", targets=["rpi4-arm64"], out=out, sign_key=folder / "k.pem")
    return out / "rpi4-arm64", folder / "k.pub"


def measure(repeat: int) -> dict:
    """Wall times (s) of each variant and run.py's own verification times, from one packaging."""
    from test_device_trust import Device

    from edgepack.emulator import cache

    device = Device("arm64", cache.cache_root())
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    inside: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-bench-") as tmp:
        bundle, pub = _package(Path(tmp))
        flags = {"plain": ["--skip-verify"], "sealed": [], "signed": ["--pubkey", str(pub)]}
        report = Path(tmp) / "stats.json"
        for _ in range(repeat + 1):  # the first round warms the page cache and is dropped
            for variant in VARIANTS:
                result = device.run(bundle / "run.py", ["--report", str(report), *flags[variant]])
                if result.returncode != 0:
                    raise SystemExit(f"{variant}: run.py failed: {result.stderr.strip()[-500:]}")
                walls[variant].append(result.wall_s)
                inside[variant].append(json.loads(report.read_text())["verification"].get("seconds", 0.0))
    walls = {v: w[1:] for v, w in walls.items()}
    inside = {v: w[1:] for v, w in inside.items()}
    median = {v: statistics.median(w) for v, w in walls.items()}
    return {
        "target": "rpi4-arm64 (qemu-user -cpu cortex-a72)",
        "model": "examples/digits_cnn.keras",
        "repeat": repeat,
        "median_wall_s": median,
        "overhead_s": {v: median[v] - median["plain"] for v in VARIANTS[1:]},
        "ratio": {v: median[v] / median["plain"] for v in VARIANTS[1:]},
        "verify_bundle_s": {v: statistics.median(inside[v]) for v in VARIANTS[1:]},
        "walls_s": walls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = measure(args.repeat)
    print(f"{figures['target']}, {figures['model']}, median of {args.repeat} runs each (one inference per run):")
    print(f"  plain run (--skip-verify): {figures['median_wall_s']['plain']:.2f} s")
    for variant in VARIANTS[1:]:
        print(
            f"  {variant:>6}: {figures['median_wall_s'][variant]:.2f} s, overhead "
            f"{figures['overhead_s'][variant]:+.3f} s (x{figures['ratio'][variant]:.3f}); "
            f"run.py's verify_bundle: {figures['verify_bundle_s'][variant]:.3f} s"
        )
    worst = max(figures["overhead_s"].values())
    print(f"goal: overhead < 1 s: {'met' if worst < 1.0 else 'MISSED'} (worst {worst:.3f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
