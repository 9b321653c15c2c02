"""The ``edgepack`` commands around bundles: verify, keygen, check, and the emulator sub-app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgepack.cli_options import DataOpt, JsonOpt, err, out


def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or its .tar.gz.")],
    key: Annotated[Path | None, typer.Option("--key", help="Ed25519 public key to check the signature.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every file of a bundle against its manifest (and its signature, with --key)."""
    from edgepack import api

    report = api.verify(bundle, public_key=key)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(
            f"[green]verified[/green] {bundle}: "
            + ", ".join(f"{k}={v}" for k, v in report.to_dict().items() if not isinstance(v, list | dict))
        )


def keygen(
    private: Annotated[Path, typer.Argument(help="Where to write the private key (PEM, mode 600).")],
    public: Annotated[Path, typer.Argument(help="Where to write the public key (PEM).")],
) -> None:
    """Make an Ed25519 key pair for signing bundles."""
    from edgepack.signing import keygen as make_keys

    make_keys(private, public)
    out.print(f"wrote {private} (keep it secret) and {public}")


def check(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or its .tar.gz.")],
    runner: Annotated[
        str | None, typer.Option("--runner", help="qemu (default for ARM), native, docker, or ssh://user@host.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", "-t", help="Check against this profile instead.")] = None,
    data: DataOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a bundle's run.py on its (emulated or real) device and compare its outputs with the host's."""
    from edgepack import api

    with err.status("device check", spinner="dots") as status:
        result = api.check(bundle, runner=runner, target=target, data=data, progress=status.update)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    facts, latency = result.facts, result.measurements.get("latency")
    if not facts.get("ran"):
        out.print(f"not run: {facts.get('reason')}")
        return
    out.print(
        f"[green]outputs agree[/green] on {facts['runner']} ({facts['machine']}, {facts['runtime']} "
        f"{facts['runtime_version']})"
    )
    if latency:
        out.print(f"latency, {latency['label']}: median {latency['median_ms']:.3f} ms over {latency['runs']} runs")
    count = result.measurements.get("instructions", {}).get("per_inference")
    if count:
        out.print(f"guest instructions per inference: {count:,}")
    from edgepack.summary import executed_as

    executed = executed_as(facts.get("delegation"))
    if executed:
        out.print(f"executed as: {executed}", highlight=False)


emulator_app = typer.Typer(help="Manage the cached emulated devices (QEMU guests).", no_args_is_help=True)


@emulator_app.command("setup")
def emulator_setup(target: Annotated[str, typer.Argument(help="Target name or profile .toml.")]) -> None:
    """Build and cache the emulated environment of TARGET (a second setup is a cache hit)."""
    from edgepack import api

    with err.status("setting up", spinner="dots") as status:
        env = api.emulator_setup(target, progress=status.update)
    state = "cache hit" if env.cache_hit else f"built in {env.setup_s:.1f} s"
    out.print(f"{target}: {env.path} ({state})")


@emulator_app.command("list")
def emulator_list(as_json: JsonOpt = False) -> None:
    """List the cached environments."""
    from edgepack import api

    entries = api.emulator_list()
    if as_json:
        out.print_json(json.dumps(entries, default=str))
        return
    users = _env_users()
    for entry in entries:
        name = Path(entry["path"]).name
        targets = ", ".join(users.get(name, [])) or ("tools" if name.startswith("qemu") else "no built-in target")
        out.print(f"{name}  {entry['size_bytes'] / 2**20:.0f} MiB  ({targets})", highlight=False)
    if not entries:
        out.print("no cached environments")


def _env_users() -> dict[str, list[str]]:
    """Cache entry name -> the built-in targets whose emulated device it is."""
    from edgepack.emulator.qemu import env_name
    from edgepack.profiles import EmulationMode, load_all

    users: dict[str, list[str]] = {}
    for profile in load_all():
        if profile.emulation.mode is EmulationMode.QEMU_USER:
            users.setdefault(env_name(profile)[0], []).append(profile.name)
    return users


@emulator_app.command("remove")
def emulator_remove(name: Annotated[str, typer.Argument(help="Target name, or an entry name from `list`.")]) -> None:
    """Remove a cached environment."""
    from edgepack import api
    from edgepack.errors import UsageError

    if not api.emulator_remove(name):
        raise UsageError(f"no cached environment {name!r}.", hint="See `edgepack emulator list`.")
    out.print(f"removed {name}")
