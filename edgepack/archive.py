"""Deterministic bundle archives, and extraction that refuses hostile archives.

:func:`write_deterministic_tar` writes a ``.tar.gz`` whose bytes depend only on
the files' relative paths, contents and executable bit (for a given zlib), so
two builds of the same bundle hash the same.

:func:`safe_extract` unpacks ``.tar``/``.tar.gz``/``.tgz`` (any compression
:mod:`tarfile` reads) and ``.zip`` archives, refusing every member that is not
a plain file or folder under the destination: absolute paths, ``..``
components, symlinks, hard links, devices, FIFOs, duplicates, and archives
that unpack to more than a size limit. Every refusal is a
:class:`~edgepack.errors.VerificationError` naming the members.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import tarfile
    import zipfile

from edgepack.errors import UsageError, VerificationError

COMPRESSLEVEL = 9
"""gzip level of bundle archives; fixed, since the output bytes depend on it."""

MAX_EXTRACT_BYTES = 8 << 30
"""Default limit on the total unpacked size of an archive (8 GiB)."""

MAX_MEMBERS = 100_000
"""Default limit on the number of members in an archive."""

_CHUNK = 1 << 20
_SHOWN = 5


@dataclass(frozen=True)
class _Entry:
    """One archive entry to write: its relative path and what it is."""

    rel: PurePosixPath
    path: Path
    is_dir: bool
    executable: bool


def _walk(src_dir: Path, exclude: frozenset[str]) -> list[_Entry]:
    """Every folder and file under ``src_dir`` but ``exclude``, sorted by path components; refuses symlinks."""
    entries: list[_Entry] = []
    bad: list[str] = []
    for folder, dirs, files in os.walk(src_dir):
        dirs[:] = [d for d in dirs if Path(folder, d).relative_to(src_dir).as_posix() not in exclude]
        for name in dirs + files:
            path = Path(folder, name)
            rel = PurePosixPath(path.relative_to(src_dir).as_posix())
            if str(rel) in exclude:
                continue
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                entries.append(_Entry(rel, path, True, False))
            elif stat.S_ISREG(st.st_mode):
                entries.append(_Entry(rel, path, False, bool(st.st_mode & 0o111)))
            else:
                bad.append(str(rel))
    if bad:
        raise UsageError(
            f"{src_dir} holds {len(bad)} symlink(s) or special file(s), which bundles cannot contain: {_listing(bad)}.",
            hint="Copy the real files into the bundle folder instead of linking them.",
        )
    entries.sort(key=lambda e: e.rel.parts)
    return entries


def _tarinfo(name: str, *, is_dir: bool, executable: bool, size: int = 0) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if (is_dir or executable) else 0o644
    info.size = 0 if is_dir else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_deterministic_tar(src_dir: Path, dest: Path, *, arcname_root: str, exclude: Iterable[str] = ()) -> Path:
    """Archive ``src_dir`` as a reproducible ``.tar.gz`` at ``dest`` (written atomically).

    Entries are sorted, every time is 0, owners are 0 with empty names, modes
    are 0o644 for files and 0o755 for folders and executables, the gzip header
    has mtime 0 and no file name, and the compression level is fixed. PAX
    headers appear only for names that do not fit the ustar fields, and never
    carry times. ``dest`` is replaced if it exists; the caller decides about
    ``--force``.

    Args:
        src_dir: The folder to archive.
        dest: The ``.tar.gz`` to write.
        arcname_root: Name of the single top-level folder inside the archive.
        exclude: Relative POSIX paths (files or whole folders) under ``src_dir`` to leave out.

    Returns:
        ``dest``.

    Raises:
        UsageError: ``src_dir`` is not a folder, holds symlinks or special
            files, ``dest`` lies inside it, or ``arcname_root`` is not one plain name.
    """
    import gzip
    import tarfile

    from edgepack.atomic import atomic_open

    src_dir, dest = Path(src_dir), Path(dest)
    if not src_dir.is_dir():
        raise UsageError(f"{src_dir} is not a folder.", hint="Pass the bundle folder to archive.")
    if dest.absolute().is_relative_to(src_dir.absolute()):
        raise UsageError(f"{dest} lies inside {src_dir}.", hint="Write the archive outside the folder it archives.")
    root = PurePosixPath(arcname_root)
    if len(root.parts) != 1 or arcname_root in (".", "..") or "\\" in arcname_root:
        raise UsageError(f"arcname_root {arcname_root!r} is not a plain folder name.", hint="Use e.g. 'bundle'.")
    entries = _walk(src_dir, frozenset(PurePosixPath(e).as_posix() for e in exclude))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_open(dest, mode=0o644) as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=COMPRESSLEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
    ):
        tar.addfile(_tarinfo(arcname_root, is_dir=True, executable=False))
        for entry in entries:
            name = f"{arcname_root}/{entry.rel}"
            if entry.is_dir:
                tar.addfile(_tarinfo(name, is_dir=True, executable=False))
                continue
            with entry.path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                tar.addfile(_tarinfo(name, is_dir=False, executable=entry.executable, size=size), fh)
    return dest


# --------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class _Member:
    """An archive member reduced to what extraction needs."""

    name: str
    kind: str  # "file", "dir" or a description of why it is refused
    size: int
    executable: bool


def _listing(names: list[str]) -> str:
    shown = ", ".join(ascii(n)[1:-1] if not n.isprintable() else n for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _check_name(name: str) -> str | None:
    """Why ``name`` is not a safe relative path, or None."""
    if not name or "\0" in name:
        return "empty name or NUL byte"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' component"
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in PurePosixPath(name).parts):
        return "name component too long"
    return None


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[_Member, tarfile.TarInfo]]:
    for info in tar:
        if info.issym() or info.islnk():
            kind = f"link to {info.linkname!r}"
        elif info.isdir():
            kind = "dir"
        elif info.isreg() and not info.issparse():
            kind = "file"
        elif info.ischr() or info.isblk():
            kind = "device file"
        elif info.isfifo():
            kind = "FIFO"
        else:
            kind = f"unsupported member type {info.type!r}"
        yield _Member(info.name, kind, info.size if kind == "file" else 0, bool(info.mode & 0o111)), info


def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[_Member, zipfile.ZipInfo]]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        fmt = stat.S_IFMT(mode)
        if info.flag_bits & 0x1:
            kind = "encrypted member"
        elif fmt == stat.S_IFLNK:
            kind = "symlink"
        elif info.is_dir() or fmt == stat.S_IFDIR:
            kind = "dir"
        elif fmt in (0, stat.S_IFREG):
            kind = "file"
        else:
            kind = "device file or special member"
        name = info.filename.rstrip("/") if kind == "dir" else info.filename
        yield _Member(name, kind, info.file_size if kind == "file" else 0, bool(mode & 0o111)), info


class _Extractor:
    """Validates members one by one and writes the good ones under ``root``; collects every refusal."""

    def __init__(self, archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
        self.archive, self.root = archive, root
        self.max_bytes, self.max_members = max_bytes, max_members
        self.problems: list[str] = []
        self.seen: dict[str, str] = {}
        self.total = 0
        self.count = 0
        self.files: list[str] = []

    def admit(self, member: _Member) -> PurePosixPath | None:
        """The member's normalised relative path if it may be written, else None (and a problem noted)."""
        self.count += 1
        self.total += member.size
        if self.count > self.max_members or self.total > self.max_bytes:
            what = f"{self.max_members} members" if self.count > self.max_members else f"{self.max_bytes} bytes"
            raise VerificationError(
                f"{self.archive} unpacks to more than {what} (a decompression bomb, or not a bundle).",
                hint="Check where the archive came from; raise the limit only for a trusted archive.",
            )
        why = _check_name(member.name)
        if why is None and member.kind not in ("file", "dir"):
            why = member.kind
        rel = PurePosixPath(member.name)
        if why is None and not rel.parts:
            if member.kind == "dir":
                return None  # "./" - the destination itself
            why = "empty name"
        key = rel.as_posix().casefold()  # case-only clashes overwrite each other on macOS/Windows
        if why is None and key in self.seen and "file" in (member.kind, self.seen[key]):
            why = "duplicate member"
        if why is not None:
            self.problems.append(f"{member.name} ({why})")
            return None
        self.seen[key] = member.kind
        target = Path(os.path.normpath(self.root / rel))
        if target != self.root and not target.is_relative_to(self.root):
            self.problems.append(f"{member.name} (escapes the destination)")
            return None
        return rel

    def write(self, rel: PurePosixPath, member: _Member, stream: IO[bytes]) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o755 if member.executable else 0o644)
        written = 0
        with os.fdopen(fd, "wb") as out:
            while block := stream.read(_CHUNK):
                written += len(block)
                if self.total - member.size + written > self.max_bytes:
                    raise VerificationError(
                        f"{self.archive} unpacks to more than {self.max_bytes} bytes (a decompression bomb).",
                        hint="Check where the archive came from; raise the limit only for a trusted archive.",
                    )
                out.write(block)
        self.files.append(rel.as_posix())


def _is_zip(archive: Path) -> bool:
    with archive.open("rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _extract_all(archive: Path, ex: _Extractor) -> None:
    import tarfile
    import zipfile

    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            for member, info in _zip_members(zf):
                rel = ex.admit(member)
                if rel is not None and not ex.problems:
                    if member.kind == "dir":
                        (ex.root / rel).mkdir(parents=True, exist_ok=True)
                    else:
                        with zf.open(info) as stream:
                            ex.write(rel, member, stream)
        return
    with tarfile.open(archive, "r:*") as tar:
        for member, tar_info in _tar_members(tar):
            rel = ex.admit(member)
            if rel is not None and not ex.problems:
                if member.kind == "dir":
                    (ex.root / rel).mkdir(parents=True, exist_ok=True)
                else:
                    data = tar.extractfile(tar_info)
                    if data is None:
                        raise VerificationError(f"{archive}: member {member.name} has no data.")
                    with data:
                        ex.write(rel, member, data)


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_members: int = MAX_MEMBERS,
) -> list[str]:
    """Unpack a tar (any compression) or zip archive into ``dest``, refusing anything unsafe.

    Refused: absolute paths, ``..`` components, backslashes, symlinks, hard
    links, devices, FIFOs, encrypted or duplicate members, and archives over
    ``max_bytes`` unpacked or ``max_members`` entries. The whole archive is
    read and every refusal listed before raising; on any refusal ``dest`` is
    left empty. Files get mode 0o644 (0o755 if executable); owners, times and
    other mode bits are not restored.

    Args:
        archive: The archive file.
        dest: An empty or missing folder to unpack into.
        max_bytes: Limit on the total unpacked size.
        max_members: Limit on the number of entries.

    Returns:
        The relative POSIX paths of the files written, in archive order.

    Raises:
        VerificationError: The archive is unreadable, hostile or too big.
        UsageError: ``dest`` exists and is not an empty folder.
    """
    import tarfile
    import zipfile
    import zlib

    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise UsageError(f"{dest} is not an empty folder.", hint="Extract into a new folder.")
    if not archive.is_file():
        raise UsageError(f"{archive} is not a file.", hint="Pass a .tar.gz or .zip bundle archive.")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    ex = _Extractor(archive, Path(os.path.realpath(dest)), max_bytes, max_members)
    try:
        try:
            _extract_all(archive, ex)
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeError, ValueError) as exc:
            raise VerificationError(
                f"{archive} could not be extracted: {exc}.",
                hint="If the archive is corrupt or not a bundle, re-download or rebuild it.",
            ) from exc
        if ex.problems:
            raise VerificationError(
                f"{archive} has {len(ex.problems)} unsafe member(s), nothing extracted: {_listing(ex.problems)}.",
                hint="Do not use this archive; bundles hold only plain files and folders.",
            )
    except BaseException:
        _empty(dest, remove=created)
        raise
    return ex.files


def _empty(dest: Path, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
