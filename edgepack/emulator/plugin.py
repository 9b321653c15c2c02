"""Build the ``edgecount`` instruction-counting TCG plugin for the qemu that runs the guest.

The plugin is compiled at setup with the host's C compiler against
``qemu-plugin.h`` taken from Debian's qemu source package of the same upstream
version (only that one header is read out of the tarball). Nothing here is
required: every failure returns a reason instead of raising, and runs then
report ``instructions=None`` with that reason.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from edgepack.emulator.debian import AptState
from edgepack.errors import EdgepackError

SOURCE = Path(__file__).with_name("plugin") / "edgecount.c"
HEADER = "include/qemu/qemu-plugin.h"
LIBRARY = "libedgecount.so"


def source_digest() -> str:
    """Digest of the plugin's C source: a changed source rebuilds the cached plugin."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def upstream_version(text: str) -> str | None:
    """``major.minor`` of a qemu version (``"qemu-aarch64 version 7.2.22 (...)"`` or ``"7.2+dfsg"``)."""
    match = re.search(r"(?:version |^|_)(\d+)\.(\d+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def build(dest: Path, *, qemu_version: str, apt: AptState | None) -> tuple[Path | None, str]:
    """Compile the plugin into ``dest``.

    Args:
        dest: Folder to put ``libedgecount.so`` (and the header it was built against) in.
        qemu_version: ``--version`` line of the qemu binary that will load the plugin.
        apt: An amd64 apt state with ``deb-src`` lines, to fetch the header; None if there is none.

    Returns:
        The plugin's path and ``""``, or None and the reason it could not be built.
    """
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None, "no C compiler (cc) on PATH to build the instruction-counting plugin"
    wanted = upstream_version(qemu_version)
    if wanted is None:
        return None, f"cannot tell the qemu version from {qemu_version!r}"
    if apt is None:
        return None, "no Debian apt state to fetch qemu-plugin.h from"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        header = _fetch_header(apt, dest, wanted)
    except (EdgepackError, OSError, tarfile.TarError) as exc:
        return None, f"could not get qemu-plugin.h: {exc}"
    if isinstance(header, str):
        return None, header
    library = dest / LIBRARY
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-Wall", f"-I{header.parent}", str(SOURCE), "-o", str(library)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"compiling the plugin failed: {exc}"
    if proc.returncode != 0:
        return None, "compiling the plugin failed: " + " ".join(proc.stderr.split())[-300:]
    return library, ""


def _fetch_header(apt: AptState, dest: Path, wanted: str) -> Path | str:
    """Download qemu's source tarball, keep only qemu-plugin.h, delete the rest."""
    download = dest / "src"
    try:
        files = apt.download_source("qemu", download)
        orig = next((f for f in files if ".orig.tar" in f.name), None)
        if orig is None:
            return "the qemu source package has no .orig tarball"
        have = upstream_version(orig.name)
        if have != wanted:
            return f"the plugin header is from qemu {have} but the qemu binary is {wanted}"
        header = dest / "include" / "qemu-plugin.h"
        header.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(orig, "r|*") as tar:  # a stream: read once, stop at the header
            for member in tar:
                data = tar.extractfile(member) if member.isfile() and member.name.endswith("/" + HEADER) else None
                if data is not None:
                    header.write_bytes(data.read())
                    return header
        return f"{orig.name} has no {HEADER}"
    finally:
        shutil.rmtree(download, ignore_errors=True)
