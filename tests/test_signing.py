"""Ed25519 keys and detached manifest signatures."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgepack.errors import OutputExistsError, UsageError, VerificationError
from edgepack.signing import fingerprint, keygen, sign_file, signature_path, verify_signature

pytest.importorskip("cryptography")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    keygen(private, public)
    return private, public


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text('{\n  "files": {},\n  "manifest_sha256": "00"\n}\n')
    return path


def test_keygen_modes_and_formats(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert fingerprint(public).startswith("sha256:") and len(fingerprint(public)) == 7 + 32


def test_keygen_never_overwrites(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    before = private.read_bytes()
    with pytest.raises(OutputExistsError, match="never overwrites"):
        keygen(private, tmp_path / "new.pub")
    with pytest.raises(OutputExistsError):
        keygen(tmp_path / "new.pem", public)
    assert private.read_bytes() == before
    assert not (tmp_path / "new.pub").exists() and not (tmp_path / "new.pem").exists()


def test_round_trip_and_format(keys: tuple[Path, Path], manifest: Path) -> None:
    private, public = keys
    sig = sign_file(manifest, private)
    assert sig == signature_path(manifest) and sig.name == "manifest.json.sig"
    text = sig.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert len(base64.b64decode(text.strip(), validate=True)) == 64
    assert verify_signature(manifest, sig, public) == fingerprint(public)


def test_tampered_manifest_fails(keys: tuple[Path, Path], manifest: Path) -> None:
    private, public = keys
    sig = sign_file(manifest, private)
    manifest.write_bytes(manifest.read_bytes().replace(b"00", b"01"))
    with pytest.raises(VerificationError, match="does not match"):
        verify_signature(manifest, sig, public)


def test_wrong_key_fails(keys: tuple[Path, Path], manifest: Path, tmp_path: Path) -> None:
    private, _ = keys
    keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    sig = sign_file(manifest, private)
    with pytest.raises(VerificationError, match="signed with another key"):
        verify_signature(manifest, sig, tmp_path / "other.pub")


@pytest.mark.parametrize("content", [b"not base64 !!!\n", base64.b64encode(b"\0" * 63) + b"\n", b"", b"A" * 10_000])
def test_malformed_signature_fails(keys: tuple[Path, Path], manifest: Path, content: bytes) -> None:
    _, public = keys
    sig = signature_path(manifest)
    sig.write_bytes(content)
    with pytest.raises(VerificationError):
        verify_signature(manifest, sig, public)


def test_bad_or_missing_keys(keys: tuple[Path, Path], manifest: Path, tmp_path: Path) -> None:
    private, public = keys
    sig = sign_file(manifest, private)
    junk = tmp_path / "junk.pub"
    junk.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(VerificationError, match="not a PEM public key"):
        verify_signature(manifest, sig, junk)
    with pytest.raises(VerificationError, match="not an Ed25519 public key"):
        verify_signature(manifest, sig, _ec_public_key(tmp_path))
    with pytest.raises(UsageError, match="does not exist"):
        verify_signature(manifest, sig, tmp_path / "missing.pub")
    with pytest.raises(UsageError, match="does not exist"):
        sign_file(manifest, tmp_path / "missing.pem")
    with pytest.raises(UsageError, match="not a PEM private key"):
        sign_file(manifest, public)
    with pytest.raises(VerificationError, match="missing"):
        verify_signature(manifest, tmp_path / "nope.sig", public)


def _ec_public_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "ec.pub"
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_signature_verifies_with_openssl(keys: tuple[Path, Path], manifest: Path, tmp_path: Path) -> None:
    """The documented format: base64 of the raw Ed25519 signature over manifest.json's bytes."""
    private, public = keys
    sig = sign_file(manifest, private)
    raw = tmp_path / "sig.bin"
    raw.write_bytes(base64.b64decode(sig.read_text()))
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin"]
    proc = subprocess.run([*cmd, "-in", str(manifest), "-sigfile", str(raw)], capture_output=True, text=True)
    if "rawin" in proc.stderr and proc.returncode != 0:
        pytest.skip("this openssl has no -rawin (needs OpenSSL 3)")
    assert proc.returncode == 0, proc.stderr
