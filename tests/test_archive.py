"""Deterministic tar.gz bundles, and extraction that refuses hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from edgepack.archive import safe_extract, write_deterministic_tar
from edgepack.errors import UsageError, VerificationError


def _make_tree(root: Path, *, reverse: bool = False) -> Path:
    files = {
        "model.tflite": b"\x00\x01model" * 100,
        "run.py": b"print('hi')\n",
        "sub/deep/data.bin": os.urandom(0) + b"data",
        "sub/a.txt": b"a",
        "build_engine.sh": b"#!/bin/sh\necho\n",
        "n" * 120 + ".txt": b"long name",
    }
    items = sorted(files.items(), reverse=reverse)  # different creation order -> different directory order
    for rel, data in items:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "build_engine.sh").chmod(0o755)
    (root / "empty").mkdir()
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_content_gives_identical_bytes(tmp_path: Path) -> None:
    one = _make_tree(tmp_path / "one")
    two = _make_tree(tmp_path / "two", reverse=True)
    for i, path in enumerate(sorted(two.rglob("*"))):  # different times and non-exec permission bits
        os.utime(path, (1_000_000 + i * 7919, 2_000_000_000 - i * 104729))
        if path.is_file() and path.name != "build_engine.sh":
            path.chmod(0o600 if i % 2 else 0o664)
    write_deterministic_tar(one, tmp_path / "one.tar.gz", arcname_root="bundle")
    write_deterministic_tar(two, tmp_path / "two.tar.gz", arcname_root="bundle")
    assert _sha(tmp_path / "one.tar.gz") == _sha(tmp_path / "two.tar.gz")
    os.utime(one / "run.py", (5, 5))  # written again later, after touching a file
    write_deterministic_tar(one, tmp_path / "again.tar.gz", arcname_root="bundle")
    assert _sha(tmp_path / "again.tar.gz") == _sha(tmp_path / "one.tar.gz")


def test_headers_are_normalised(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    archive = write_deterministic_tar(src, tmp_path / "b.tar.gz", arcname_root="bundle")
    raw = archive.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] & 0x08 == 0  # gzip: no FNAME field
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        assert tar.pax_headers == {}
    names = [m.name for m in members]
    assert names[0] == "bundle"
    assert names == ["bundle", *sorted(names[1:], key=lambda n: n.split("/"))]
    assert "bundle/empty" in names
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert set(m.pax_headers) <= {"path"}  # only for the long name, never times
        want = 0o755 if m.isdir() or m.name.endswith(".sh") else 0o644
        assert m.mode == want, m.name


def test_exclude_leaves_out_a_folder(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    (src / "report").mkdir()
    (src / "report" / "r.md").write_text("volatile")
    archive = write_deterministic_tar(src, tmp_path / "b.tar.gz", arcname_root="b", exclude=("report",))
    with tarfile.open(archive) as tar:
        assert not any("report" in n for n in tar.getnames())


def test_refuses_symlink_in_source_and_dest_inside_source(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    with pytest.raises(UsageError, match="inside"):
        write_deterministic_tar(src, src / "x.tar.gz", arcname_root="b")
    (src / "link").symlink_to("run.py")
    with pytest.raises(UsageError, match="symlink"):
        write_deterministic_tar(src, tmp_path / "x.tar.gz", arcname_root="b")
    assert not (tmp_path / "x.tar.gz").exists()


def test_round_trip_extract(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    archive = write_deterministic_tar(src, tmp_path / "b.tar.gz", arcname_root="bundle")
    files = safe_extract(archive, tmp_path / "out")
    out = tmp_path / "out" / "bundle"
    assert sorted(files) == sorted(f"bundle/{p.relative_to(src).as_posix()}" for p in src.rglob("*") if p.is_file())
    for path in src.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert os.access(out / "build_engine.sh", os.X_OK) and not os.access(out / "run.py", os.X_OK)
    assert (out / "empty").is_dir()


# ----------------------------------------------------------------------------------------- hostile tars


def _tar(path: Path, members: list[tuple[str, bytes | str | None, bytes]]) -> Path:
    """members: (name, tar type or None for a regular file, data or link target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = kind  # type: ignore[assignment]
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = data.decode()
                tar.addfile(info)
    return path


HOSTILE_TARS = {
    "absolute": [("/tmp/evil_abs", None, b"x")],
    "dotdot": [("ok.txt", None, b"fine"), ("../evil", None, b"x")],
    "nested-dotdot": [("a/b/../../../evil", None, b"x")],
    "symlink": [("link", tarfile.SYMTYPE, b"/etc/passwd")],
    "symlink-then-write-through": [("link", tarfile.SYMTYPE, b".."), ("link/evil", None, b"x")],
    "hardlink": [("hard", tarfile.LNKTYPE, b"/etc/passwd")],
    "chardev": [("dev", tarfile.CHRTYPE, b"")],
    "fifo": [("fifo", tarfile.FIFOTYPE, b"")],
    "duplicate": [("a.txt", None, b"1"), ("a.txt", None, b"2")],
    "backslash": [("..\\evil", None, b"x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "evil.tar.gz", HOSTILE_TARS[case])
    dest = work / "dest"
    with pytest.raises(VerificationError) as info:
        safe_extract(archive, dest)
    bad = next(name for name, *_ in HOSTILE_TARS[case][::-1])
    assert bad.split("/")[0] in str(info.value) or bad in str(info.value)
    assert sorted(p.name for p in work.iterdir()) == []  # dest removed again, nothing beside it
    assert not Path("/tmp/evil_abs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "work"]


def test_all_bad_members_are_named(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "evil.tar.gz",
        [("/abs", None, b"x"), ("../up", None, b"x"), ("ln", tarfile.SYMTYPE, b"x"), ("ok", None, b"x")],
    )
    with pytest.raises(VerificationError, match=r"3 unsafe member\(s\).*/abs.*\.\./up.*ln"):
        safe_extract(archive, tmp_path / "d")


# ------------------------------------------------------------------------------------------ hostile zips


def _zip(path: Path, name: str, data: bytes = b"x", *, mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("/tmp/evil_zip_abs", None),
        ("../evil", None),
        ("a/../../evil", None),
        ("..\\evil", None),
        ("link", stat.S_IFLNK | 0o777),
        ("dev", stat.S_IFCHR | 0o644),
    ],
)
def test_hostile_zip_is_refused(tmp_path: Path, name: str, mode: int | None) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip(tmp_path / "evil.zip", name, b"/etc/passwd", mode=mode)
    with pytest.raises(VerificationError, match="unsafe member"):
        safe_extract(archive, work / "dest")
    assert list(work.iterdir()) == []
    assert not Path("/tmp/evil_zip_abs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "work"]


def test_zip_round_trip(tmp_path: Path) -> None:
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("b/manifest.json", "{}")
        zf.writestr("b/sub/x.bin", b"123")
    assert sorted(safe_extract(archive, tmp_path / "d")) == ["b/manifest.json", "b/sub/x.bin"]
    assert (tmp_path / "d/b/sub/x.bin").read_bytes() == b"123"


# ---------------------------------------------------------------------------------------- bombs, misuse


def test_size_limit_tar(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar.gz", [("a", None, b"\0" * 600_000), ("b", None, b"\0" * 600_000)])
    with pytest.raises(VerificationError, match="decompression bomb"):
        safe_extract(archive, tmp_path / "d", max_bytes=1_000_000)
    assert not (tmp_path / "d").exists()


def test_size_limit_zip(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * 5_000_000)
    assert archive.stat().st_size < 50_000
    with pytest.raises(VerificationError, match="decompression bomb"):
        safe_extract(archive, tmp_path / "d", max_bytes=1_000_000)


def test_member_limit(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "many.tar.gz", [(f"f{i}", None, b"") for i in range(20)])
    with pytest.raises(VerificationError, match="10 members"):
        safe_extract(archive, tmp_path / "d", max_members=10)


def test_corrupt_archive_and_nonempty_dest(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar at all" * 10)[:40])
    with pytest.raises(VerificationError, match="could not be extracted"):
        safe_extract(junk, tmp_path / "d")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UsageError, match="not an empty folder"):
        safe_extract(junk, tmp_path / "full")
