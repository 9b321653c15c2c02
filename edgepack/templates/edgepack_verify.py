"""On-device verification of an edgepack bundle, shipped verbatim beside ``run.py`` and ``install.py``.

Standard library only; Ed25519 signatures need the ``cryptography`` package (pip ``cryptography`` on
64-bit boards, Debian's ``python3-cryptography`` on 32-bit armv7 ones), imported only when a key is given.

The formats are the host's (``edgepack/integrity.py``, ``edgepack/signing.py``), byte for byte:

- ``manifest.json`` holds ``files`` (``{relative posix path: sha256}`` of every file but the manifest and
  its signature) and ``manifest_sha256``, the sha256 of the canonical JSON of the manifest without that key
  (sorted keys, no spaces, ASCII); the file's bytes are the manifest dumped with sorted keys, indent 2 and a
  trailing newline. Top-level names in ``unsealed`` (the volatile ``report/``) are not checked.
- ``manifest.json.sig`` is one line of base64: the 64-byte Ed25519 signature over the manifest's bytes.

What it defends against: a corrupt or half-written file, a swapped model, an edited manifest; with a public
key held by the device (outside the bundle), any change by whoever lacks the private key. Someone who can
rewrite ``run.py`` itself is out of reach of any check that ``run.py`` makes: install bundles with
``install.py`` kept outside them, which checks the signed release before unpacking.
"""

import base64
import binascii
import hashlib
import json
import os
import stat
import time

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SEAL_KEY = "manifest_sha256"
FILES_KEY = "files"
UNSEALED_KEY = "unsealed"
MAX_MANIFEST_BYTES = 64 << 20
CRYPTO_HINT = "pip install cryptography (64-bit boards) or apt install python3-cryptography (32-bit armv7)"

# Exit codes shared by run.py and install.py (edgepack's own CLI uses 11 for a failed verification too).
EXIT_MISSING_CRYPTO = 6
EXIT_INTEGRITY = 11
EXIT_SIGNATURE = 14
# A file the manifest does not list is tolerated (run.py's outputs may land beside it) unless Python could
# import or load it: a planted numpy.py beside run.py would run before any check.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".egg", ".whl", ".zip", ".dylib")
_HEX = frozenset("0123456789abcdef")
_SHOWN = 5


class Refused(Exception):
    """The bundle (or release) failed a check; ``code`` is the exit status, ``str()`` the one-line reason."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def canonical(obj):
    """The canonical JSON bytes the seal is computed over (as ``edgepack.integrity.canonical_json``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def render(obj):
    """The exact bytes of a manifest (or release index) file (as ``edgepack.integrity.render_manifest``)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def seal_of(manifest):
    """The self-digest of a manifest: sha256 of the canonical JSON of everything but the seal itself."""
    return hashlib.sha256(canonical({k: v for k, v in manifest.items() if k != SEAL_KEY})).hexdigest()


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(name + " is not JSON")


def load_json(path, what, strict=True):
    """A JSON object file (in edgepack's exact layout unless not ``strict``); returns (object, raw bytes, layout ok)."""
    try:
        if os.path.islink(path) or os.path.getsize(path) > MAX_MANIFEST_BYTES:
            raise Refused(EXIT_INTEGRITY, f"{what} is a link or too big")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        raise Refused(EXIT_INTEGRITY, f"{what} is missing or unreadable") from None
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        same = isinstance(obj, dict) and raw == render(obj)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
        raise Refused(EXIT_INTEGRITY, f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise Refused(EXIT_INTEGRITY, f"{what} is not a JSON object")
    if strict and not same:
        raise Refused(EXIT_INTEGRITY, f"{what} was edited (its bytes are not edgepack's layout)")
    return obj, raw, same


def is_sealed(manifest, root):
    """Whether a manifest claims edgepack's seal (a hand-made one for a bare run.py does not)."""
    return SEAL_KEY in manifest or FILES_KEY in manifest or os.path.lexists(os.path.join(root, SIGNATURE))


def _good_path(rel):
    parts = rel.split("/") if isinstance(rel, str) else [""]
    return "\\" not in rel and "\0" not in rel and all(p not in ("", ".", "..") for p in parts) and rel != MANIFEST


def _scan(root, skip):
    """Regular files under ``root`` (relative posix path -> path) and a problem per link or special file."""
    files, bad = {}, []
    for folder, dirs, names in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        if rel_folder == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            names = [n for n in names if n not in skip and n not in (MANIFEST, SIGNATURE)]
        for name in sorted(dirs + names):
            path = os.path.join(folder, name)
            rel = name if rel_folder == "." else rel_folder + "/" + name
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                files[rel] = path
            elif not stat.S_ISDIR(mode):
                bad.append(f"{rel} is a link or special file")
    return files, bad


def check_files(root, manifest):
    """Every listed file's sha256 and the seal; returns (files, bytes) checked or raises Refused with all problems."""
    problems = []
    if manifest.get(SEAL_KEY) != seal_of(manifest):
        problems.append(f"{MANIFEST} does not match its {SEAL_KEY} (edited after sealing)")
    listed = manifest.get(FILES_KEY)
    unsealed = manifest.get(UNSEALED_KEY, [])
    if not isinstance(listed, dict) or not isinstance(unsealed, list) or not all(_good_path(n) for n in unsealed):
        raise Refused(EXIT_INTEGRITY, f"{MANIFEST} has no valid '{FILES_KEY}' map; " + "; ".join(problems))
    on_disk, bad = _scan(root, {n for n in unsealed if "/" not in n})
    problems += bad
    count = size = 0
    for rel in sorted(listed):
        digest = listed[rel]
        if not _good_path(rel) or not isinstance(digest, str) or len(digest) != 64 or set(digest) - _HEX:
            problems.append(f"{rel!r} is not a valid entry")
        elif rel not in on_disk:
            problems.append(f"{rel} is missing")
        elif sha256_file(on_disk[rel]) != digest:
            problems.append(f"{rel} does not match its sha256")
        else:
            count, size = count + 1, size + os.path.getsize(on_disk[rel])
    extra = [rel for rel in sorted(set(on_disk) - set(listed)) if rel.lower().endswith(CODE_SUFFIXES)]
    problems += [f"{rel} is not in the manifest (code Python could load)" for rel in extra]
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise Refused(EXIT_INTEGRITY, f"{len(problems)} problem(s): " + "; ".join(problems[:_SHOWN]) + more)
    return count, size


def _crypto():
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise Refused(
            EXIT_MISSING_CRYPTO, f"a public key was given but the 'cryptography' package is missing: {CRYPTO_HINT}"
        ) from None
    return exceptions, serialization, ed25519


def load_public_key(path):
    """(key, fingerprint ``sha256:<32 hex>``) of a PEM Ed25519 public key, as ``edgepack.signing`` prints it."""
    exceptions, serialization, ed25519 = _crypto()
    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_public_key(fh.read())
    except OSError:
        raise Refused(EXIT_SIGNATURE, f"public key {path} cannot be read") from None
    except (ValueError, TypeError, exceptions.UnsupportedAlgorithm):
        raise Refused(EXIT_SIGNATURE, f"{path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise Refused(EXIT_SIGNATURE, f"{path} is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def check_signature(data, sig_path, key_path, what):
    """Verify the detached signature file of ``data`` (bytes) with the key; returns the key's fingerprint."""
    exceptions, _, _ = _crypto()
    key, fp = load_public_key(key_path)
    try:
        with open(sig_path, "rb") as fh:
            text = fh.read(4097)
    except OSError:
        raise Refused(EXIT_SIGNATURE, f"{what} is not signed ({os.path.basename(sig_path)} is missing)") from None
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(text) > 4096 or len(signature) != 64:
        raise Refused(EXIT_SIGNATURE, f"{os.path.basename(sig_path)} is not an Ed25519 signature")
    try:
        key.verify(signature, data)
    except exceptions.InvalidSignature:
        raise Refused(
            EXIT_SIGNATURE, f"{what} is not signed by key {fp} (changed after signing, or another key)"
        ) from None
    return fp


def pubkey_from(arg):
    """The public key to check with: ``--pubkey``, else ``$EDGEPACK_PUBKEY``, else None."""
    return arg or os.environ.get("EDGEPACK_PUBKEY") or None


def verify_bundle(root, pubkey=None):
    """Check a bundle folder before anything of it is loaded.

    Args:
        root: The bundle folder (holding ``manifest.json``).
        pubkey: Path of a PEM Ed25519 public key: the signature must then verify with it.

    Returns:
        What was checked: ``{"verified": "sealed"|"unsealed", "files", "bytes", "manifest_sha256",
        "signature": "verified"|"signed, not checked"|"unsigned", "key", "seconds"}``, and the manifest.

    Raises:
        Refused: With ``code`` 11 (a file or the manifest does not match), 14 (unsigned or wrongly
            signed while a key is given) or 6 (a key is given and ``cryptography`` is missing).
    """
    start = time.perf_counter()
    path = os.path.join(root, MANIFEST)
    manifest, raw, layout_ok = load_json(path, MANIFEST, strict=False)
    facts = {"verified": "sealed", "files": 0, "bytes": 0, "manifest_sha256": manifest.get(SEAL_KEY)}
    sig = os.path.join(root, SIGNATURE)
    if pubkey:
        facts["key"] = check_signature(raw, sig, pubkey, MANIFEST)
        facts["signature"] = "verified"
    else:
        facts["signature"] = "signed, not checked" if os.path.isfile(sig) else "unsigned"
    if is_sealed(manifest, root):
        if not layout_ok:
            raise Refused(EXIT_INTEGRITY, f"{MANIFEST} was edited (its bytes are not edgepack's layout)")
        facts["files"], facts["bytes"] = check_files(root, manifest)
    else:  # a bare run.py beside a hand-written manifest: nothing to check against, and the output says so
        facts["verified"] = "unsealed"
    facts["seconds"] = round(time.perf_counter() - start, 6)
    return facts, manifest
