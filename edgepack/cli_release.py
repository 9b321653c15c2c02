"""``edgepack release``: a signed release index over the bundle archives of a run (see :mod:`edgepack.release`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgepack.cli_options import JsonOpt, out


def release(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder of a run, holding <target>.tar.gz.")],
    version: Annotated[
        int, typer.Option("--version", min=1, help="Release version; devices refuse to install a lower one.")
    ],
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Ed25519 private key (edgepack keygen) to sign the index with.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing release.json.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write OUT/release.json over OUT's bundle archives (digest, size, version, minimum runtime), signed with --sign.

    Copy OUT's release.json, release.json.sig, install.py, edgepack_verify.py and the archive to the device,
    then: python3 install.py RELEASE_DIR --dest DIR --pubkey KEY.pub
    """
    from edgepack.release import write_release

    written = write_release(out_dir, version=version, sign_key=sign, force=force)
    if as_json:
        facts = {
            "index": str(written.index_path),
            "signature": str(written.signature_path) if written.signature_path else None,
            "key": written.key_fingerprint,
            **written.index,
        }
        out.print_json(json.dumps(facts))
        return
    targets = ", ".join(f"{t} ({e['size']:,} bytes)" for t, e in sorted(written.index["targets"].items()))
    signed = f"signed by {written.key_fingerprint}" if written.key_fingerprint else "[yellow]unsigned[/yellow]"
    out.print(f"release {version} of {targets}: {written.index_path}, {signed}", highlight=False)
    if written.signature_path is None:
        out.print("install.py on the device refuses an unsigned release: sign it with --sign KEY", highlight=False)
