"""Bundle verification: digests, extra/missing files, self-digest, layout, signature; errors are collected."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack.archive import write_deterministic_tar
from edgepack.errors import UsageError, VerificationError
from edgepack.integrity import (
    SEAL_KEY,
    VerifyReport,
    canonical_json,
    render_manifest,
    seal_manifest,
    verify_bundle,
    write_manifest,
)

FILES = {
    "model.tflite": bytes(range(256)) + b"\x00weights",
    "run.py": b"import sys\nprint(sys.argv)\n",
    "sub/labels.txt": b"cat\ndog\n",
}


def _bundle(root: Path, *, unsealed: list[str] | None = None) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest: dict[str, Any] = {"model": {"file": "model.tflite"}, "runtime": {"name": "litert"}}
    if unsealed is not None:
        manifest["unsealed"] = unsealed
    write_manifest(root, manifest)
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "bundle")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    from edgepack.signing import keygen

    keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    return tmp_path / "k.pem", tmp_path / "k.pub"


def _problems(bundle: Path, **kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(VerificationError) as info:
        verify_bundle(bundle, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return info.value.problems  # type: ignore[attr-defined]


def test_clean_bundle_verifies(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert isinstance(report, VerifyReport)
    assert (report.files_checked, report.signature, report.archive) == (3, "unsigned", False)
    assert report.total_bytes == sum(len(v) for v in FILES.values())
    assert json.loads(json.dumps(report.to_dict()))["manifest_sha256"] == report.manifest_sha256
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(FILES)


def test_every_single_byte_change_is_detected(bundle: Path) -> None:
    """Flip every byte of every file, manifest included, with a random non-zero mask: always caught."""
    rng = random.Random(7)
    targets = sorted(p for p in bundle.rglob("*") if p.is_file())
    assert bundle / "manifest.json" in targets
    offsets = 0
    for path in targets:
        original = path.read_bytes()
        for offset in range(len(original)):
            changed = bytearray(original)
            changed[offset] ^= rng.randrange(1, 256)
            path.write_bytes(bytes(changed))
            with pytest.raises(VerificationError):
                verify_bundle(bundle)
            offsets += 1
        path.write_bytes(original)
    assert offsets >= 200
    verify_bundle(bundle)


def test_signed_bundle_byte_changes_in_manifest_are_detected(bundle: Path, keys: tuple[Path, Path]) -> None:
    from edgepack.signing import sign_file

    private, public = keys
    sign_file(bundle / "manifest.json", private)
    assert verify_bundle(bundle, public_key=public).signature == "verified"
    assert verify_bundle(bundle).signature == "signed, not checked"
    path = bundle / "manifest.json"
    original = path.read_bytes()
    rng = random.Random(11)
    for offset in rng.sample(range(len(original)), 60):
        changed = bytearray(original)
        changed[offset] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(changed))
        problems = _problems(bundle, public_key=public)
        assert any("signature" in p for p in problems), problems
    path.write_bytes(original)


def test_all_problems_are_collected(bundle: Path) -> None:
    (bundle / "run.py").write_text("tampered")
    (bundle / "sub" / "labels.txt").unlink()
    (bundle / "extra.bin").write_bytes(b"x")
    (bundle / "link").symlink_to("run.py")
    assert _problems(bundle) == (
        "link is a symlink or special file",
        "run.py does not match its sha256",
        "sub/labels.txt is missing",
        "extra.bin is not in the manifest",
    )


def test_many_problems_are_truncated_in_the_message(bundle: Path) -> None:
    for i in range(15):
        (bundle / f"extra{i:02d}").write_text("x")
    with pytest.raises(VerificationError, match=r"15 problem\(s\).*; and 5 more\.") as info:
        verify_bundle(bundle)
    assert len(info.value.problems) == 15  # type: ignore[attr-defined]


def test_edited_manifest_content_breaks_the_seal(bundle: Path) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["runtime"]["name"] = "onnxruntime"
    path.write_bytes(render_manifest(manifest))  # canonical layout, stale seal
    assert _problems(bundle) == ("manifest.json content does not match its manifest_sha256 (edited after sealing)",)


def test_reformatted_manifest_is_refused(bundle: Path) -> None:
    path = bundle / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    assert any("re-formatted" in p for p in _problems(bundle))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "manifest.json is missing"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": 1, "a": 2}', "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_manifests(bundle: Path, content: bytes | None, expected: str) -> None:
    path = bundle / "manifest.json"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    assert any(expected in p for p in _problems(bundle))


def test_bad_files_entries(bundle: Path) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["../escape"] = "0" * 64
    manifest["files"]["run.py"] = "NOT-HEX"
    manifest["files"]["manifest.json"] = "0" * 64
    path.write_bytes(render_manifest(seal_manifest(manifest)))
    problems = _problems(bundle)
    assert "../escape is not a normalised relative path" in problems
    assert "run.py has a digest that is not 64 lowercase hex digits" in problems
    assert any(p.startswith("manifest.json is listed") for p in problems)
    assert "run.py is not in the manifest" not in problems  # named, though badly


def test_signature_rules(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    from edgepack.signing import keygen, sign_file

    private, public = keys
    assert any("not signed" in p for p in _problems(bundle, public_key=public))
    sign_file(bundle / "manifest.json", private)
    keygen(tmp_path / "o.pem", tmp_path / "o.pub")
    assert any("another key" in p for p in _problems(bundle, public_key=tmp_path / "o.pub"))
    with pytest.raises(UsageError, match="does not exist"):
        verify_bundle(bundle, public_key=tmp_path / "missing.pub")
    report = verify_bundle(bundle, public_key=public)
    assert report.key_fingerprint and report.key_fingerprint.startswith("sha256:")


def test_archive_verifies_and_tampered_archive_fails(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    from edgepack.signing import sign_file

    private, public = keys
    sign_file(bundle / "manifest.json", private)
    archive = write_deterministic_tar(bundle, tmp_path / "b.tar.gz", arcname_root="bundle")
    report = verify_bundle(archive, public_key=public)
    assert report.archive and report.signature == "verified" and report.files_checked == 3
    (bundle / "run.py").write_text("evil")
    tampered = write_deterministic_tar(bundle, tmp_path / "t.tar.gz", arcname_root="bundle")
    assert _problems(tampered, public_key=public) == ("run.py does not match its sha256",)


def test_unsealed_folder_is_declared_not_checked(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", unsealed=["report"])
    (root / "report").mkdir()
    (root / "report" / "measurements.json").write_text("{}")
    assert verify_bundle(root).unsealed == ("report",)
    undeclared = _bundle(tmp_path / "c")
    (undeclared / "report").mkdir()
    (undeclared / "report" / "measurements.json").write_text("{}")
    assert _problems(undeclared) == ("report/measurements.json is not in the manifest",)


def test_missing_bundle_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        verify_bundle(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ properties

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_canonical_json_round_trips(value: Any) -> None:
    raw = canonical_json(value)
    assert json.loads(raw) == value
    assert canonical_json(json.loads(raw)) == raw
    assert raw.isascii()


@given(st.dictionaries(st.text(), JSON, max_size=6), st.randoms())
def test_seal_is_order_independent_and_idempotent(manifest: dict[str, Any], rnd: random.Random) -> None:
    sealed = seal_manifest(manifest)
    assert {k: v for k, v in sealed.items() if k != SEAL_KEY} == {k: v for k, v in manifest.items() if k != SEAL_KEY}
    assert seal_manifest(sealed) == sealed
    items = list(manifest.items())
    rnd.shuffle(items)
    assert seal_manifest(dict(items))[SEAL_KEY] == sealed[SEAL_KEY]
    assert json.loads(render_manifest(sealed)) == sealed


FILES_MAPS = st.dictionaries(
    st.sampled_from(["model.tflite", "run.py", "sub/labels.txt", "../x", "/abs", "a\x00b", ""]) | st.text(),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64) | JSON,
    max_size=5,
)
MANIFESTS = JSON | st.fixed_dictionaries({"files": FILES_MAPS}, optional={SEAL_KEY: st.text() | JSON, "unsealed": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MANIFESTS, st.booleans(), st.booleans(), st.binary(max_size=64))
def test_verify_only_raises_verification_error(manifest: Any, seal: bool, raw: bool, junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _bundle(Path(tmp))
        path = root / "manifest.json"
        if raw:
            path.write_bytes(junk)
        elif seal and isinstance(manifest, dict):
            path.write_bytes(render_manifest(seal_manifest(manifest)))
        else:
            path.write_text(json.dumps(manifest))
        try:
            report = verify_bundle(root)
        except VerificationError as exc:
            assert "\n" not in exc.one_line() and exc.problems  # type: ignore[attr-defined]
        else:
            assert report.files_checked == 3  # only a manifest that is right in every way passes


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text().filter(lambda k: k not in ("files", SEAL_KEY, "unsealed")), JSON, max_size=5))
def test_any_sealed_manifest_written_by_write_manifest_verifies(extra: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, data in FILES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        write_manifest(root, extra)
        assert verify_bundle(root).files_checked == 3
