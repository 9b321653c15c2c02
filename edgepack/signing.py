"""Ed25519 signatures over a bundle's ``manifest.json``.

Signing the manifest signs the whole bundle: the manifest holds the sha256 of
every other file. Keys are PEM files (PKCS#8 private key, unencrypted, mode
0o600; SubjectPublicKeyInfo public key). The signature file
``manifest.json.sig`` is the detached 64-byte Ed25519 signature over the exact
bytes of ``manifest.json``, written as one line of standard base64 followed by
a newline (so it can be pasted into a ticket or a CI secret)::

    openssl pkeyutl -verify -pubin -inkey key.pub -rawin \\
        -in manifest.json -sigfile <(base64 -d manifest.json.sig)

The ``cryptography`` package is imported only when a key is used; without it
the caller gets a MissingDependencyError naming ``pip install 'edgepack[sign]'``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

from edgepack.deps import require
from edgepack.errors import OutputExistsError, UsageError, VerificationError

SIGNATURE_SUFFIX = ".sig"
_SIG_LEN = 64
_MAX_SIG_FILE = 4096


def signature_path(manifest_path: Path) -> Path:
    """Where the signature of ``manifest_path`` lives: ``manifest.json.sig`` beside it."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.name + SIGNATURE_SUFFIX)


def _ed25519() -> Any:
    require("cryptography")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; never overwrites (O_EXCL), so a key cannot be clobbered."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, mode)  # the umask may have cleared bits of a 0o644 public key


def keygen(private_path: Path, public_path: Path) -> str:
    """Create an Ed25519 key pair as PEM files.

    Args:
        private_path: Private key to create (mode 0o600). Keep it secret.
        public_path: Public key to create (mode 0o644); ship it to whoever verifies.

    Returns:
        The public key's fingerprint (see :func:`fingerprint`).

    Raises:
        OutputExistsError: Either file already exists (keys are never overwritten).
        MissingDependencyError: ``cryptography`` is not installed.
    """
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise OutputExistsError(
                f"{path} already exists; edgepack never overwrites a key.",
                hint="Choose other paths, or delete the old key yourself if you are sure.",
            )
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return _fingerprint_of(public)


def _fingerprint_of(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _load_private(path: Path) -> Any:
    ed25519 = _ed25519()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if not Path(path).is_file():
        raise UsageError(f"private key {path} does not exist.", hint="Create one with: edgepack keygen")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except TypeError as exc:  # encrypted key and no password
        raise UsageError(
            f"private key {path} is password-protected, which edgepack does not support.",
            hint="Use an unencrypted key kept with mode 0o600, e.g. from: edgepack keygen",
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{path} is not a PEM private key.", hint="Create one with: edgepack keygen") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key.", hint="Create an Ed25519 key with: edgepack keygen")
    return key


def _load_public(path: Path) -> Any:
    ed25519 = _ed25519()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"public key {path} does not exist.", hint="Pass the .pub file made by edgepack keygen.")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError(
            f"{path} is not a PEM public key.", hint="Pass the public key made by edgepack keygen."
        ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise VerificationError(f"{path} is not an Ed25519 public key.", hint="Pass the key made by edgepack keygen.")
    return key


def fingerprint_of_private(private_key_path: Path) -> str:
    """The fingerprint of a private key's public half (what devices will print on verifying its signatures).

    Raises:
        UsageError: The key is missing, not Ed25519, or encrypted.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    return _fingerprint_of(_load_private(private_key_path).public_key())


def fingerprint(public_key_path: Path) -> str:
    """Short fingerprint ``sha256:<32 hex>`` of a public key file, to show which key verified a bundle.

    Raises:
        UsageError: The file does not exist.
        VerificationError: It is not an Ed25519 PEM public key.
    """
    return _fingerprint_of(_load_public(public_key_path))


def sign_file(manifest_path: Path, private_key_path: Path) -> Path:
    """Sign ``manifest_path`` and write ``<manifest>.sig`` beside it (replacing an old signature).

    Args:
        manifest_path: The file to sign, normally a bundle's ``manifest.json``.
        private_key_path: PEM Ed25519 private key.

    Returns:
        The signature file path.

    Raises:
        UsageError: The key is missing, not Ed25519, encrypted, or the manifest does not exist.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    from edgepack.atomic import atomic_write_text

    manifest_path = Path(manifest_path)
    key = _load_private(private_key_path)
    if not manifest_path.is_file():
        raise UsageError(f"{manifest_path} does not exist.", hint="Sign a bundle's manifest.json.")
    signature = key.sign(manifest_path.read_bytes())
    out = signature_path(manifest_path)
    atomic_write_text(out, base64.b64encode(signature).decode("ascii") + "\n")
    return out


def _read_signature(sig_path: Path) -> bytes:
    sig_path = Path(sig_path)
    if not sig_path.is_file():
        raise VerificationError(f"signature {sig_path} is missing.", hint="Sign the bundle with --sign-key.")
    text = sig_path.read_bytes()[: _MAX_SIG_FILE + 1]
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"{sig_path} is not a base64 signature.", hint="Re-sign the bundle.") from exc
    if len(text) > _MAX_SIG_FILE or len(signature) != _SIG_LEN:
        raise VerificationError(
            f"{sig_path} is not an Ed25519 signature (expected {_SIG_LEN} bytes).", hint="Re-sign the bundle."
        )
    return signature


def verify_signature(manifest_path: Path, sig_path: Path, public_key_path: Path) -> str:
    """Check that ``sig_path`` is a valid signature of ``manifest_path`` by the key at ``public_key_path``.

    Args:
        manifest_path: The signed file.
        sig_path: Its ``.sig`` file (base64 of the raw 64-byte signature).
        public_key_path: PEM Ed25519 public key.

    Returns:
        The fingerprint of the key that verified it.

    Raises:
        VerificationError: Signature missing, malformed, or not made by this key
            over these bytes; or the public key is not an Ed25519 PEM key.
        UsageError: The public key file does not exist.
        MissingDependencyError: ``cryptography`` is not installed.
    """
    key = _load_public(public_key_path)
    from cryptography.exceptions import InvalidSignature

    signature = _read_signature(sig_path)
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise VerificationError(f"{manifest_path} is missing.", hint="Rebuild or re-download the bundle.")
    try:
        key.verify(signature, manifest_path.read_bytes())
    except InvalidSignature as exc:
        raise VerificationError(
            f"signature {Path(sig_path).name} does not match {manifest_path.name} for key "
            f"{_fingerprint_of(key)} ({public_key_path}): the manifest was changed after signing, "
            "or it was signed with another key.",
            hint="Re-download the bundle, or check that you have the signer's public key.",
        ) from exc
    return _fingerprint_of(key)
