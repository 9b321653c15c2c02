"""Rootless Debian package fetching: an isolated apt state, ``apt-get download``-style closures, ``dpkg-deb -x``.

Nothing here needs root or touches the host's apt: every apt call reads a
private ``APT_CONFIG`` that points lists, caches, the dpkg status and the
sources at folders of the edgepack cache. No maintainer script and no foreign
binary is ever run; :func:`fix_sysroot` does by hand the little that the
maintainer scripts would have done and that a Python runtime needs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from edgepack.errors import DeviceCheckError, MissingDependencyError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
TRIPLETS = {"arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf", "amd64": "x86_64-linux-gnu"}
_MISSING = re.compile(
    r"E: (?:Unable to locate package (?P<a>\S+)|Package '(?P<b>[^']+)' has no installation candidate"
    r"|Couldn't find any package by \S+ '(?P<c>[^']+)'|Version '[^']+' for '(?P<d>[^']+)' was not found)"
)
Progress = Callable[[str], None]


def _which(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingDependencyError(
            f"{tool} is not on PATH; the qemu emulator backend fetches Debian packages with it.",
            hint=f"Install the {package} package (it is on every Debian or Ubuntu host), or use another emulator.",
        )
    return path


class AptState:
    """A private apt configuration for one (architecture, release), rooted in ``root``.

    Args:
        root: Folder holding the sources, lists, dpkg status and cache.
        arch: Debian architecture of the packages (``arm64``, ``armhf``, ``amd64``).
        release: Debian release (``bookworm``).
        with_sources: Also list ``deb-src`` lines (needed to fetch a source package).
    """

    def __init__(self, root: Path, *, arch: str, release: str, with_sources: bool = False) -> None:
        self.root, self.arch, self.release, self.with_sources = root, arch, release, with_sources
        self.apt_get = _which("apt-get", "apt")
        if not KEYRING.is_file():
            raise MissingDependencyError(
                f"{KEYRING} is missing; it verifies the Debian packages that the emulator is built from.",
                hint="Install the debian-archive-keyring package.",
            )
        self._write_config()

    def _suites(self) -> list[tuple[str, str]]:
        mirror = os.environ.get("EDGEPACK_DEBIAN_MIRROR", MIRROR)
        if self.release in ("sid", "unstable"):
            return [(mirror, self.release)]
        security = os.environ.get("EDGEPACK_DEBIAN_SECURITY_MIRROR", SECURITY_MIRROR)
        return [(mirror, self.release), (mirror, f"{self.release}-updates"), (security, f"{self.release}-security")]

    def _write_config(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "conf.d", "prefs.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        types = ["deb", "deb-src"] if self.with_sources else ["deb"]
        lines = [f"{t} [signed-by={KEYRING}] {url} {suite} main" for url, suite in self._suites() for t in types]
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        (self.root / "status").touch()  # an empty dpkg status: apt resolves the whole closure
        options = {
            "Dir::Etc::main": "/dev/null",  # ignore the host's apt.conf(.d): no hooks, no pinning
            "Dir::Etc::Parts": self.root / "conf.d",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": self.root / "prefs.d",
            "Dir::Etc::SourceList": self.root / "sources.list",
            "Dir::Etc::SourceParts": self.root / "conf.d",
            "Dir::State": self.root,
            "Dir::State::Lists": self.root / "lists",
            "Dir::State::status": self.root / "status",
            "Dir::Cache": self.root / "cache",
            "Dir::Log": self.root,
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Install-Recommends": "false",
            "Acquire::Languages": "none",
            "Acquire::GzipIndexes": "true",  # keep the lists compressed and skip apt's binary caches:
            "Acquire::CompressionTypes::Order::": "gz",  # 12 MB on disk instead of 120 MB
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "",
            "Debug::NoLocking": "true",  # edgepack's own cache lock serialises builds
        }
        if os.geteuid() == 0:
            options["APT::Sandbox::User"] = "root"  # _apt could not write into the cache folders
        text = "".join(f'{key} "{value}";\n' for key, value in options.items())
        (self.root / "apt.conf").write_text(text)

    def _apt(self, args: list[str], *, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "APT_CONFIG": str(self.root / "apt.conf"),
            "LC_ALL": "C",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        try:
            return subprocess.run(
                [self.apt_get, "-q", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceCheckError(
                f"apt-get {args[0]} ({self.arch}, {self.release}) took over {timeout:.0f} s.",
                hint="Check the network or the Debian mirror (EDGEPACK_DEBIAN_MIRROR), then retry.",
            ) from exc

    def update(self) -> list[str]:
        """Fetch the package lists. Mirror errors are warnings as long as the main list arrived.

        Returns:
            apt's warning and error lines (for instance a security list that was mid-sync).
        """
        proc = self._apt(["update"])
        problems = [
            ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("E:", "W:", "Err:"))
        ]
        main = f"_dists_{self.release}_main_binary-{self.arch}_Packages"
        if not any(main in p.name for p in (self.root / "lists").iterdir()):
            raise DeviceCheckError(
                f"could not fetch the Debian {self.release} package list for {self.arch}: "
                + ("; ".join(problems[:3]) or f"apt-get update exited with {proc.returncode}"),
                hint="Check the network or set EDGEPACK_DEBIAN_MIRROR to a reachable Debian mirror.",
            )
        return problems

    def download(self, packages: list[str], dest: Path, *, what: str = "") -> list[Path]:
        """Download ``packages`` and everything they depend on (the full closure) into ``dest``.

        Raises:
            DeviceCheckError: a package does not exist in this release/architecture, or cannot be installed.
        """
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "partial").mkdir(exist_ok=True)
        args = ["-y", "--download-only", f"-oDir::Cache::Archives={dest}", "install", *packages]
        proc = self._apt(args)
        if proc.returncode != 0:
            raise self._error(proc, what)
        return sorted(dest.glob("*.deb"))

    def download_source(self, package: str, dest: Path) -> list[Path]:
        """Download a source package's files (``.dsc``, tarballs) into ``dest``, unpacking nothing."""
        dest.mkdir(parents=True, exist_ok=True)
        proc = self._apt(["--download-only", "source", package], cwd=dest)
        if proc.returncode != 0:
            raise self._error(proc, f"the source of {package}")
        return sorted(p for p in dest.iterdir() if p.is_file())

    def _error(self, proc: subprocess.CompletedProcess, what: str) -> DeviceCheckError:
        output = proc.stdout + proc.stderr
        where = f"Debian {self.release} ({self.arch})"
        missing = [next(g for g in m.groups() if g) for m in _MISSING.finditer(output)]
        if missing:
            return DeviceCheckError(
                f"{where} has no package {', '.join(repr(m) for m in missing)}"
                + (f" (needed for {what})." if what else "."),
                hint="Fix emulation.debs / emulation.python / emulation.debian_release in the profile.",
            )
        errors = [ln.strip() for ln in output.splitlines() if ln.startswith("E:") or "Depends:" in ln]
        return DeviceCheckError(
            f"apt-get could not fetch {what or 'packages'} from {where}: " + ("; ".join(errors[:4]) or output[-300:]),
            hint="Check emulation.debs in the profile and the network, then retry.",
        )


def extract(debs: list[Path], dest: Path, *, timeout: float = 300) -> None:
    """Unpack each ``.deb``'s files into ``dest`` with ``dpkg-deb -x`` (no maintainer scripts run)."""
    dpkg_deb = _which("dpkg-deb", "dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        proc = subprocess.run([dpkg_deb, "-x", str(deb), str(dest)], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise DeviceCheckError(f"dpkg-deb could not unpack {deb.name}: {proc.stderr.strip()[-300:]}")


def fix_sysroot(root: Path, arch: str) -> None:
    """Do what dpkg's maintainer scripts would have: merged /usr, relative links, BLAS/LAPACK alternatives.

    Args:
        root: The unpacked sysroot.
        arch: Its Debian architecture.
    """
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        src = root / top
        if src.is_dir() and not src.is_symlink():
            _merge_tree(src, root / "usr" / top)
            shutil.rmtree(src)
        if (root / "usr" / top).is_dir() and not src.exists():
            src.symlink_to(f"usr/{top}")
    _relative_links(root)
    triplet_dir = root / "usr" / "lib" / TRIPLETS.get(arch, "")
    for alternative in ("blas", "lapack"):
        for lib in sorted((triplet_dir / alternative).glob("lib*.so*")):
            link = triplet_dir / lib.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(f"{alternative}/{lib.name}")
    for unused in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"):
        shutil.rmtree(root / unused, ignore_errors=True)


def _merge_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink():
            _merge_tree(item, target)
        elif not target.exists() and not target.is_symlink():
            os.rename(item, target)


def _relative_links(root: Path) -> None:
    """Rewrite absolute symlinks to point inside ``root``: the host resolves them, not the guest."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = os.readlink(path)
                if target.startswith("/"):
                    path.unlink()
                    path.symlink_to(os.path.relpath(root / target.lstrip("/"), path.parent))
