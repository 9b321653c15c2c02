"""Bundles that defend themselves on the device: run.py verifies before it loads, install.py refuses
tampered and replayed releases. The device's own scripts run under QEMU user-mode on arm64 and armv7.

One signed bundle per target (the shipped digits example for rpi4-arm64 and rpi-armv7) is packaged once
per module; the guests and a ``cryptography`` overlay per guest (PyPI's aarch64 wheel; Debian's armhf
``python3-cryptography``, as requirements.txt tells armv7 owners) are built into the edgepack cache on
first use. Warm, the emulated tests take about a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.emulator import cache, debian, guest, qemu
from edgepack.errors import OutputExistsError, UsageError, VerificationError
from edgepack.integrity import render_manifest, write_manifest
from edgepack.profiles import load_profile

TEMPLATES = Path(__file__).resolve().parent.parent / "edgepack" / "templates"
needs_apt = pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="the qemu backend fetches Debian packages with apt-get and dpkg-deb",
)
emulated = [pytest.mark.emulation, needs_apt]
TARGETS = {"arm64": "rpi4-arm64", "armv7": "rpi-armv7"}
INTEGRITY, SIGNATURE, NO_CRYPTO, ROLLBACK = 11, 14, 6, 16


# --------------------------------------------------------------------------- guests and the bundles


def crypto_overlay(profile, root: Path) -> Path:
    """A folder to put on the guest's PYTHONPATH that provides ``cryptography`` (built once, cached).

    arm64: PyPI's manylinux aarch64 wheels (``pip install cryptography``). armhf: PyPI has no wheel, so
    Debian's ``python3-cryptography`` and ``python3-cffi-backend`` (``apt install python3-cryptography``).
    """
    em = profile.emulation
    folder = root / "test-overlays" / f"cryptography-{em.debian_arch}-{em.debian_release}-py{em.python}"
    if (folder / "done").is_file():
        return folder / "site"
    tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if em.debian_arch == "arm64":
        wheels = guest.download_wheels(
            ["cryptography"], tmp / "wheels", arch="arm64", release=em.debian_release, python=em.python, no_deps=False
        )
        for wheel in wheels:
            guest.unzip_wheel(wheel, tmp / "site")
    else:
        apt = debian.AptState(root / "apt" / f"{em.debian_release}-{em.debian_arch}", arch=em.debian_arch,
                              release=em.debian_release)
        apt.update()
        debs = apt.download(["python3-cryptography"], tmp / "debs", what="cryptography for the guest")
        wanted = [d for d in debs if d.name.startswith(("python3-cryptography_", "python3-cffi-backend_"))]
        debian.extract(wanted, tmp / "deb")
        shutil.move(tmp / "deb" / "usr" / "lib" / "python3" / "dist-packages", tmp / "site")
    (tmp / "done").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    return folder / "site"


class Device:
    """An emulated board: its guest, and a way to run a script there with or without ``cryptography``."""

    def __init__(self, name: str, root: Path) -> None:
        self.profile = load_profile(TARGETS[name])
        self.env = qemu.setup(self.profile, root=root)
        self.overlay = crypto_overlay(self.profile, root)
        em = self.profile.emulation
        self.site = guest.cpu_view(self.env.path, em.qemu_arch, em.qemu_cpu) / guest.SITE.lstrip("/")

    def run(self, script: Path, args: list[str], *, crypto: bool = True, env: dict | None = None):
        path = f"{self.site}:{self.overlay}" if crypto else str(self.site)
        return qemu.run(self.env, self.profile, script, args, extra_env={"PYTHONPATH": path, **(env or {})})


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    pytest.importorskip("cryptography")
    from edgepack.signing import keygen

    folder = tmp_path_factory.mktemp("keys")
    for name in ("ours", "theirs"):
        keygen(folder / f"{name}.pem", folder / f"{name}.pub")
    return {name: (folder / f"{name}.pem", folder / f"{name}.pub") for name in ("ours", "theirs")}


@pytest.fixture(scope="module")
def packaged(digits_keras, keys, tmp_path_factory) -> Path:
    """OUT of one signed run: rpi4-arm64 and rpi-armv7 bundles and archives of the digits example."""
    pytest.importorskip("tensorflow")
    from edgepack import api

    out = tmp_path_factory.mktemp("run") / "out"
    api.package(digits_keras, targets=list(TARGETS.values()), out=out, sign_key=keys["ours"][0], device_check=False)
    return out


@pytest.fixture(scope="module")
def devices() -> dict[str, Device]:
    root = cache.cache_root()
    return {name: Device(name, root) for name in TARGETS}


def _copy(bundle: Path, dest: Path) -> Path:
    return Path(shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("report")))


def _listing(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links by target, files by digest): what an install may not change."""
    if not folder.exists():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# --------------------------------------------------------------------------- run.py on the device


def _run_py(device: Device, bundle: Path, io: Path, *extra: str, crypto: bool = True):
    io.mkdir(parents=True, exist_ok=True)
    args = ["--output", str(io / "y.npz"), "--report", str(io / "stats.json"), *extra]
    return device.run(bundle / "run.py", args, crypto=crypto)


def _refused(result, io: Path, code: int, words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("run.py: refused to run:") and words in lines[0], lines
    assert not (io / "y.npz").exists() and not (io / "stats.json").exists()  # nothing ran


@pytest.mark.parametrize("board", list(TARGETS))
@pytest.mark.emulation
@needs_apt
def test_run_py_verifies_the_signed_bundle_then_runs(board, devices, packaged, keys, tmp_path):
    device, bundle = devices[board], packaged / TARGETS[board]
    result = _run_py(device, bundle, tmp_path, "--pubkey", str(keys["ours"][1]))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "stats.json").read_text())
    facts = report["verification"]
    assert facts["verified"] == "sealed" and facts["signature"] == "verified"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert facts["files"] == len(manifest["files"]) and facts["manifest_sha256"] == manifest["manifest_sha256"]
    assert report["machine"] == ("aarch64" if board == "arm64" else "armv7l") and (tmp_path / "y.npz").is_file()


def _tamper_model(bundle: Path, keys) -> None:
    model = bundle / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, as on a failing SD card
    model.write_bytes(bytes(data))


def _tamper_manifest(bundle: Path, keys) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "swapped"  # well-formed, same layout: only the seal can tell
    (bundle / "manifest.json").write_bytes(render_manifest(manifest))


def _resign_with_another_key(bundle: Path, keys) -> None:
    from edgepack.signing import sign_file

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["validation"] = {"note": "re-sealed by someone else"}
    write_manifest(bundle, manifest)  # a consistent, sealed manifest: only the signature can tell
    sign_file(bundle / "manifest.json", keys["theirs"][0])


# case -> (tampering, whether the device holds our key, exit code, words of the refusal). Without a key the
# seal and the digests catch a changed file; with one, the signature is checked first.
CASES = {
    "tampered model": (_tamper_model, False, INTEGRITY, "model.tflite does not match its sha256"),
    "tampered manifest": (_tamper_manifest, False, INTEGRITY, "manifest.json does not match its manifest_sha256"),
    "tampered manifest, key held": (_tamper_manifest, True, SIGNATURE, "manifest.json is not signed by key sha256:"),
    "signed by another key": (_resign_with_another_key, True, SIGNATURE, "manifest.json is not signed by key sha256:"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("board", list(TARGETS))
@pytest.mark.emulation
@needs_apt
def test_run_py_refuses_a_tampered_bundle_on_the_device(board, case, devices, packaged, keys, tmp_path):
    tamper, with_key, code, words = CASES[case]
    bundle = _copy(packaged / TARGETS[board], tmp_path / "bundle")
    tamper(bundle, keys)
    key = ["--pubkey", str(keys["ours"][1])] if with_key else []
    _refused(_run_py(devices[board], bundle, tmp_path / "io", *key), tmp_path / "io", code, words)


@pytest.mark.emulation
@needs_apt
def test_without_cryptography_a_requested_key_is_refused_by_name(devices, packaged, keys, tmp_path):
    """armv7 without Debian's python3-cryptography: the key is never silently ignored."""
    result = _run_py(devices["armv7"], packaged / "rpi-armv7", tmp_path, "--pubkey", str(keys["ours"][1]),
                     crypto=False)
    _refused(result, tmp_path, NO_CRYPTO, "python3-cryptography")
    assert "python3-cryptography" in (packaged / "rpi-armv7" / "requirements.txt").read_text()


def test_skip_verify_runs_a_tampered_bundle_and_says_so(packaged, keys, tmp_path):
    pytest.importorskip("ai_edge_litert")
    bundle = _copy(packaged / "rpi4-arm64", tmp_path / "bundle")
    _tamper_manifest(bundle, keys)
    report = tmp_path / "stats.json"
    run = [sys.executable, str(bundle / "run.py"), "--report", str(report)]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == INTEGRITY and not report.exists()
    proc = subprocess.run([*run, "--skip-verify"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--skip-verify: the bundle was NOT verified" in proc.stderr
    assert json.loads(report.read_text())["verification"] == {"verified": "skipped"}


# --------------------------------------------------------------------------- releases and install.py


@pytest.fixture(scope="module")
def releases(packaged, keys, tmp_path_factory) -> dict[str, Path]:
    """Release folders as copied to a device: v1 and v2 signed by us, v3 signed by another key."""
    from edgepack.release import copy_release, write_release

    folders = {}
    for name, version, key in (("v1", 1, "ours"), ("v2", 2, "ours"), ("v3-theirs", 3, "theirs")):
        write_release(packaged, version=version, sign_key=keys[key][0], force=True)
        folders[name] = copy_release(packaged, tmp_path_factory.mktemp(name))
    return folders


def _install(device: Device, release: Path, dest: Path, key: Path, *extra: str):
    return device.run(release / "install.py", [".", "--dest", str(dest), "--pubkey", str(key), *extra])


@pytest.mark.parametrize("board", list(TARGETS))
@pytest.mark.emulation
@needs_apt
def test_install_verifies_refuses_rollback_and_tampering_then_runs(board, devices, releases, keys, tmp_path):
    device, target, pub = devices[board], TARGETS[board], keys["ours"][1]
    dest = tmp_path / "models"
    installed = _install(device, releases["v2"], dest, pub, "--target", target)
    assert installed.returncode == 0, installed.stderr[-2000:]
    record = json.loads((dest / "installed.json").read_text())
    assert record["version"] == 2 and record["target"] == target and (dest / "current").is_symlink()
    before = _listing(dest)

    tampered = Path(shutil.copytree(releases["v2"], tmp_path / "tampered"))
    archive = tampered / f"{target}.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-1] + bytes([archive.read_bytes()[-1] ^ 1]))
    refusals = {
        "replayed v1": (_install(device, releases["v1"], dest, pub, "--target", target), ROLLBACK, "rollback"),
        "tampered archive": (_install(device, tampered, dest, pub, "--target", target), INTEGRITY, "sha256"),
    }
    if board == "arm64":  # the same Python on both boards: arm64 alone also checks the index's key and --force
        other = _install(device, releases["v3-theirs"], dest, pub, "--target", target)
        refusals["other key"] = (other, SIGNATURE, "not signed")
    for name, (result, code, words) in refusals.items():
        assert result.returncode == code and words in result.stderr, (name, result.stderr[-1000:])
        assert result.stderr.startswith("install.py: refused:") and "nothing was installed" in result.stderr
        assert _listing(dest) == before, name  # nothing unpacked, nothing half-installed, the record unchanged

    ran = device.run(dest / "current" / "run.py", ["--report", str(tmp_path / "stats.json"), "--pubkey", str(pub)])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads((tmp_path / "stats.json").read_text())["verification"]["signature"] == "verified"

    if board != "arm64":
        return
    forced = _install(device, releases["v1"], dest, pub, "--target", target, "--force")
    assert forced.returncode == 0 and "--force" in forced.stdout, forced.stderr[-1000:]
    assert json.loads((dest / "installed.json").read_text())["version"] == 1


# --------------------------------------------------------------------------- on the host


def test_the_device_verifier_agrees_with_the_host_byte_for_byte(tmp_path):
    sys.path.insert(0, str(TEMPLATES))
    try:
        import edgepack_verify as ev
    finally:
        sys.path.remove(str(TEMPLATES))
    (tmp_path / "model.tflite").write_bytes(bytes(range(256)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "é.txt").write_text("ünïcode")
    manifest = {"model": {"file": "model.tflite"}, "text": "ü \u2028 \"q\"", "n": [1, 2.5, None, True], "unsealed": []}
    sealed = write_manifest(tmp_path, manifest)
    raw = (tmp_path / "manifest.json").read_bytes()
    assert ev.render(sealed) == raw and ev.seal_of(sealed) == sealed["manifest_sha256"]
    facts, _ = ev.verify_bundle(str(tmp_path))
    assert facts["verified"] == "sealed" and facts["files"] == 2
    (tmp_path / "numpy.py").write_text("raise SystemExit('planted')")
    with pytest.raises(ev.Refused, match="numpy.py is not in the manifest") as info:
        ev.verify_bundle(str(tmp_path))
    assert info.value.code == INTEGRITY


def test_bundles_ship_the_device_scripts_and_say_what_armv7_needs(packaged):
    for target in TARGETS.values():
        bundle = packaged / target
        for name in ("run.py", "edgepack_verify.py", "install.py"):
            assert (bundle / name).read_bytes() == (TEMPLATES / name).read_bytes()
            assert name in json.loads((bundle / "manifest.json").read_text())["files"]
    assert "apt install python3-cryptography" in (packaged / "rpi-armv7" / "requirements.txt").read_text()
    assert "pip install cryptography" in (packaged / "rpi4-arm64" / "requirements.txt").read_text()


def test_a_bare_run_py_runs_unverified_and_a_sealed_bundle_needs_its_verifier(packaged, tmp_path):
    """The harnesses' bare run.py + hand-written manifest runs (and says so); a sealed bundle missing the verifier
    does not."""
    pytest.importorskip("ai_edge_litert")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(packaged / "rpi4-arm64" / "model.tflite", bare)
    shutil.copy(TEMPLATES / "run.py", bare)
    manifest = json.loads((packaged / "rpi4-arm64" / "manifest.json").read_text())
    (bare / "manifest.json").write_text(json.dumps({k: manifest[k] for k in ("model", "runtime", "inputs", "outputs")}))
    proc = subprocess.run([sys.executable, str(bare / "run.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "not sealed" in proc.stderr, proc.stderr[-1000:]

    sealed = _copy(packaged / "rpi4-arm64", tmp_path / "sealed")
    (sealed / "edgepack_verify.py").unlink()
    proc = subprocess.run([sys.executable, str(sealed / "run.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == INTEGRITY and "edgepack_verify.py is missing" in proc.stderr


def test_release_index_is_signed_over_every_archive(packaged, keys, tmp_path):
    from edgepack.release import INDEX, verify_release, write_release
    from edgepack.signing import fingerprint

    out = tmp_path / "out"
    out.mkdir()
    for target in TARGETS.values():
        shutil.copy(packaged / f"{target}.tar.gz", out)
    written = write_release(out, version=7, sign_key=keys["ours"][0])
    index = written.index
    assert written.key_fingerprint == fingerprint(keys["ours"][1])
    assert (out / INDEX).read_bytes() == render_manifest(index) and set(index["targets"]) == set(TARGETS.values())
    entry = index["targets"]["rpi-armv7"]
    assert entry["version"] == 7 and entry["min_runtime_version"] == "2.14" and entry["runtime"]["name"]
    assert entry["size"] == (out / "rpi-armv7.tar.gz").stat().st_size
    assert verify_release(out, keys["ours"][1]) == index
    with pytest.raises(VerificationError):
        verify_release(out, keys["theirs"][1])
    with pytest.raises(OutputExistsError):
        write_release(out, version=8, sign_key=keys["ours"][0])
    with pytest.raises(UsageError):
        write_release(out, version=0, force=True)
    assert (out / "install.py").read_bytes() == (TEMPLATES / "install.py").read_bytes()
    with open(out / "rpi-armv7.tar.gz", "ab") as fh:  # an archive that does not match its index
        fh.write(b"\0")
    with pytest.raises(VerificationError, match="rpi-armv7.tar.gz does not match"):
        verify_release(out, keys["ours"][1])


def test_release_command_writes_a_signed_index(packaged, keys, tmp_path):
    """The ``edgepack release`` command body (cli_release.release), on a Typer app of its own."""
    import typer
    from typer.testing import CliRunner

    from edgepack.cli_release import release

    app = typer.Typer()
    app.command()(release)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(packaged / "rpi4-arm64.tar.gz", out)
    result = CliRunner().invoke(app, [str(out), "--version", "3", "--sign", str(keys["ours"][0]), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["version"] == 3 and facts["key"].startswith("sha256:") and (out / "release.json.sig").is_file()
    assert CliRunner().invoke(app, [str(out), "--version", "0"]).exit_code == 2  # typer's own range check
