"""Signed release indexes: one ``release.json`` over the bundle archives of a run, like a TUF targets file.

``edgepack release OUT --version N --sign KEY`` writes, beside ``OUT/*.tar.gz``:

- ``release.json``: ``{"release_format": 1, "version": N, "edgepack_version": ..., "targets": {target:
  {"archive", "sha256", "size", "version", "manifest_sha256", "arch", "runtime": {"name", "requirement"},
  "min_runtime_version"}}}``, in the manifest's byte layout (sorted keys, indent 2, trailing newline);
- ``release.json.sig``: its Ed25519 signature, in the format of ``manifest.json.sig``
  (:mod:`edgepack.signing`);
- ``install.py`` and ``edgepack_verify.py``: the device's installer, which checks the index's signature,
  then the archive's size and sha256, before unpacking anything, and refuses a version lower than the
  installed one (anti-rollback) unless forced.

Every archive is verified against its own manifest (:func:`edgepack.integrity.verify_bundle`) before it
is listed: a release never vouches for a broken bundle.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgepack.errors import OutputExistsError, UsageError, VerificationError

INDEX = "release.json"
RELEASE_FORMAT = 1
DEVICE_FILES = ("install.py", "edgepack_verify.py")
_VERSION = re.compile(r"^\s*(?:>=|==|~=|===)?\s*v?(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Release:
    """A written release.

    Attributes:
        index_path: ``release.json``.
        signature_path: ``release.json.sig``, or None when unsigned.
        index: The index as written.
        key_fingerprint: Fingerprint of the public half of the signing key, or None.
    """

    index_path: Path
    signature_path: Path | None
    index: dict[str, Any]
    key_fingerprint: str | None = None


def min_runtime_version(requirement: str | None) -> str | None:
    """The lowest runtime version a requirement admits: ``">=1.0"`` -> ``"1.0"``, ``"10.3 (JetPack 6.0)"`` -> "10.3".

    A requirement with only an upper bound (``"<3"``) or none gives None.
    """
    match = _VERSION.match(requirement or "")
    return match.group(1) if match else None


def _archive_manifest(archive: Path) -> dict[str, Any]:
    """The verified manifest of a bundle archive (its files, seal and layout are checked first)."""
    import json
    import tempfile

    from edgepack.archive import safe_extract
    from edgepack.integrity import MANIFEST, archive_root, verify_bundle

    verify_bundle(archive)
    with tempfile.TemporaryDirectory(prefix="edgepack-release-") as tmp:
        safe_extract(archive, Path(tmp, "b"))
        return json.loads((archive_root(Path(tmp, "b")) / MANIFEST).read_text())


def entry_for(archive: Path, version: int) -> tuple[str, dict[str, Any]]:
    """(target name, index entry) of one bundle archive.

    Raises:
        VerificationError: The archive does not match its own manifest.
    """
    from edgepack.artifact import sha256_file

    manifest = _archive_manifest(archive)
    runtime = manifest.get("runtime") or {}
    target = (manifest.get("target") or {}).get("name") or archive.name.removesuffix(".tar.gz")
    requirement = runtime.get("version")
    return target, {
        "archive": archive.name,
        "sha256": sha256_file(archive),
        "size": archive.stat().st_size,
        "version": version,
        "manifest_sha256": manifest.get("manifest_sha256"),
        "arch": runtime.get("arch"),
        "runtime": {"name": runtime.get("name"), "requirement": requirement},
        "min_runtime_version": min_runtime_version(requirement),
    }


def build_index(out: Path, version: int) -> dict[str, Any]:
    """The release index over ``out/*.tar.gz`` (not written).

    Raises:
        UsageError: ``version`` is below 1, ``out`` holds no archive, or two archives are the same target.
        VerificationError: An archive does not match its own manifest.
    """
    from edgepack.version import __version__

    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"release version {version!r} is not a whole number >= 1.", hint="Pass e.g. --version 3.")
    archives = sorted(Path(out).glob("*.tar.gz"))
    if not archives:
        raise UsageError(f"{out} holds no bundle archive (*.tar.gz).", hint="Package with `edgepack package` first.")
    targets: dict[str, Any] = {}
    for archive in archives:
        target, entry = entry_for(archive, version)
        if target in targets:
            raise UsageError(
                f"{archive.name} and {targets[target]['archive']} are both target {target}.",
                hint="Keep one archive per target in the release folder.",
            )
        targets[target] = entry
    return {"release_format": RELEASE_FORMAT, "version": version, "edgepack_version": __version__, "targets": targets}


def write_release(out: Path, *, version: int, sign_key: Path | None = None, force: bool = False) -> Release:
    """Write ``release.json`` (and its signature, with a key) over ``out``'s bundle archives, and the installer.

    Args:
        out: The run's output folder (holding ``<target>.tar.gz``).
        version: The release version (whole number >= 1); devices refuse to install a lower one than theirs.
        sign_key: PEM Ed25519 private key (``edgepack keygen``). Without it the index is unsigned, and
            ``install.py`` refuses it.
        force: Replace an existing ``release.json``.

    Returns:
        What was written.

    Raises:
        OutputExistsError: ``release.json`` exists and ``force`` is False.
        UsageError: See :func:`build_index`; or the key is missing or not Ed25519.
        VerificationError: An archive does not match its own manifest.
        MissingDependencyError: A key was given and ``cryptography`` is not installed.
    """
    from edgepack.atomic import atomic_write_bytes
    from edgepack.integrity import render_manifest
    from edgepack.signing import fingerprint_of_private, sign_file, signature_path

    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out} is not a folder.", hint="Pass the output folder of `edgepack package`.")
    path = out / INDEX
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists.", hint="Pass --force to replace it, with a higher --version.")
    index = build_index(out, version)
    fp = fingerprint_of_private(sign_key) if sign_key is not None else None  # a bad key fails before writing
    sig = signature_path(path)
    sig.unlink(missing_ok=True)  # a stale signature never stays beside a new index
    atomic_write_bytes(path, render_manifest(index))
    if sign_key is not None:
        sign_file(path, sign_key)
    templates = resources.files("edgepack.templates")
    for name in DEVICE_FILES:
        (out / name).write_text(templates.joinpath(name).read_text())
    return Release(path, sig if sign_key is not None else None, index, fp)


def verify_release(out: Path, public_key: Path) -> dict[str, Any]:
    """Check ``release.json``'s signature and every listed archive's size and sha256 (the host's view).

    Raises:
        VerificationError: The signature or an archive does not check out (every problem listed).
    """
    import json

    from edgepack.artifact import sha256_file
    from edgepack.signing import signature_path, verify_signature

    path = Path(out) / INDEX
    verify_signature(path, signature_path(path), public_key)
    index = json.loads(path.read_text())
    problems = []
    for target, entry in sorted(index.get("targets", {}).items()):
        archive = Path(out) / entry["archive"]
        if not archive.is_file():
            problems.append(f"{target}: {archive.name} is missing")
        elif archive.stat().st_size != entry["size"] or sha256_file(archive) != entry["sha256"]:
            problems.append(f"{target}: {archive.name} does not match its size and sha256")
    if problems:
        raise VerificationError(f"release {path} failed: {'; '.join(problems)}.", hint="Re-copy the archives.")
    return index


def copy_release(out: Path, dest: Path) -> Path:
    """Copy a release (index, signature, installer, archives) to ``dest``, e.g. to stage it for a device."""
    import json

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    index = json.loads((Path(out) / INDEX).read_text())
    names = [INDEX, INDEX + ".sig", *DEVICE_FILES, *(e["archive"] for e in index["targets"].values())]
    for name in names:
        if (Path(out) / name).is_file():
            shutil.copyfile(Path(out) / name, dest / name)
    return dest
