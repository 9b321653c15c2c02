"""Bundle manifests and their verification.

A bundle's ``manifest.json`` is a JSON object with (besides whatever the
bundle writer adds) two keys this module owns:

- ``"files"``: ``{relative/posix/path: sha256 hex}`` for every file in the
  bundle except ``manifest.json`` and ``manifest.json.sig`` at its top.
- ``"manifest_sha256"``: sha256 of :func:`canonical_json` of the manifest
  *without* this key (the self-digest; :func:`seal_manifest` adds it).
- ``"unsealed"`` (optional): top-level names (e.g. ``["report"]``) whose
  contents are volatile (measurements written after sealing). They are left
  out of ``files`` and not checked; the list itself is sealed and signed, so
  nothing else can be slipped in that way.

The file's bytes must be exactly :func:`render_manifest` of its content
(sorted keys, 2-space indent, ASCII, trailing newline), so that changing any
single byte of a bundle - data file or manifest, even whitespace - fails
verification. Bundle writers should call :func:`write_manifest`, which fills
``files``, seals and writes it in that layout.

:func:`verify_bundle` checks a bundle folder or archive and collects *every*
problem before raising one :class:`~edgepack.errors.VerificationError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgepack.artifact import sha256_file
from edgepack.errors import InternalError, UsageError, VerificationError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SEAL_KEY = "manifest_sha256"
FILES_KEY = "files"
UNSEALED_KEY = "unsealed"
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest bigger than this (64 MiB) is refused rather than parsed."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SHOWN = 10


# ------------------------------------------------------------------------------------------- manifests


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no spaces, ASCII only, no NaN.

    Args:
        obj: A JSON value (dicts with str keys, lists, str, int, float, bool, None).

    Returns:
        UTF-8 (in fact ASCII) bytes; equal values give equal bytes.

    Raises:
        InternalError: ``obj`` is not plain JSON (NaN, a Path, non-str keys, too deep).
    """
    try:
        return _canonical(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InternalError(
            f"manifest is not plain JSON: {exc}.", hint="This is an edgepack bug in the bundle writer; report it."
        ) from exc


def _seal_of(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    return hashlib.sha256(_canonical(body)).hexdigest()


def seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with ``manifest_sha256`` set to its self-digest (an old one is replaced).

    Raises:
        InternalError: The manifest is not plain JSON.
    """
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    return {**body, SEAL_KEY: hashlib.sha256(canonical_json(body)).hexdigest()}


def render_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes ``manifest.json`` must hold for ``manifest`` (seal it first).

    Raises:
        InternalError: The manifest is not plain JSON.
    """
    try:
        text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InternalError(f"manifest is not plain JSON: {exc}.", hint="This is an edgepack bug; report it.") from exc
    return (text + "\n").encode("ascii")


def files_map(folder: Path, *, unsealed: Iterable[str] = ()) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``folder``.

    Leaves out the top-level manifest and signature, and the top-level names in ``unsealed``.

    Raises:
        UsageError: The folder holds a symlink or special file (bundles hold plain files only).
    """
    files, bad = _scan(Path(folder), frozenset(unsealed))
    if bad:
        raise UsageError(
            f"{folder} cannot be sealed: {'; '.join(bad[:_SHOWN])}.", hint="Bundles hold plain files; copy them in."
        )
    return {rel: sha256_file(path) for rel, path in sorted(files.items())}


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Fill ``files`` from ``folder``, seal, and write ``folder/manifest.json`` atomically.

    Call this last, after every other file of the bundle is in place (and
    sign afterwards: signing covers the manifest's bytes).

    Args:
        folder: The bundle folder (typically the staging folder of :func:`edgepack.atomic.staged_output`).
        manifest: Everything else the manifest holds (optionally ``unsealed``); ``files`` and
            ``manifest_sha256`` are overwritten.

    Returns:
        The sealed manifest as written.
    """
    from edgepack.atomic import atomic_write_bytes

    folder = Path(folder)
    unsealed = manifest.get(UNSEALED_KEY, ())
    problems: list[str] = []
    if _unsealed_names(unsealed, problems) is None:
        raise InternalError(f"bad '{UNSEALED_KEY}' in manifest: {problems[0]}.", hint="This is an edgepack bug.")
    sealed = seal_manifest({**manifest, FILES_KEY: files_map(folder, unsealed=unsealed)})
    atomic_write_bytes(folder / MANIFEST, render_manifest(sealed))
    return sealed


# ---------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_bundle` checked, for the CLI and for ``--json`` output.

    Attributes:
        bundle: The folder or archive that was given.
        archive: Whether it was an archive (extracted to a temporary folder).
        files_checked: Files whose sha256 matched the manifest.
        total_bytes: Their total size.
        manifest_sha256: The manifest's self-digest.
        signature: ``"verified"``, ``"signed, not checked"`` (no key given) or ``"unsigned"``.
        key_fingerprint: Fingerprint of the key that verified the signature, if one did.
        unsealed: Top-level names the manifest declares volatile; their contents were not checked.
    """

    bundle: str
    archive: bool
    files_checked: int
    total_bytes: int
    manifest_sha256: str
    signature: str
    key_fingerprint: str | None = None
    unsealed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        out = asdict(self)
        out["unsealed"] = list(self.unsealed)
        return out


def _show(name: str) -> str:
    name = name if len(name) <= 80 else name[:77] + "..."
    return name if name.isprintable() else ascii(name)[1:-1]


def _scan(root: Path, skip: frozenset[str] = frozenset()) -> tuple[dict[str, Path], list[str]]:
    """Regular files under ``root`` (minus the top manifest and signature), and a problem line per other entry."""
    files: dict[str, Path] = {}
    bad: list[str] = []

    def unreadable(exc: OSError) -> None:
        bad.append(f"{_show(Path(exc.filename or root).relative_to(root).as_posix())} cannot be read")

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        if folder == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip]
        for name in sorted(dirs + names):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                if rel not in (MANIFEST, SIGNATURE):
                    files[rel] = path
            elif not stat.S_ISDIR(mode):
                bad.append(f"{_show(rel)} is a symlink or special file")
    return files, sorted(bad)


def _path_problem(rel: str) -> str | None:
    parts = rel.split("/")
    if not rel or "\0" in rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return "is not a normalised relative path"
    if rel in (MANIFEST, SIGNATURE):
        return "is listed, but the manifest cannot list itself or its signature"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_manifest(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The parsed manifest, or None (with the reason appended) if it is missing or not a JSON object."""
    if not path.is_file() or path.is_symlink():
        problems.append(f"{MANIFEST} is missing")
        return None
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        problems.append(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
        return None
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        problems.append(f"{MANIFEST} is not valid JSON ({_show(str(exc))})")
        return None
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST} is not a JSON object")
        return None
    try:
        if raw != render_manifest(manifest):
            problems.append(f"{MANIFEST} was edited or re-formatted (its bytes are not edgepack's layout)")
    except InternalError:
        problems.append(f"{MANIFEST} is not plain JSON")
    return manifest


def _check_seal(manifest: dict[str, Any], problems: list[str]) -> str:
    claimed = manifest.get(SEAL_KEY)
    if not isinstance(claimed, str):
        problems.append(f"{MANIFEST} has no {SEAL_KEY} self-digest")
        return ""
    try:
        actual = _seal_of(manifest)
    except (TypeError, ValueError, RecursionError):
        actual = ""
    if actual != claimed:
        problems.append(f"{MANIFEST} content does not match its {SEAL_KEY} (edited after sealing)")
    return claimed


def _unsealed_names(value: Any, problems: list[str]) -> frozenset[str] | None:
    """The manifest's ``unsealed`` top-level names, or None (with a problem noted) if malformed."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(n, str) and _path_problem(n) is None and "/" not in n for n in value
    )
    if not ok:
        problems.append(f"{MANIFEST} '{UNSEALED_KEY}' is not a list of top-level names")
        return None
    return frozenset(value)


def _listed_files(manifest: dict[str, Any], problems: list[str]) -> tuple[dict[str, str], set[str]]:
    """Valid ``path -> digest`` entries of the manifest, and every path it names (valid or not)."""
    listed = manifest.get(FILES_KEY)
    if not isinstance(listed, dict):
        problems.append(f"{MANIFEST} has no '{FILES_KEY}' map")
        return {}, set()
    valid: dict[str, str] = {}
    for rel, digest in sorted(listed.items()):
        why = _path_problem(rel)
        if why is None and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            why = "has a digest that is not 64 lowercase hex digits"
        if why is None:
            valid[rel] = digest
        else:
            problems.append(f"{_show(rel)} {why}")
    return valid, set(listed)


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _check_files(root: Path, manifest: dict[str, Any], problems: list[str]) -> tuple[int, int]:
    """Compare the files on disk with the manifest; returns (files that matched, their bytes)."""
    skip = _unsealed_names(manifest.get(UNSEALED_KEY, []), problems) or frozenset()
    on_disk, bad = _scan(root, skip)
    problems.extend(bad)
    valid, named = _listed_files(manifest, problems)
    matched = size = 0
    for rel, digest in valid.items():
        path = on_disk.get(rel)
        if path is None:
            problems.append(f"{_show(rel)} is missing")
        elif (actual := _digest(path)) != digest:
            problems.append(f"{_show(rel)} " + ("cannot be read" if actual is None else "does not match its sha256"))
        else:
            matched += 1
            size += path.stat().st_size
    problems.extend(f"{_show(rel)} is not in the manifest" for rel in sorted(set(on_disk) - named))
    return matched, size


def _check_signature(root: Path, public_key: Path | None, problems: list[str]) -> tuple[str, str | None]:
    from edgepack.signing import verify_signature

    sig = root / SIGNATURE
    if public_key is None:
        return ("signed, not checked" if sig.is_file() else "unsigned"), None
    if not sig.is_file():
        problems.append(f"the bundle is not signed ({SIGNATURE} missing) but a public key was given")
        return "unsigned", None
    try:
        return "verified", verify_signature(root / MANIFEST, sig, public_key)
    except VerificationError as exc:
        problems.append(exc.message)
        return "invalid", None


def _fail(bundle: Path, problems: list[str]) -> VerificationError:
    head = "; ".join(problems[:_SHOWN])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    err = VerificationError(
        f"{bundle} failed verification, {len(problems)} problem(s): {head}{more}.",
        hint="Do not deploy it; rebuild the bundle or fetch a fresh copy.",
    )
    err.problems = tuple(problems)  # type: ignore[attr-defined]  # full list for --json output and tests
    return err


def _verify_folder(root: Path, shown: Path, public_key: Path | None, *, archive: bool) -> VerifyReport:
    problems: list[str] = []
    signature, key_fp = _check_signature(root, public_key, problems)
    manifest = _load_manifest(root / MANIFEST, problems)
    if manifest is None:
        _, bad = _scan(root)
        problems.extend(bad)
        raise _fail(shown, problems)
    seal = _check_seal(manifest, problems)
    matched, size = _check_files(root, manifest, problems)
    if problems:
        raise _fail(shown, problems)
    unsealed = manifest.get(UNSEALED_KEY, [])
    return VerifyReport(str(shown), archive, matched, size, seal, signature, key_fp, tuple(sorted(unsealed)))


def archive_root(folder: Path) -> Path:
    """The bundle folder inside an extracted archive: the top, or its single top-level folder."""
    if (folder / MANIFEST).exists():
        return folder
    children = list(folder.iterdir())
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return folder


def verify_bundle(bundle: Path, *, public_key: Path | None = None) -> VerifyReport:
    """Check a bundle folder or archive against its manifest (and signature, given a key).

    Checks every listed file's sha256, files missing from the bundle or from
    the manifest, symlinks and special files, the manifest's self-digest and
    byte layout, and - when ``public_key`` is given - that ``manifest.json.sig``
    exists and is a valid signature by that key. A signature present without a
    key is reported as ``"signed, not checked"``.

    Args:
        bundle: A bundle folder, or a ``.tar.gz``/``.zip`` of one (extracted safely to a temporary folder).
        public_key: PEM Ed25519 public key to check the signature with.

    Returns:
        A report of what was checked.

    Raises:
        VerificationError: Anything did not check out; the message lists every
            problem (``.problems`` holds the full tuple).
        UsageError: ``bundle`` or ``public_key`` does not exist.
        MissingDependencyError: A key was given and ``cryptography`` is not installed.
    """
    import tempfile

    from edgepack.archive import safe_extract

    bundle = Path(bundle)
    if not bundle.exists():
        raise UsageError(f"{bundle} does not exist.", hint="Pass a bundle folder or its .tar.gz.")
    if public_key is not None and not Path(public_key).is_file():
        raise UsageError(f"public key {public_key} does not exist.", hint="Pass the .pub file from edgepack keygen.")
    if bundle.is_dir():
        return _verify_folder(bundle, bundle, public_key, archive=False)
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        folder = Path(tmp, "bundle")
        safe_extract(bundle, folder)
        return _verify_folder(archive_root(folder), bundle, public_key, archive=True)
