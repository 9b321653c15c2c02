"""Atomic outputs: a bundle is either fully at its destination or not there at all.

:func:`staged_output` builds a folder in a staging directory beside the
destination (same filesystem, so the final rename is atomic), holds an
exclusive lock on the destination's lock file (in the machine's temporary folder, keyed by the
destination's absolute path, so OUT never holds one) while doing so, and on success
renames the staging folder into place. When ``force`` replaces an existing
destination, the old one is first renamed to ``.{name}.trash-XXXX``, the new
one renamed in, then the old one deleted, so at every instant the destination
is either the old or the new complete bundle.

SIGTERM (and SIGINT, when Python's default handler is installed) raise
:class:`Terminated` / :class:`KeyboardInterrupt` inside the context, so the
staging folder is removed; during the final renames and the clean-up the
signal is held back and raised just after. A run killed with SIGKILL leaves
``.{name}.tmp-XXXX`` (and possibly ``.{name}.trash-XXXX``) behind; the next run
on the same destination, or :func:`cleanup_stale`, removes them (and puts an
orphaned old bundle back if the kill fell between the two renames).

The lock file is left in place on purpose: deleting a lock
file that another process may have just opened would let two runs in at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from edgepack.errors import OutputExistsError

_TMP = ".tmp-"
_TRASH = ".trash-"


class Terminated(KeyboardInterrupt):
    """Raised inside :func:`staged_output` when the process receives SIGTERM.

    A ``KeyboardInterrupt`` subclass, so ``except Exception`` blocks do not
    swallow it and the run unwinds (removing its staging folder) like Ctrl-C.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


class _SignalGuard:
    """Turns SIGTERM/SIGINT into exceptions while ``in_body``; otherwise holds them back.

    Outside the user's block (setup, commit, clean-up) a signal is only
    recorded and raised by :meth:`raise_pending` once the work is done, so a
    signal can never cut a rename pair or a clean-up in half. The handler
    raises at most once: it clears ``in_body`` before raising, so a second
    signal during the unwinding is deferred too.
    """

    def __init__(self) -> None:
        self.in_body = False
        self.pending: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        term = signal.getsignal(signal.SIGTERM)
        if term is not signal.SIG_IGN:
            self._previous[signal.SIGTERM] = term
        interrupt = signal.getsignal(signal.SIGINT)
        if callable(interrupt):  # Python's default handler, or the CLI's (which records the signal)
            self._previous[signal.SIGINT] = interrupt
        for signum in self._previous:
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.in_body:
            self.in_body = False
            self._raise(signum)
        self.pending = self.pending or signum

    def _raise(self, signum: int) -> None:
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)  # a handler of the caller's (the CLI records the signal, then raises)
        raise _interruption(signum)

    def raise_pending(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._raise(signum)


def _interruption(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _lock_path(dest: Path) -> Path:
    """The lock file of ``dest``: outside the output folder (which then holds nothing but bundles), one per
    destination path and user, in the machine's temporary folder that every run on this machine shares."""
    import hashlib
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"edgepack-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256(str(dest.resolve()).encode()).hexdigest()[:32]
    return folder / f"{digest}.lock"


def _try_lock(dest: Path) -> IO[bytes] | None:
    """Open and exclusively lock ``.{name}.lock``; None if another process holds it."""
    import fcntl

    handle = open(_lock_path(dest), "a+b")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return handle


def is_locked(dest: Path) -> bool:
    """Whether another process is writing ``dest`` now (a check before any work; the lock is taken later)."""
    handle = _try_lock(dest)
    if handle is None:
        return True
    _unlock(handle)
    return False


def _unlock(handle: IO[bytes]) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _leftovers(dest: Path, marker: str) -> list[Path]:
    prefix = f".{dest.name}{marker}"
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir() if p.name.startswith(prefix))


def _recover(dest: Path) -> list[Path]:
    """Remove leftovers of killed runs; caller holds the lock. Returns what was removed."""
    trash = _leftovers(dest, _TRASH)
    if trash and not os.path.lexists(dest):
        # Killed between "old -> trash" and "new -> dest": the newest trash is the complete old bundle.
        newest = max(trash, key=lambda p: p.stat().st_mtime)
        os.rename(newest, dest)
        trash.remove(newest)
    removed = _leftovers(dest, _TMP) + trash
    for path in removed:
        _remove(path)
    return removed


def cleanup_stale(dest: Path) -> list[Path]:
    """Remove staging and trash leftovers of runs on ``dest`` that were killed (SIGKILL, power loss).

    Leftovers are stale exactly when no live run holds the destination's
    lock, so this takes the lock first and does nothing if it is busy. If a
    run died between moving the old bundle aside and moving the new one in,
    the old bundle is put back at ``dest``.

    Args:
        dest: The destination a bundle is (or was being) written to.

    Returns:
        The leftover paths that were removed (empty if the lock is busy).
    """
    dest = Path(dest).absolute()
    if not dest.parent.is_dir():
        return []
    handle = _try_lock(dest)
    if handle is None:
        return []
    try:
        return _recover(dest)
    finally:
        _unlock(handle)


def _refuse_existing(dest: Path) -> None:
    raise OutputExistsError(
        f"{dest} already exists.",
        hint="Use --force to replace it, or choose another output path.",
    )


def _make_staging(dest: Path) -> Path:
    """A fresh folder beside ``dest``, with the default permissions (umask applies)."""
    while True:
        staging = dest.parent / f".{dest.name}{_TMP}{secrets.token_hex(4)}"
        try:
            os.mkdir(staging, 0o777)
        except FileExistsError:
            continue
        return staging


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` so the rename never exposes empty files after a crash."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (no-op where the filesystem refuses)."""
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(staging: Path, dest: Path) -> None:
    """Move ``staging`` to ``dest``; an existing ``dest`` goes to trash first and is deleted last."""
    _fsync_tree(staging)
    if not os.path.lexists(dest):
        os.rename(staging, dest)
    else:
        trash = dest.parent / f".{dest.name}{_TRASH}{secrets.token_hex(4)}"
        os.rename(dest, trash)
        try:
            os.rename(staging, dest)
        except BaseException:
            os.rename(trash, dest)
            raise
        fsync_dir(dest.parent)
        _remove(trash)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def staged_output(dest: Path, *, force: bool = False) -> Iterator[Path]:
    """Build a folder that appears at ``dest`` only when complete.

    Example::

        with staged_output(out, force=force) as stage:
            (stage / "model.tflite").write_bytes(data)
        # out/ now holds the complete bundle; on any error it is untouched.

    Args:
        dest: Where the finished folder goes. Its parent is created if missing.
        force: Replace an existing ``dest`` (atomically, see the module docstring).

    Yields:
        The staging folder to write into (beside ``dest``, same filesystem).

    Raises:
        OutputExistsError: ``dest`` exists and ``force`` is false, or another
            edgepack run is writing ``dest`` right now.
        Terminated: The process received SIGTERM inside the block (after clean-up).
    """
    dest = Path(dest).absolute()
    if os.path.lexists(dest) and not force:
        _refuse_existing(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    guard = _SignalGuard()
    guard.install()
    lock: IO[bytes] | None = None
    staging: Path | None = None
    try:
        lock = _try_lock(dest)
        if lock is None:
            raise OutputExistsError(
                f"another edgepack run is writing {dest}.",
                hint="Wait for it to finish, or choose another output path.",
            )
        _recover(dest)
        if os.path.lexists(dest) and not force:
            _refuse_existing(dest)
        staging = _make_staging(dest)
        guard.in_body = True
        guard.raise_pending()
        yield staging
        guard.in_body = False
        _commit(staging, dest)
        staging = None
    finally:
        guard.in_body = False
        if staging is not None:
            _remove(staging)
        if lock is not None:
            _unlock(lock)
        guard.restore()
    guard.raise_pending()


@contextlib.contextmanager
def atomic_open(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a binary file for writing that replaces ``path`` only when the block succeeds.

    Writes go to ``.{name}.tmp-XXXX`` beside ``path``; on success it is
    fsynced and ``os.replace``-d over ``path``; on any exception it is removed
    and ``path`` is untouched.

    Args:
        path: The file to (over)write. Its parent must exist.
        mode: Permission bits of the new file.

    Yields:
        The open temporary file.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}{_TMP}{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically: temp file beside it, fsync, ``os.replace``.

    Readers see either the old file or the complete new one, never a partial write.

    Args:
        path: The file to (over)write. Its parent must exist.
        data: The full new contents.
        mode: Permission bits of the new file.

    Returns:
        ``path``.
    """
    with atomic_open(path, mode=mode) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: Path, text: str, *, encoding: str = "utf-8", mode: int = 0o644) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: The file to (over)write.
        text: The full new contents.
        encoding: Text encoding.
        mode: Permission bits of the new file.

    Returns:
        ``path``.
    """
    return atomic_write_bytes(path, text.encode(encoding), mode=mode)
