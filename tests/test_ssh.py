"""The ssh backend against a real OpenSSH server that the test starts on loopback (127.0.0.1 only).

sshd is the system's ``/usr/sbin/sshd`` (``apt-get install openssh-server``) or, without it, Debian's
openssh-server fetched rootlessly (``apt-get download`` + ``dpkg-deb -x``) into pytest's cache. As
root, sshd needs its privilege-separation user ``sshd`` and ``/run/sshd``: the folder is created if
missing, and a missing user is supplied to sshd alone through a private mount namespace (``unshare``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgepack.emulator import LocalRunner
from edgepack.emulator.ssh import SshRunner, parse_ssh_url
from edgepack.errors import DeviceCheckError, UsageError

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "edgepack" / "templates" / "run.py"
SSHD_DEBS = ("openssh-server", "openssh-sftp-server", "libwrap0")  # libwrap0: sshd links libwrap.so.0
INSTALL = "apt-get install openssh-server"
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Sshd:
    url: str
    identity: Path
    known_hosts: Path
    log: Path

    def runner(self, **options) -> SshRunner:
        options.setdefault("python", sys.executable)  # the device's Python: this venv's, with onnxruntime
        return SshRunner(
            self.url,
            identity_file=self.identity,
            known_hosts=self.known_hosts,
            config_file="none",
            options=("StrictHostKeyChecking=yes",),
            timeout_s=120,
            copy_timeout_s=60,
            **options,
        )


# --------------------------------------------------------------------------- the server


def _run(cmd: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def _fetched_sshd(cache: Path) -> Path:
    """Debian's openssh-server unpacked under ``cache`` (fetched once); skips when apt cannot fetch it."""
    root = cache / "root"
    if (root / "usr" / "sbin" / "sshd").is_file():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip(f"no /usr/sbin/sshd and no apt-get/dpkg-deb to fetch it: {INSTALL}")
    debs = cache / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    proc = _run(["apt-get", "download", *SSHD_DEBS], cwd=debs)
    if proc.returncode != 0:
        pytest.skip(f"no /usr/sbin/sshd and `apt-get download` failed ({proc.stderr.strip()[-200:]}): {INSTALL}")
    staging = cache / "root.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(staging)]).check_returncode()
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    shutil.rmtree(debs)
    return root


def _sshd_install(cache: Path) -> tuple[Path, Path, dict[str, str]]:
    """(sshd, sftp-server, extra environment) of the system's sshd, else of a fetched one."""
    system = Path("/usr/sbin/sshd")
    if system.is_file():
        return system, Path("/usr/lib/openssh/sftp-server"), {}
    root = _fetched_sshd(cache)
    libs = [str(p) for p in (*root.glob("usr/lib/*-linux-gnu"), *root.glob("lib/*-linux-gnu")) if p.is_dir()]
    env = {"LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)}
    return root / "usr" / "sbin" / "sshd", root / "usr" / "lib" / "openssh" / "sftp-server", env


def _privsep_wrapper(work: Path) -> list[str]:
    """As root, sshd needs /run/sshd and the user ``sshd``; give it the user in a private mount namespace."""
    if os.geteuid() != 0:
        return []
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    try:
        pwd.getpwnam("sshd")
        return []
    except KeyError:
        pass
    if shutil.which("unshare") is None:
        pytest.skip(f"running as root without the 'sshd' user (and no unshare to supply it): {INSTALL}")
    passwd = work / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + "sshd:x:65534:65534:sshd privsep:/run/sshd:/usr/sbin/nologin\n")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{passwd}" /etc/passwd && exec "$@"',
        "sh",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> Path:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepack-test", "-f", str(path)], 30).check_returncode()
    return path


def _wait_for_banner(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "error while loading shared libraries" in text or "Privilege separation" in text:
                pytest.skip(f"the test sshd cannot start here ({text.strip()[-200:]}): {INSTALL}")
            pytest.fail(f"sshd exited with {proc.returncode}: {text[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _cache_dir(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    """pytest's cache (the fetched sshd is kept between runs), else a temporary folder."""
    try:
        return config.cache.mkdir("edgepack-sshd")
    except (AttributeError, OSError):  # -p no:cacheprovider, or a read-only checkout
        return factory.mktemp("edgepack-sshd")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config):
    """A real sshd on 127.0.0.1:<free port>, accepting one fresh ed25519 key for the current user."""
    if shutil.which("ssh") is None or shutil.which("scp") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client is missing: apt-get install openssh-client")
    binary, sftp_server, env = _sshd_install(_cache_dir(pytestconfig, tmp_path_factory))
    work = tmp_path_factory.mktemp("sshd")
    host_key, client_key = _keygen(work / "host_key"), _keygen(work / "client_key")
    shutil.copyfile(work / "client_key.pub", work / "authorized_keys")
    user = pwd.getpwuid(os.getuid()).pw_name
    port = _free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {user}",
                f"Subsystem sftp {sftp_server}",
                f"SetEnv PATH={os.environ.get('PATH', '/usr/bin:/bin')}",  # the "device" finds the same rsync
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    known_hosts = work / "known_hosts"
    key_type, key = (work / "host_key.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    log = work / "sshd.log"
    cmd = [*_privsep_wrapper(work), str(binary), "-D", "-e", "-f", str(config)]
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **env}
        )
    try:
        _wait_for_banner(proc, port, log)
        yield Sshd(f"ssh://{user}@127.0.0.1:{port}", client_key, known_hosts, log)
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- a tiny bundle


@pytest.fixture
def tiny_bundle(tiny_onnx_path: Path, tmp_path: Path) -> Path:
    """A bundle folder: the tiny ONNX CNN, the real run.py template and its manifest (onnxruntime)."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "bundle"
    folder.mkdir()
    shutil.copyfile(tiny_onnx_path, folder / "model.onnx")
    shutil.copyfile(RUN_PY, folder / "run.py")
    manifest = {
        "model": {"file": "model.onnx", "format": "onnx"},
        "runtime": {"name": "onnxruntime"},
        "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, 4], "dtype": "float32"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _args(io: Path, feeds: Path, runs: int = 3) -> list[str]:
    io.mkdir(parents=True, exist_ok=True)
    return [
        "--input",
        str(feeds),
        "--output",
        str(io / "out.npz"),
        "--report",
        str(io / "stats.json"),
        "--runs",
        str(runs),
        "--warmup",
        "1",
        "--threads",
        "1",
    ]


def _remote_dirs() -> set[Path]:
    return set(Path(os.environ.get("TMPDIR", "/tmp")).glob("edgepack.*")) | set(Path("/tmp").glob("edgepack.*"))


# --------------------------------------------------------------------------- tests


TRANSFERS = ["scp", pytest.param("rsync", marks=pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync"))]


@pytest.mark.ssh
@pytest.mark.parametrize("transfer", TRANSFERS)
def test_bundle_runs_over_ssh_like_on_the_host(sshd: Sshd, tiny_bundle: Path, tmp_path: Path, transfer: str):
    feeds = tmp_path / "in.npz"
    np.savez(feeds, input=np.random.default_rng(3).random((1, 3, 16, 16), dtype=np.float32))
    before = _remote_dirs()

    runner = sshd.runner(transfer=transfer)
    result = runner.run(tiny_bundle, _args(tmp_path / "ssh", feeds), env={"OMP_NUM_THREADS": "1"})
    assert result.ok, result.stderr[-2000:] + sshd.log.read_text()[-2000:]
    host = LocalRunner().run(tiny_bundle, _args(tmp_path / "host", feeds), env={})
    assert host.ok, host.stderr[-2000:]

    with np.load(tmp_path / "ssh" / "out.npz") as got, np.load(tmp_path / "host" / "out.npz") as want:
        assert got.files == ["logits"]
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-6, atol=1e-7)
    report = json.loads((tmp_path / "ssh" / "stats.json").read_text())
    assert report["latency_label"].startswith("MEASURED on the device")
    assert len(report["latency_ms"]) == 3 and report["runtime"] == "onnxruntime"
    assert result.runner == "ssh" and "MEASURED" in result.note and result.instructions is None
    assert _remote_dirs() == before, "the remote temp folder was not removed"


@pytest.mark.ssh
def test_failing_run_py_reports_its_exit_status_and_cleans_up(sshd: Sshd, tiny_bundle: Path, tmp_path: Path):
    feeds = tmp_path / "bad.npy"
    np.save(feeds, np.zeros((2, 2), np.float32))  # the model wants (1, 3, 16, 16)
    before = _remote_dirs()
    result = sshd.runner().run(tiny_bundle, _args(tmp_path / "ssh", feeds), env={})
    assert result.returncode != 0 and "has shape [2, 2]" in result.stderr
    assert not (tmp_path / "ssh" / "out.npz").exists()
    assert _remote_dirs() == before


@pytest.mark.ssh
def test_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    runner = SshRunner(
        sshd.url,
        identity_file=sshd.identity,
        known_hosts=empty,
        config_file="none",
        options=("StrictHostKeyChecking=yes",),
    )
    with pytest.raises(DeviceCheckError, match="ssh -o BatchMode=yes"):
        runner.run(tmp_path, [], env={})


def test_closed_port_is_a_one_line_device_check_error(tmp_path: Path):
    runner = SshRunner(f"ssh://nobody@127.0.0.1:{_free_port()}", config_file="none", connect_timeout_s=5)
    with pytest.raises(DeviceCheckError) as info:
        runner.run(tmp_path, [], env={})
    assert "\n" not in info.value.one_line() and "logging in failed" in str(info.value)


@pytest.mark.parametrize(
    ("url", "user", "host", "port"),
    [
        ("ssh://pi@raspberrypi.local", "pi", "raspberrypi.local", None),
        ("ssh://pi@192.168.1.7:2222", "pi", "192.168.1.7", 2222),
        ("ssh://jetson", None, "jetson", None),
        ("ssh://root@[::1]:22/", "root", "::1", 22),
    ],
)
def test_parse_ssh_url(url: str, user: str | None, host: str, port: int | None):
    target = parse_ssh_url(url)
    assert (target.user, target.host, target.port) == (user, host, port)
    assert parse_ssh_url(str(target)) == target


@pytest.mark.parametrize(
    "url",
    [
        "pi@raspberrypi",
        "http://pi@host",
        "ssh://",
        "ssh://pi:secret@host",
        "ssh://pi@host:99999",
        "ssh://pi@host:0",
        "ssh://pi@host:port",
        "ssh://pi@host/home/pi",
        "ssh://pi@host?x=1",
        "ssh://-oProxyCommand=x@host",
        "ssh://pi@-oProxyCommand=x",
    ],
)
def test_bad_ssh_url_is_a_usage_error(url: str):
    with pytest.raises(UsageError, match="ssh://"):
        parse_ssh_url(url)
