"""Goals of ``edgepack batch`` (issue 13), measured in one run and printed as ratios.

* ``sequential``: the cells one after another (one worker process, a fresh cache);
* ``pool``: the same cells on the local pool (one worker per core, a fresh cache);
* ``second``: the pool run again, unchanged (every cell from the cache, verified);
* ``ray``: the same cells as Ray tasks on a local instance (``ray.init(num_cpus=cores)``, started
  before the clock, as an existing cluster would be; a fresh cache).

Goals: second <= 0.05 x pool; pool <= 0.6 x sequential (>= 4 models x 4 targets on 2 cores); ray <= 1.2 x pool.

    python benchmarks/batch.py                       # 4 tiny ONNX models x 4 ONNX targets, device checks on
    python benchmarks/batch.py --models 6 --no-ray --json figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ["rpi4-arm64-onnxruntime", "rpi5-arm64-onnxruntime", "intel-openvino-cpu", "jetson-orin-trt"]


def _jobs(folder: Path, models: int, targets: list[str], device_check: bool, seed: int) -> Path:
    """The jobs file of one variant: models of the same shape, with weights of its own.

    Each variant gets new weights so that no variant reads another's stored emulated runs
    (``<cache>/runs``, shared by identical device checks) and the three start equal.
    """
    import onnx

    from tests.conftest import build_tiny_onnx

    folder.mkdir(parents=True)
    lines = [f"targets = {json.dumps(targets)}", f"device_check = {str(device_check).lower()}"]
    for index in range(models):
        onnx.save(build_tiny_onnx(1, seed=seed + index), folder / f"net{index}.onnx")
        lines += ["[[models]]", f'path = "net{index}.onnx"']
    jobs = folder / "JOBS.toml"
    jobs.write_text("\n".join(lines) + "\n")
    return jobs


def _run(name: str, jobs: Path, root: Path, cache: str, **options) -> dict:
    from edgepack.fleet import batch

    started = time.monotonic()
    result = batch(jobs, root / f"out-{name}", cache=root / cache, **options)
    seconds = time.monotonic() - started
    failures = [c.error for c in result.failures]
    print(
        f"{name:>10}: {seconds:7.1f} s  {len(result.cells)} cells, {result.cached} cached, "
        f"{len(failures)} failed, workers {result.workers}",
        flush=True,
    )
    for line in failures:
        print(f"            failed: {line}")
    return {
        "seconds": seconds,
        "cells": len(result.cells),
        "cached": result.cached,
        "failed": len(failures),
        "cpu_seconds": sum(c.cpu_seconds for c in result.cells),
        "cell_cpu_seconds": {c.id: c.cpu_seconds for c in result.cells},
    }


_SPIN = "import time\nt = time.time()\nn = 0\nwhile time.time() - t < 3:\n    n += 1\nprint(n)"


def free_cores(count: int) -> float:
    """How many cores this run really gets: the throughput of ``count`` busy processes over one's.

    On an idle 2-core machine this is about 2; when other jobs hold the cores it drops towards 1, and
    no pool can then beat running the cells one after another.
    """
    import subprocess

    def spin(n: int) -> int:
        procs = [  # each in its own session, like the pool's workers (the kernel may share CPU per session)
            subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True, start_new_session=True)
            for _ in range(n)
        ]
        return sum(int(p.communicate()[0]) for p in procs)

    return spin(count) / spin(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--no-device-check", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()
    from edgepack.memory import usable_cores as cores

    figures: dict = {"cores": cores(), "models": args.models, "targets": args.targets.split(",")}
    figures["load_average_before"] = os.getloadavg()  # other work on the machine skews every ratio
    figures["free_cores_before"] = free_cores(cores())
    print(
        f"cores {cores()}, load average {figures['load_average_before'][0]:.1f} (1 min), "
        f"{figures['free_cores_before']:.2f} cores' worth of throughput free before the run"
    )
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-batch-") as tmp:
        root = Path(tmp)
        seed = time.time_ns() % 1_000_000_007  # new weights on every invocation, too
        check = not args.no_device_check

        def jobs(name: str, offset: int) -> Path:
            return _jobs(root / name, args.models, figures["targets"], check, seed + 1000 * offset)

        figures["sequential"] = _run("sequential", jobs("seq", 0), root, "cache-seq", workers=1)
        pool_jobs = jobs("pool", 1)
        figures["pool"] = _run("pool", pool_jobs, root, "cache-pool")
        figures["second"] = _run("second", pool_jobs, root, "cache-pool")
        if not args.no_ray:
            import ray

            started = time.monotonic()
            ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
            figures["ray_init_seconds"] = time.monotonic() - started
            print(f"{'ray.init':>10}: {figures['ray_init_seconds']:7.1f} s (not counted)")
            try:
                figures["ray"] = _run("ray", jobs("ray", 2), root, "cache-ray", ray="auto")
            finally:
                ray.shutdown()
    figures["load_average_after"] = os.getloadavg()
    figures["free_cores_after"] = free_cores(cores())
    print(
        f"load average {figures['load_average_after'][0]:.1f} (1 min), "
        f"{figures['free_cores_after']:.2f} cores free after the run"
    )
    pool, seq = figures["pool"]["seconds"], figures["sequential"]["seconds"]
    ratios = {
        "second / first (goal <= 0.05)": figures["second"]["seconds"] / pool,
        "pool / sequential (goal <= 0.6)": pool / seq,
    }
    if "ray" in figures:
        ratios["ray / pool (goal <= 1.2)"] = figures["ray"]["seconds"] / pool
    figures["ratios"] = ratios
    cells = figures["sequential"]["cells"]
    figures["cpu_seconds_per_cell"] = figures["sequential"]["cpu_seconds"] / cells
    print(f"per-cell CPU time (sequential run): {figures['cpu_seconds_per_cell']:.2f} s")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
