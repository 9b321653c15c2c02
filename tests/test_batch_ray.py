"""edgepack batch on a real local Ray instance: a worker killed mid-cell, and the batch still completes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.onnx, pytest.mark.openvino]

TARGETS = ["intel-openvino-cpu", "jetson-orin-trt"]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _kill_first_cell_worker(killed: list[int], stop: threading.Event) -> None:
    """Kill (SIGKILL) the first Ray worker process seen running a cell (Ray titles it ``ray::edgepack_cell``)."""
    import psutil

    while not stop.is_set():
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if cmdline and cmdline[0].startswith("ray::edgepack_cell"):
                os.kill(process.info["pid"], signal.SIGKILL)
                killed.append(process.info["pid"])
                return
        time.sleep(0.02)


def test_ray_batch_completes_after_a_worker_is_killed(tmp_path, local_ray):
    import onnx

    from edgepack import api
    from edgepack.fleet import batch
    from tests.conftest import build_tiny_onnx

    for seed in range(2):
        onnx.save(build_tiny_onnx(1, seed=seed), tmp_path / f"net{seed}.onnx")
    jobs = tmp_path / "JOBS.toml"
    jobs.write_text(
        f"targets = {json.dumps(TARGETS)}\ndevice_check = false\n"
        "[[models]]\npath = 'net0.onnx'\n[[models]]\npath = 'net1.onnx'\n"
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_cell_worker, args=(killed, stop), daemon=True)
    killer.start()
    try:
        result = batch(jobs, out, cache=cache, ray="auto", progress=print)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no Ray worker was seen running a cell"
    assert result.backend == "ray" and result.ok, [c.error for c in result.failures]
    assert len(result.cells) == 4 and result.cached == 0
    for cell in result.cells:
        api.verify(out / cell.bundle)
        api.verify(out / cell.archive)
    assert json.loads((out / "summary.json").read_text())["counts"]["passed"] == 4
    # the cache the Ray run filled is the local pool's too
    again = batch(jobs, tmp_path / "out2", cache=cache, workers=1)
    assert again.ok and again.cached == 4
