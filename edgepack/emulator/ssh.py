"""ssh backend: run a bundle's ``run.py`` on the real device, reached with the system ``ssh``.

The bundle and run.py's inputs are copied (``rsync`` when both ends have it, else ``scp``) into a
fresh ``mktemp -d`` folder on the device; run.py runs there with the device's Python; its outputs
and report are copied back and the folder is removed. Logins are non-interactive
(``BatchMode=yes``): use a key the device accepts and a host it already knows. The latencies are
measured on the device itself.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgepack.emulator.base import RUN_SCRIPT, RunResult
from edgepack.emulator.docker import stage_io
from edgepack.errors import DeviceCheckError, UsageError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # a user or a host name (never an option: no leading -)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]*/edgepack\.[A-Za-z0-9]+$")  # what our mktemp template gives
_MKTEMP = (
    'd=$(mktemp -d "${TMPDIR:-/tmp}/edgepack.XXXXXXXX") && printf "%s\\n" "$d"'
    " && if command -v rsync >/dev/null 2>&1; then echo rsync; else echo scp; fi"
)
_SETUP_TIMEOUT_S = 60.0
_LOGIN_HINT = "Check that `ssh -o BatchMode=yes {dest} true` works: a key the device accepts, its host key known."


@dataclass(frozen=True)
class SshTarget:
    """Where to log in: ``ssh://[user@]host[:port]``."""

    user: str | None
    host: str
    port: int | None

    @property
    def destination(self) -> str:
        """``user@host`` as ssh takes it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def copy_destination(self) -> str:
        """``user@host`` as scp/rsync take it before ``:path`` (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.copy_destination.rpartition('@')[2]}{port}"


def parse_ssh_url(url: str) -> SshTarget:
    """Parse and check ``ssh://[user@]host[:port]``.

    Raises:
        UsageError: not an ssh URL, or it has a password, a path, a query or a bad port/user/host.
    """
    hint = "Give the device as ssh://user@host or ssh://user@host:port (key-based login)."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad ssh URL {url!r}: {exc}.", hint=hint) from exc
    if parts.scheme != "ssh":
        raise UsageError(f"bad ssh URL {url!r}: it must start with ssh://.", hint=hint)
    if parts.password is not None:
        raise UsageError(f"bad ssh URL {url!r}: passwords are not supported.", hint="Log in with an ssh key.")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"bad ssh URL {url!r}: it must not have a path, query or fragment.", hint=hint)
    host, user = parts.hostname or "", parts.username
    if not (_NAME.match(host) or _is_ipv6(host)):
        raise UsageError(f"bad ssh URL {url!r}: {host or 'no'} host name.", hint=hint)
    if user is not None and not _NAME.match(user):
        raise UsageError(f"bad ssh URL {url!r}: bad user name {user!r}.", hint=hint)
    if port == 0:
        raise UsageError(f"bad ssh URL {url!r}: port 0.", hint=hint)
    return SshTarget(user, host, port)


def _is_ipv6(host: str) -> bool:
    return ":" in host and re.fullmatch(r"[0-9A-Fa-f:.]+", host) is not None


class SshRunner:
    """Runs a bundle's run.py on a device over ssh; latencies are measured on the device.

    Args:
        url: ``ssh://[user@]host[:port]``.
        identity_file: Private key to log in with (``ssh -i``; only that key is offered).
        known_hosts: A known_hosts file to check the device's host key against.
        config_file: An ssh_config file for ssh/scp (``-F``; ``"none"`` reads none).
        options: More ``-o Key=Value`` options for ssh, scp and rsync.
        python: The device's Python (a venv's python, say); ``python3`` from its PATH by default.
        connect_timeout_s: ssh's ``ConnectTimeout``.
        timeout_s: Stop a run after this long (on the device too, where ``timeout`` exists).
        copy_timeout_s: Stop a copy after this long.
        transfer: ``"auto"`` (rsync when both ends have it), ``"scp"`` or ``"rsync"``.
    """

    name = "ssh"

    def __init__(
        self,
        url: str,
        *,
        identity_file: str | Path | None = None,
        known_hosts: str | Path | None = None,
        config_file: str | Path | None = None,
        options: Sequence[str] = (),
        python: str = "python3",
        connect_timeout_s: int = 10,
        timeout_s: float = 600,
        copy_timeout_s: float = 600,
        transfer: str = "auto",
    ) -> None:
        if transfer not in ("auto", "scp", "rsync"):
            raise UsageError(f"unknown transfer {transfer!r}.", hint="Use auto, scp or rsync.")
        self.target = parse_ssh_url(url)
        self.python, self.transfer = python, transfer
        self.timeout_s, self.copy_timeout_s = timeout_s, copy_timeout_s
        self._options = _ssh_options(identity_file, known_hosts, config_file, options, connect_timeout_s)

    @classmethod
    def for_profile(cls, profile: Any, *, url: str, **options: Any) -> SshRunner:
        """The runner for a profile's device at ``url`` (the profile itself changes nothing over ssh)."""
        return cls(url, **options)

    @property
    def latency_label(self) -> str:
        return f"MEASURED on the device ({self.target.host}, over ssh)"

    def run(self, bundle_dir: Path, args: list[str], *, env: dict[str, str]) -> RunResult:
        """Copy the bundle and inputs to the device, run run.py there with ``args``, copy the outputs back.

        Raises:
            DeviceCheckError: the login, a copy or the run failed to complete (not run.py's own exit status).
            UsageError: an environment variable name is not a shell name.
        """
        bad = [key for key in env if not _ENV_KEY.match(key)]
        if bad:
            raise UsageError(f"environment variable names {bad} cannot be passed over ssh.")
        remote, tool = self._make_remote_dir()
        try:
            with tempfile.TemporaryDirectory(prefix="edgepack-ssh-") as tmp:
                staged = stage_io(args, f"{remote}/io")
                up = Path(tmp) / "up"
                (up / "io").mkdir(parents=True)
                (up / "bundle").symlink_to(Path(bundle_dir).resolve(), target_is_directory=True)
                staged.upload(up / "io")
                self._copy_up(up, remote, tool)
                rc, out, err, wall = self._run_remote(remote, staged.args, env)
                if rc == 0:
                    back = Path(tmp) / "back"
                    self._copy_down(f"{remote}/io", back, tool)
                    staged.download(back, label=self.latency_label)
        finally:
            self._ssh(f"rm -rf -- {shlex.quote(remote)}", _SETUP_TIMEOUT_S, check=False)
        note = "not counted over ssh; " + self.latency_label
        return RunResult(rc, out, err, wall, note=note, runner=self.name)

    # ------------------------------------------------------------------ steps

    def _make_remote_dir(self) -> tuple[str, str]:
        out = self._ssh(_MKTEMP, _SETUP_TIMEOUT_S).split()
        if len(out) != 2 or not _REMOTE_DIR.match(out[0]):
            raise DeviceCheckError(f"{self.target}: mktemp -d gave no usable folder ({' '.join(out)[:80]!r}).")
        remote, remote_tool = out
        if self.transfer != "auto":
            return remote, self.transfer
        return remote, "rsync" if remote_tool == "rsync" and shutil.which("rsync") else "scp"

    def _run_remote(self, remote: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
        assignments = [f"{key}={shlex.quote(value)}" for key, value in {"PYTHONHASHSEED": "0", **env}.items()]
        argv = shlex.join([self.python, RUN_SCRIPT, *args])
        limit = max(1, int(self.timeout_s))
        command = (
            f"cd {shlex.quote(remote)}/bundle && export {' '.join(assignments)} && "
            f"if command -v timeout >/dev/null 2>&1; then exec timeout {limit} {argv}; else exec {argv}; fi"
        )
        start = time.perf_counter()
        proc = self._exec(
            ["ssh", *self._options, *self._port("-p"), "--", self.target.destination, command],
            self.timeout_s + 30,
            "the run",
        )
        wall = time.perf_counter() - start
        if proc.returncode == 255 and not proc.stdout:
            raise DeviceCheckError(f"ssh to {self.target} failed: {_tail(proc.stderr)}", hint=self._hint())
        if proc.returncode == 124 and not proc.stderr.strip():  # the device's `timeout` stopped it
            raise DeviceCheckError(f"{self.target}: the run took over {limit} s on the device and was stopped.")
        return proc.returncode, proc.stdout, proc.stderr, wall

    def _copy_up(self, up: Path, remote: str, tool: str) -> None:
        dest = f"{self.target.copy_destination}:{remote}/"
        if tool == "rsync":
            cmd = ["rsync", "-rLp", "-e", shlex.join(["ssh", *self._options, *self._port("-p")]), f"{up}/", dest]
        else:
            cmd = ["scp", "-q", "-r", *self._options, *self._port("-P"), str(up / "bundle"), str(up / "io"), dest]
        self._checked(cmd, "copying the bundle to the device")

    def _copy_down(self, remote_io: str, back: Path, tool: str) -> None:
        source = f"{self.target.copy_destination}:{remote_io}"
        if tool == "rsync":
            back.mkdir()
            cmd = [
                "rsync",
                "-r",
                "-e",
                shlex.join(["ssh", *self._options, *self._port("-p")]),
                f"{source}/",
                f"{back}/",
            ]
        else:
            cmd = ["scp", "-q", "-r", *self._options, *self._port("-P"), source, str(back)]
        self._checked(cmd, "copying the outputs back")

    # ------------------------------------------------------------------ plumbing

    def _ssh(self, command: str, timeout: float, *, check: bool = True) -> str:
        cmd = ["ssh", *self._options, *self._port("-p"), "--", self.target.destination, command]
        if not check:
            # Cleanup is best effort: the folder is in the device's temp dir.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
            return ""
        return self._checked(cmd, "logging in", timeout=timeout)

    def _checked(self, cmd: list[str], what: str, *, timeout: float | None = None) -> str:
        proc = self._exec(cmd, timeout or self.copy_timeout_s, what)
        if proc.returncode != 0:
            raise DeviceCheckError(f"{self.target}: {what} failed: {_tail(proc.stderr)}", hint=self._hint())
        return proc.stdout

    def _exec(self, cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise DeviceCheckError(
                f"{cmd[0]} is not installed on this host.",
                hint="Install the OpenSSH client (apt-get install openssh-client).",
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceCheckError(f"{self.target}: {what} took over {timeout:.0f} s and was stopped.") from exc

    def _port(self, flag: str) -> list[str]:
        return [flag, str(self.target.port)] if self.target.port else []

    def _hint(self) -> str:
        port = f" -p {self.target.port}" if self.target.port else ""
        return _LOGIN_HINT.format(dest=f"{self.target.destination}{port}")


def _ssh_options(
    identity_file: str | Path | None,
    known_hosts: str | Path | None,
    config_file: str | Path | None,
    options: Sequence[str],
    connect_timeout_s: int,
) -> list[str]:
    """Options that ssh, scp and rsync's ssh all take."""
    opts = ["-F", str(config_file)] if config_file is not None else []
    opts += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout_s)}"]
    opts += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
    if identity_file is not None:
        opts += ["-i", str(identity_file), "-o", "IdentitiesOnly=yes"]
    if known_hosts is not None:
        opts += ["-o", f'UserKnownHostsFile="{known_hosts}"']
    for option in options:
        if option.startswith("-"):
            raise UsageError(f"ssh option {option!r} must be given as Key=Value (it is passed with -o).")
        opts += ["-o", option]
    return opts


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else "no output"
