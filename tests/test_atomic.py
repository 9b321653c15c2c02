"""staged_output / atomic writes: the destination is always absent, the old bundle, or the new one."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgepack import atomic
from edgepack.atomic import (
    Terminated,
    atomic_write_bytes,
    atomic_write_text,
    cleanup_stale,
    staged_output,
)
from edgepack.errors import OutputExistsError

ROOT = Path(__file__).resolve().parent.parent
N_FILES = 30

# Writes version argv[2] of a bundle of argv[3] files, slowly, into argv[1].
WRITER = """
import sys, time
from pathlib import Path
from edgepack.atomic import staged_output
dest, version, n, pause = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with staged_output(dest, force=True) as stage:
    print("entered", flush=True)
    for i in range(n):
        (stage / f"f{i:03d}.txt").write_text(f"{version}\\n" * 50)
        time.sleep(pause)
print("done", flush=True)
"""


def _writer(dest: Path, version: str, *, n: int = N_FILES, pause: float = 0.005) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(dest), version, str(n), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "writer did not start in time"
    return proc.stdout.readline().strip()  # type: ignore[union-attr]


def _version(dest: Path, n: int = N_FILES) -> str | None:
    """The version of the complete bundle at ``dest``, None if absent; fails on a partial or mixed bundle."""
    if not dest.exists():
        return None
    names = sorted(p.name for p in dest.iterdir())
    assert names == [f"f{i:03d}.txt" for i in range(n)], f"incomplete bundle: {len(names)} files"
    versions = {p.read_text() for p in dest.iterdir()}
    assert len(versions) == 1, "bundle mixes versions"
    return versions.pop().splitlines()[0]


def _leftovers(dest: Path) -> list[str]:
    return [p.name for p in dest.parent.iterdir() if ".tmp-" in p.name or ".trash-" in p.name]


def _write(dest: Path, files: dict[str, str], *, force: bool = False) -> None:
    with staged_output(dest, force=force) as stage:
        for name, text in files.items():
            (stage / name).write_text(text)


def test_writes_complete_folder_and_nothing_else(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "bundle"
    _write(dest, {"a.txt": "A", "b.txt": "B"})
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "b.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bundle"]  # the lock lives outside OUT
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)  # umask-based, not mkdtemp's 0o700


def test_refuses_existing_without_force(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    _write(dest, {"a.txt": "old"})
    with pytest.raises(OutputExistsError, match="--force"):
        _write(dest, {"a.txt": "new"})
    assert (dest / "a.txt").read_text() == "old"
    assert _leftovers(dest) == []


def test_force_replaces_and_removes_old(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    _write(dest, {"a.txt": "old", "gone.txt": "x"})
    _write(dest, {"a.txt": "new"}, force=True)
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]
    assert (dest / "a.txt").read_text() == "new"
    assert _leftovers(dest) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), Terminated()])
@pytest.mark.parametrize("existing", [False, True])
def test_exception_leaves_old_dest_and_no_staging(tmp_path: Path, exc: BaseException, existing: bool) -> None:
    dest = tmp_path / "bundle"
    if existing:
        _write(dest, {"a.txt": "old"})
    with pytest.raises(type(exc)), staged_output(dest, force=True) as stage:
        (stage / "a.txt").write_text("new")
        raise exc
    assert _leftovers(dest) == []
    if existing:
        assert (dest / "a.txt").read_text() == "old"
    else:
        assert not dest.exists()


def test_sigterm_inside_raises_terminated_and_restores_handler(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN under a shell's background job
    with pytest.raises(Terminated), staged_output(dest) as stage:
        (stage / "a.txt").write_text("x")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is before_int
    assert not dest.exists() and _leftovers(dest) == []


def test_signal_during_commit_is_deferred_until_the_new_bundle_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "bundle"
    _write(dest, {"a.txt": "old"})
    real_rename = os.rename
    calls: list[str] = []

    def rename_then_signal(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append(Path(dst).name)
        real_rename(src, dst)
        if len(calls) == 1:  # old -> trash done; new not yet in place
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    monkeypatch.setattr(atomic.os, "rename", rename_then_signal)
    with pytest.raises(Terminated), staged_output(dest, force=True) as stage:
        (stage / "a.txt").write_text("new")
    assert calls[1] == "bundle", calls
    assert (dest / "a.txt").read_text() == "new"
    assert _leftovers(dest) == []


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    with staged_output(dest) as stage:
        with pytest.raises(OutputExistsError, match="another edgepack run is writing"), staged_output(dest):
            pass
        (stage / "a.txt").write_text("first")
    assert (dest / "a.txt").read_text() == "first"


def test_lock_held_by_other_process(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    proc = _writer(dest, "v1", n=1, pause=30)
    try:
        assert _wait_line(proc) == "entered"
        with pytest.raises(OutputExistsError, match="another edgepack run"):
            _write(dest, {"a.txt": "x"}, force=True)
        assert cleanup_stale(dest) == []  # a live run's staging folder is not stale
        assert len(_leftovers(dest)) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert not dest.exists() and _leftovers(dest) == []


def test_works_outside_the_main_thread(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _write(dest, {"a.txt": "t"})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(20)
    assert not errors and (dest / "a.txt").read_text() == "t"


def test_cleanup_stale_removes_leftovers_and_restores_orphaned_old_bundle(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    (tmp_path / ".bundle.tmp-dead").mkdir()
    (tmp_path / ".bundle.tmp-dead" / "half.txt").write_text("x")
    trash = tmp_path / ".bundle.trash-dead"  # killed between "old -> trash" and "new -> dest"
    trash.mkdir()
    (trash / "a.txt").write_text("old")
    (tmp_path / ".other.tmp-keep").mkdir()
    removed = cleanup_stale(dest)
    assert [p.name for p in removed] == [".bundle.tmp-dead"]
    assert (dest / "a.txt").read_text() == "old"
    assert _leftovers(dest) == [".other.tmp-keep"]


def test_next_run_cleans_up_after_sigkill(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    proc = _writer(dest, "v1", n=1000, pause=0.01)
    assert _wait_line(proc) == "entered"
    time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=20)
    assert len(_leftovers(dest)) == 1 and not dest.exists()
    _write(dest, {"a.txt": "fresh"})
    assert _leftovers(dest) == [] and (dest / "a.txt").read_text() == "fresh"


def test_signals_at_random_points_leave_old_or_new_bundle(tmp_path: Path) -> None:
    """SIGTERM/SIGINT at 20 seeded random moments: dest is absent, the previous or the new complete version."""
    rng = random.Random(20240611)
    dest = tmp_path / "bundle"
    current: str | None = None
    interrupted = 0
    for i in range(20):
        version = f"v{i}"
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        early = rng.random() < 0.25  # before the writer has even entered staged_output
        delay = rng.uniform(0, 0.05) if early else rng.uniform(0, 0.35)
        proc = _writer(dest, version)
        try:
            if not early:
                assert _wait_line(proc) == "entered"
            time.sleep(delay)
            proc.send_signal(sig)
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        found = _version(dest)
        assert found in (current, version), f"round {i}: found {found}, expected {current} or {version}"
        interrupted += found == current
        current = found
        assert _leftovers(dest) == [], f"round {i} left {_leftovers(dest)}"
    assert interrupted >= 1
    proc = _writer(dest, "final")
    assert proc.wait(timeout=30) == 0 and _version(dest) == "final"


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_held_lock_is_refused_before_any_work(tmp_path: Path) -> None:
    from edgepack.pipeline import preflight
    from edgepack.plans import Options, make_plan
    from edgepack.profiles import load_profile

    plan = make_plan(ROOT / "examples" / "digits_cnn.keras", [load_profile("rpi4-arm64")], tmp_path)
    proc = _writer(tmp_path / "rpi4-arm64", "v1", n=1, pause=30)
    try:
        assert _wait_line(proc) == "entered"
        refused = preflight(plan, Options(force=True))
        assert "another edgepack run is writing" in refused["rpi4-arm64"].message
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert preflight(plan, Options(force=True)) == {}
