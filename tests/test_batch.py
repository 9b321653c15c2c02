"""edgepack batch on the local pool: the matrix, the content cache, resume, --force, failures, the overview.

Cells use tiny seeded ONNX models and ONNX-only targets without the device check, so each costs about a
second once a worker's imports are warm.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack.errors import ModelError, ProfileError, UsageError

pytestmark = [pytest.mark.onnx, pytest.mark.openvino]

TARGETS = ["intel-openvino-cpu", "jetson-orin-trt"]


def _models(folder: Path, count: int) -> list[Path]:
    import onnx

    from tests.conftest import build_tiny_onnx

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"net{seed}.onnx"
        onnx.save(build_tiny_onnx(1, seed=seed), path)
        paths.append(path)
    return paths


def _jobs(folder: Path, models: list[str], *, targets=TARGETS, extra: str = "") -> Path:
    lines = [f"targets = {json.dumps(targets)}", "device_check = false", extra]
    for model in models:
        lines += ["[[models]]", f"path = {json.dumps(model)}"]
    path = folder / "JOBS.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _verify_all(out: Path, result) -> None:
    from edgepack import api

    for cell in result.cells:
        assert cell.ok, cell.error
        api.verify(out / cell.bundle)
        api.verify(out / cell.archive)


def test_local_pool_cache_force_and_overview(tmp_path):
    from edgepack.fleet import batch
    from edgepack.fleet.cache import Cache

    _models(tmp_path / "models", 2)
    jobs = _jobs(tmp_path, ["models/net0.onnx", "models/net1.onnx"])  # relative to the jobs file
    out, cache, lines = tmp_path / "out", tmp_path / "cache", []

    first = batch(jobs, out, cache=cache, workers=2, progress=lines.append)
    assert first.ok and first.workers == 2 and first.cached == 0
    assert [c.id for c in first.cells] == [f"net{m}/{t}" for m in range(2) for t in TARGETS]
    _verify_all(out, first)
    assert (out / "net1" / "jetson-orin-trt" / "manifest.json").is_file()
    assert (out / "net1" / "jetson-orin-trt.tar.gz").is_file()
    assert any("passed" in line for line in lines) and lines[-1].startswith("[4/4] 4 done, 0 running")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["models"] == ["net0", "net1"] and summary["targets"] == TARGETS
    cell = summary["cells"][0]
    assert cell["status"] == "passed" and cell["precision"] == "fp32" and cell["size_bytes"] > 0
    assert cell["top1_agreement"] == 1.0 and cell["report"] == "net0/intel-openvino-cpu/report/report.html"
    assert (out / cell["report"]).is_file()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and {r["target"] for r in rows} == set(TARGETS)
    page = (out / "index.html").read_text()
    assert 'href="net1/jetson-orin-trt/report/report.html"' in page and "estimate" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline

    archives = {c.id: (out / c.archive).read_bytes() for c in first.cells}
    second = batch(jobs, out, cache=cache, workers=2)
    assert second.ok and second.cached == 4 and all(c.cached for c in second.cells)
    assert {c.id: (out / c.archive).read_bytes() for c in second.cells} == archives  # the very same bundles
    _verify_all(out, second)
    assert json.loads((out / "summary.json").read_text())["counts"]["cached"] == 4

    damaged = second.cells[1]  # a cached bundle that no longer verifies is dropped and rebuilt
    (Cache(cache).entry(damaged.key) / damaged.target / "model.onnx").write_bytes(b"tampered")
    third = batch(jobs, out, cache=cache, workers=2)
    assert third.ok and [c.cached for c in third.cells] == [True, False, True, True]
    assert third.cells[1].key == damaged.key
    _verify_all(out, third)

    forced = batch(jobs, out, cache=cache, workers=2, force=True)
    assert forced.ok and forced.cached == 0 and all(c.cpu_seconds > 0 for c in forced.cells)
    _verify_all(out, forced)


def test_cell_key_follows_every_input(tmp_path):
    """The key changes with the model's bytes, the profile, the data, the options; not with the model's name."""
    import dataclasses

    from edgepack.fleet.cache import Digests, cell_key
    from edgepack.fleet.jobs import load_jobs

    _models(tmp_path, 2)
    (tmp_path / "data.npz").write_bytes(b"one")
    jobs = _jobs(tmp_path, ["net0.onnx"], targets=["intel-openvino-cpu"])
    spec = load_jobs(jobs)[0]
    key = cell_key(spec, Digests())
    assert key == cell_key(dataclasses.replace(spec, model="renamed"), Digests())
    variants = [
        dataclasses.replace(spec, model_path=tmp_path / "net1.onnx"),
        dataclasses.replace(spec, profile=spec.profile.model_copy(update={"opset": 13})),
        dataclasses.replace(spec, data=tmp_path / "data.npz"),
        dataclasses.replace(spec, device_check=True),
        dataclasses.replace(spec, input_shapes={"input": [1, 3, 16, 16]}),
    ]
    keys = {cell_key(v, Digests()) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    (tmp_path / "data.npz").write_bytes(b"two")  # the same path, new bytes: a new key
    assert cell_key(variants[2], Digests()) not in keys


def test_one_failing_cell_does_not_stop_the_others(tmp_path):
    from edgepack.cli_batch import batch as cli_batch
    from edgepack.fleet import batch

    _models(tmp_path, 1)
    (tmp_path / "broken.onnx").write_bytes(b"this is not an onnx model")
    jobs = _jobs(tmp_path, ["net0.onnx", "broken.onnx"])
    out = tmp_path / "out"
    result = batch(jobs, out, cache=tmp_path / "cache", workers=2)
    assert not result.ok
    assert [c.status for c in result.cells] == ["passed", "passed", "failed", "failed"]
    failed = result.failures[0]
    assert failed.error.startswith("intel-openvino-cpu:") and "\n" not in failed.error
    assert failed.error_kind == ModelError.kind and failed.exit_code == ModelError.exit_code
    error = result.error()
    assert isinstance(error, ModelError) and error.exit_code == 4 and "2 of 4 cells failed" in str(error)
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and summary["counts"]["failed"] == 2 and len(summary["failures"]) == 2
    assert summary["cells"][3]["error"] == result.cells[3].error
    assert "broken" in (out / "index.html").read_text() and "failed" in (out / "index.html").read_text()
    assert not (out / "broken").exists()
    # the CLI command: the same cells (now cached or failing again), exit by the failure's class
    with pytest.raises(ModelError):
        cli_batch(jobs, out, cache=tmp_path / "cache", workers=1)


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("targets = ['jetson-orin-trt']\n", UsageError, "no [[models]]"),
        ("targets = [\n", UsageError, "not valid TOML"),
        ("target = ['x']\n[[models]]\npath = 'm.onnx'\n", UsageError, "did you mean 'targets'"),
        ("targets = ['jetson-orin-trt']\n[[models]]\npath = 'missing.onnx'\n", UsageError, "does not exist"),
        ("[[models]]\npath = 'm.onnx'\n", UsageError, "no targets"),
        ("targets = ['no-such-board']\n[[models]]\npath = 'm.onnx'\n", ProfileError, "no-such-board"),
        ("targets = ['jetson-orin-trt']\n[[models]]\npath = 'm.onnx'\nprecision = 'int4'\n", UsageError, "int4"),
        ("targets = ['jetson-orin-trt']\n[[models]]\npath = 'm.onnx'\nsize = 3\n", UsageError, "unknown key 'size'"),
        (
            "targets = ['jetson-orin-trt']\n[[models]]\npath = 'm.onnx'\n[[models]]\npath = 'm.onnx'\n",
            UsageError,
            "two models are named 'm'",
        ),
        ("targets = ['jetson-orin-trt']\ndevice_check = 1\n[[models]]\npath = 'm.onnx'\n", UsageError, "true or false"),
    ],
)
def test_bad_jobs_file_is_one_line_with_a_fix(tmp_path, text, error, words):
    from edgepack.fleet import batch

    (tmp_path / "m.onnx").write_bytes(b"x")
    jobs = tmp_path / "JOBS.toml"
    jobs.write_text(text)
    with pytest.raises(error) as caught:
        batch(jobs, tmp_path / "out", cache=tmp_path / "cache")
    line = caught.value.one_line()
    assert words.lower() in line.lower() and caught.value.hint
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_jobs_expansion_model_targets_all_and_profile_files(tmp_path):
    from edgepack.fleet.jobs import load_jobs
    from edgepack.profiles import builtin_names

    (tmp_path / "a.onnx").write_bytes(b"x")
    (tmp_path / "b.onnx").write_bytes(b"x")
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "mine.toml").write_text('extends = "jetson-orin-trt"\nname = "my-jetson"\n')
    (tmp_path / "JOBS.toml").write_text(
        "targets = ['intel-openvino-cpu', 'boards/mine.toml']\n"
        "[[models]]\npath = 'a.onnx'\nprecision = 'int8'\ninput_shapes = {input = [1, 3, 16, 16]}\n"
        "[[models]]\npath = 'b.onnx'\nname = 'bee'\ntargets = ['all']\n"
    )
    cells = load_jobs(tmp_path / "JOBS.toml")
    assert [c.id for c in cells[:2]] == ["a/intel-openvino-cpu", "a/my-jetson"]
    assert all(c.precision == "int8" and c.profile.precision.value == "int8" for c in cells[:2])
    assert cells[0].input_shapes == {"input": [1, 3, 16, 16]} and cells[0].model_path == tmp_path / "a.onnx"
    assert [c.target_name for c in cells[2:]] == builtin_names() and {c.model for c in cells[2:]} == {"bee"}


def test_interrupted_batch_resumes_from_the_cache(tmp_path):
    from edgepack.fleet import batch

    _models(tmp_path, 4)
    jobs = _jobs(tmp_path, [f"net{i}.onnx" for i in range(4)])
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = (  # Ctrl-C's handler even where this test runs with SIGINT ignored (a shell's background job)
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from edgepack.fleet import batch; "
        f"batch({str(jobs)!r}, {str(out)!r}, cache={str(cache)!r}, workers=1)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not list(cache.glob("??/*/cell.json")):  # the first finished cell is committed
            assert run.poll() is None, run.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0 and not (out / "summary.json").exists()  # it stopped mid-run
    finished = len(list(cache.glob("??/*/cell.json")))
    assert 1 <= finished < 8
    resumed = batch(jobs, out, cache=cache, workers=1)
    assert resumed.ok and resumed.cached == finished  # the finished cells were not redone
    _verify_all(out, resumed)
    assert not any((cache / ".staging").iterdir())  # the interrupted cell's leftovers were removed


def test_overview_of_a_plain_package_run(tmp_path, tiny_onnx_path):
    from edgepack import api
    from edgepack.fleet.overview import write_overview

    result = api.package(tiny_onnx_path, targets=TARGETS, out=tmp_path / "out", device_check=False)
    paths = write_overview(tmp_path / "out", result)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["models"] == ["tiny"] and summary["targets"] == TARGETS and summary["ok"]
    assert [c["report"] for c in summary["cells"]] == [f"{t}/report/report.html" for t in TARGETS]
    assert all((tmp_path / "out" / c["bundle"] / "manifest.json").is_file() for c in summary["cells"])
    assert 'href="jetson-orin-trt/report/report.html"' in paths["index.html"].read_text()


def test_a_killed_pool_worker_has_its_cells_retried(tmp_path):
    """SIGKILL a worker in the middle of a cell: the broken pool's cells are rerun on a fresh pool."""
    import threading

    from edgepack.fleet import batch

    _models(tmp_path, 2)
    jobs = _jobs(tmp_path, ["net0.onnx", "net1.onnx"])
    out, cache, killed = tmp_path / "out", tmp_path / "cache", []
    stop = threading.Event()

    def kill_first_running_cell() -> None:
        while not stop.is_set():  # a running cell's staging folder is named <key>-<worker pid>-<random>
            for folder in (cache / ".staging").glob("*-*-*") if (cache / ".staging").is_dir() else ():
                pid = int(folder.name.split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_running_cell, daemon=True)
    killer.start()
    try:
        result = batch(jobs, out, cache=cache, workers=2)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed and killed[0] != os.getpid()
    assert result.ok, [c.error for c in result.failures]
    _verify_all(out, result)


def _local_cells(tmp_path: Path, count: int):
    from edgepack.fleet.cache import Cache, Digests, cell_key
    from edgepack.fleet.jobs import load_jobs

    _models(tmp_path, count)
    specs = load_jobs(_jobs(tmp_path, [f"net{i}.onnx" for i in range(count)], targets=["jetson-orin-trt"]))
    digests = Digests()
    return [(spec, cell_key(spec, digests)) for spec in specs], Cache(tmp_path / "cache")


def test_a_worker_that_dies_mid_cell_has_that_cell_rerun_and_the_others_finish(tmp_path):
    """A worker killed in its cell breaks the whole pool; every cell still finishes, each exactly once."""
    from edgepack.fleet.local import run_local
    from tests.fleet_work import die_once

    todo, cache = _local_cells(tmp_path, 4)
    started, done = [], []
    run_local(todo, cache, workers=2, on_start=lambda s: started.append(s.id), on_done=done.append, work=die_once)
    assert (cache.root / "died-once").exists()  # a worker did die
    assert sorted(r.id for r in done) == sorted(s.id for s, _ in todo)  # one record per cell
    assert all(r.ok for r in done), [r.error for r in done]
    assert len(started) > len(todo)  # the dead worker's cell (and any in flight with it) started again


def test_a_cell_that_kills_every_worker_fails_alone(tmp_path):
    """A cell whose worker dies on every try is that cell's failure; the cells in flight beside it package."""
    from edgepack.fleet.local import run_local
    from tests.fleet_work import net0_always_dies

    todo, cache = _local_cells(tmp_path, 3)
    done = []
    run_local(todo, cache, workers=3, on_start=lambda s: None, on_done=done.append, work=net0_always_dies)
    records = {r.model: r for r in done}
    assert len(done) == 3 and sorted(records) == ["net0", "net1", "net2"]
    assert records["net1"].ok and records["net2"].ok, [r.error for r in done]
    assert not records["net0"].ok and "died twice" in records["net0"].error
    assert records["net0"].error_kind == "internal"
