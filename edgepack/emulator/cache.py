"""The emulation cache: one folder per built environment, stamped when complete.

Layout under :func:`cache_root`::

    .lock                 held while anything is built (two setups never race)
    apt/<release>-<arch>/ isolated apt state (lists, downloaded .debs), shared by builds
    envs/<name>/          a guest environment (sysroot + wheels); ``env.json`` last
    tools/<name>/         the qemu binaries and the counting plugin; ``env.json`` last

An entry is built in a temporary folder beside its final place and renamed into
place after its ``env.json`` stamp is written, so a folder with a stamp is
always complete and a crash leaves only a temporary folder that the next build
removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgepack.errors import DeviceCheckError

STAMP = "env.json"
KINDS = ("envs", "tools")
_LOCK_TIMEOUT_S = 1800.0


def cache_root() -> Path:
    """``$EDGEPACK_CACHE``, else ``$XDG_CACHE_HOME/edgepack``, else ``~/.cache/edgepack``."""
    if os.environ.get("EDGEPACK_CACHE"):
        return Path(os.environ["EDGEPACK_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgepack"


def entry_name(prefix: str, key: dict[str, Any]) -> str:
    """A readable, stable folder name: ``prefix`` plus a digest of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def env_key(*, debian_arch: str, debian_release: str, python: str, wheels: list[str], debs: list[str]) -> dict:
    """What makes two guest environments the same. The emulated CPU model is not part of it."""
    return {
        "debian_arch": debian_arch,
        "debian_release": debian_release,
        "python": python,
        "wheels": sorted(wheels),
        "debs": sorted(debs),
    }


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp of a complete entry, or None if ``path`` is missing or unfinished."""
    try:
        return json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def lock(root: Path | None = None, *, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cache's build lock (an ``flock`` on ``.lock``), waiting up to 30 minutes."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as fh:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceCheckError(
                        f"another edgepack process has held {root / '.lock'} for 30 minutes.",
                        hint="Stop it, or remove the cache folder if no edgepack is running.",
                    ) from None
                if on_wait and not told:
                    on_wait("waiting for another edgepack process that is building the emulation cache")
                    told = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_entry(
    kind: str,
    name: str,
    builder: Callable[[Path], dict[str, Any]],
    *,
    root: Path | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any], bool]:
    """Return the entry ``kind/name``, building it with ``builder(tmp_dir) -> stamp`` if missing.

    Returns:
        The entry's folder, its stamp and whether it was already there (a cache hit).
    """
    root = root or cache_root()
    final = root / kind / name
    stamp = read_stamp(final)
    if stamp is not None:
        return final, stamp, True
    with lock(root, on_wait=on_wait):
        stamp = read_stamp(final)
        if stamp is not None:
            return final, stamp, True
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(".*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash: we hold the lock
        tmp = final.parent / f".{name}.tmp"
        tmp.mkdir()
        try:
            stamp = builder(tmp)
            stamp = {**stamp, "name": name, "kind": kind, "created": time.time()}
            (tmp / (STAMP + ".part")).write_text(json.dumps(stamp, indent=2, sort_keys=True))
            os.replace(tmp / (STAMP + ".part"), tmp / STAMP)
            if final.exists():
                shutil.rmtree(final)  # an unstamped leftover
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, stamp, False


def list_envs(root: Path | None = None) -> list[dict[str, Any]]:
    """Stamps of every complete entry (guest environments and tools), with ``path`` and ``size_bytes``."""
    root = root or cache_root()
    found = []
    for kind in KINDS:
        base = root / kind
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            stamp = read_stamp(path)
            if stamp is not None:
                found.append({**stamp, "path": str(path), "size_bytes": disk_usage(path)})
    return found


def remove_env(name: str, root: Path | None = None) -> bool:
    """Remove the entry called ``name`` (an env or tools folder name). Returns whether it existed."""
    root = root or cache_root()
    removed = False
    with lock(root):
        for kind in KINDS:
            path = root / kind / name
            if path.is_dir() and path.parent == root / kind:
                shutil.rmtree(path)
                removed = True
    return removed


def disk_usage(path: Path) -> int:
    """Bytes used by the files under ``path`` (symlinks not followed, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
