#!/usr/bin/env python3
"""Install a bundle from a signed edgepack release on the device, refusing tampered or older releases.

    python3 install.py RELEASE_DIR --dest /opt/models/digits --pubkey /etc/edgepack/key.pub [--target T] [--force]

RELEASE_DIR holds ``release.json``, ``release.json.sig`` and the ``<target>.tar.gz`` archives (as written by
``edgepack release``). In this order, before anything is written under ``--dest``: the index's Ed25519
signature is checked with the device's key (``--pubkey`` or ``$EDGEPACK_PUBKEY``), then the archive's
size and sha256 against the index, then the version against the one installed (lower: refused unless
``--force``), then the installed runtime against the release's minimum. Only then is the archive unpacked,
into a temporary folder under ``--dest``; the unpacked bundle is checked against its manifest and the
index's ``manifest_sha256``, renamed into place (``DEST/v<version>-<digest>``), the installed version is
recorded atomically (``DEST/installed.json``: write, fsync, rename), and ``DEST/current`` is switched to it
with one rename. Run the model with ``python3 DEST/current/run.py``.

Exit codes: 0 installed; 1 failed (I/O); 2 bad arguments; 6 ``cryptography`` is missing; 11 the index,
the archive or the unpacked bundle does not match; 14 the index is unsigned or not signed by the key;
16 the release is older than the installed one (rollback); 17 the runtime is missing or older than the
release needs. A refused install leaves ``--dest`` as it was. Standard library only, plus ``cryptography``
for the signature (pip ``cryptography``; Debian's ``python3-cryptography`` on 32-bit armv7 boards).
"""

import os  # os and sys are loaded at start-up: the only imports made before the guard below
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
    del sys.path[0]  # a file planted beside this script (json.py, numpy.py) must never be imported

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402

INDEX = "release.json"
RECORD = "installed.json"
CURRENT = "current"
EXIT_IO, EXIT_USAGE, EXIT_ROLLBACK, EXIT_RUNTIME = 1, 2, 16, 17
MAX_UNPACKED = 8 << 30
# Runtime name in the manifest -> the distributions that provide it, as importlib.metadata names them.
RUNTIME_DISTS = {
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "tflite-runtime": ("tflite-runtime", "ai-edge-litert"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt",),
    "openvino": ("openvino",),
}


def _verifier():
    sys.dont_write_bytecode = True
    import importlib.machinery
    import types

    loader = importlib.machinery.SourceFileLoader("edgepack_verify", os.path.join(HERE, "edgepack_verify.py"))
    module = types.ModuleType(loader.name)
    loader.exec_module(module)
    return module


class Refusal(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data):
    """Write ``data`` to ``path``: a temporary file beside it, fsync, rename, fsync the folder."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _as_version(text):
    """``"2.14.0rc1"`` -> ``(2, 14, 0)``: the leading dotted numbers, enough to compare release versions."""
    match = re.match(r"\d+(?:\.\d+)*", str(text).strip())
    return tuple(int(n) for n in match.group(0).split(".")) if match else (0,)


def check_index(ev, release, key):
    """The verified index (signature first, then its shape); raises Refusal."""
    path = os.path.join(release, INDEX) if os.path.isdir(release) else release
    index, raw, _ = ev.load_json(path, INDEX)
    fp = ev.check_signature(raw, path + ".sig", key, INDEX)
    ok = index.get("release_format") == 1 and isinstance(index.get("targets"), dict)
    if not ok or not isinstance(index.get("version"), int) or isinstance(index.get("version"), bool):
        raise Refusal(ev.EXIT_INTEGRITY, f"{INDEX} is not an edgepack release index (format 1)")
    return index, os.path.dirname(os.path.abspath(path)), fp


def pick(ev, index, target):
    targets = index["targets"]
    if target is None and len(targets) == 1:
        target = next(iter(targets))
    if target not in targets:
        raise Refusal(EXIT_USAGE, f"choose --target among {', '.join(sorted(targets))}")
    entry = targets[target]
    name = entry.get("archive")
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise Refusal(ev.EXIT_INTEGRITY, f"{INDEX} names no plain archive file for {target}")
    if not isinstance(entry.get("version"), int) or not isinstance(entry.get("size"), int):
        raise Refusal(ev.EXIT_INTEGRITY, f"{INDEX} has no version or size for {target}")
    return target, entry


def check_archive(ev, folder, entry):
    """The archive's size and sha256 against the index, before it is opened."""
    path = os.path.join(folder, entry["archive"])
    try:
        size = os.path.getsize(path)
        digest = ev.sha256_file(path) if size == entry["size"] else None
    except OSError:
        raise Refusal(ev.EXIT_INTEGRITY, f"{entry['archive']} is missing or unreadable") from None
    if size != entry["size"] or digest != entry.get("sha256"):
        raise Refusal(ev.EXIT_INTEGRITY, f"{entry['archive']} does not match the size and sha256 in {INDEX}")
    return path


def read_record(dest):
    path = os.path.join(dest, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            record = json.load(fh)
        return record if isinstance(record.get("version"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def check_version(dest, entry, force):
    record = read_record(dest)
    if os.path.exists(os.path.join(dest, RECORD)) and record is None and not force:
        raise Refusal(EXIT_ROLLBACK, f"{RECORD} in {dest} is unreadable, so a rollback cannot be ruled out (--force)")
    if record is not None and entry["version"] < record["version"] and not force:
        raise Refusal(
            EXIT_ROLLBACK,
            f"release version {entry['version']} is older than the installed version {record['version']} (rollback)",
        )
    return record


def check_runtime(entry, force):
    """The device's runtime distribution is at least the release's minimum (found via importlib.metadata)."""
    from importlib import metadata

    runtime, wanted = (entry.get("runtime") or {}).get("name"), entry.get("min_runtime_version")
    dists = RUNTIME_DISTS.get(str(runtime), ())
    found = None
    for dist in dists:
        try:
            found = (dist, metadata.version(dist))
            break
        except metadata.PackageNotFoundError:
            continue
    if force or not dists or runtime == "tensorrt":  # TensorRT comes with JetPack, not as a distribution
        return found
    if found is None:
        raise Refusal(EXIT_RUNTIME, f"runtime {runtime} is not installed ({' or '.join(dists)}); see requirements.txt")
    if wanted and _as_version(found[1]) < _as_version(wanted):
        raise Refusal(EXIT_RUNTIME, f"{found[0]} {found[1]} is older than the release needs ({wanted})")
    return found


def unpack(ev, archive, work):
    """Unpack plain files and folders of the archive's single top folder into ``work``; returns that folder."""
    total, top = 0, None
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = member.name.split("/")
            bad = member.name.startswith("/") or "\\" in member.name or any(p in ("", ".", "..") for p in parts)
            if bad or not (member.isfile() or member.isdir()) or (top not in (None, parts[0])):
                raise Refusal(ev.EXIT_INTEGRITY, f"archive member {member.name!r} is not a plain file of the bundle")
            top, total = parts[0], total + member.size
            if total > MAX_UNPACKED:
                raise Refusal(ev.EXIT_INTEGRITY, "the archive unpacks to more than 8 GiB")
            target = os.path.join(work, *parts)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                raise Refusal(ev.EXIT_INTEGRITY, f"archive member {member.name!r} cannot be read")
            with src, open(target, "xb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    if top is None:
        raise Refusal(ev.EXIT_INTEGRITY, "the archive is empty")
    return os.path.join(work, top)


def install(ev, archive, dest, target, entry, fp):
    """Unpack, check, rename into place, record the version, switch ``current``. Returns the bundle folder."""
    work = tempfile.mkdtemp(prefix=".installing-", dir=dest)
    try:
        bundle = unpack(ev, archive, work)
        facts, _ = ev.verify_bundle(bundle)
        if facts["verified"] != "sealed" or facts["manifest_sha256"] != entry.get("manifest_sha256"):
            raise Refusal(ev.EXIT_INTEGRITY, f"the unpacked bundle's manifest is not the one {INDEX} names")
        name = "v{}-{}".format(entry["version"], entry["sha256"][:12])
        final = os.path.join(dest, name)
        if os.path.exists(final):  # the same release again: the fresh copy replaces what may have been altered
            os.rename(final, os.path.join(work, "old"))
        os.rename(bundle, final)
        record = {"target": target, "version": entry["version"], "sha256": entry["sha256"], "path": name, "key": fp}
        write_atomic(os.path.join(dest, RECORD), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        link = os.path.join(dest, f".{CURRENT}.{os.getpid()}.tmp")
        os.symlink(name, link)
        os.replace(link, os.path.join(dest, CURRENT))
        _fsync_dir(dest)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(dest, keep):
    for name in os.listdir(dest):
        path = os.path.join(dest, name)
        if name.startswith("v") and name != keep and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("release", help="folder holding release.json, its .sig and the archives (or release.json)")
    p.add_argument("--dest", required=True, help="install folder; the bundle ends up in DEST/current")
    p.add_argument("--target", help="target to install (needed when the release has several)")
    p.add_argument("--pubkey", help="the device's Ed25519 public key (PEM) [$EDGEPACK_PUBKEY]")
    p.add_argument("--force", action="store_true", help="install even an older release or a missing runtime")
    args = p.parse_args(argv)
    ev = _verifier()
    key = ev.pubkey_from(args.pubkey)
    try:
        if not key:
            raise Refusal(EXIT_USAGE, "no public key: pass --pubkey PATH or set EDGEPACK_PUBKEY")
        index, folder, fp = check_index(ev, args.release, key)
        target, entry = pick(ev, index, args.target)
        archive = check_archive(ev, folder, entry)
        previous = check_version(args.dest, entry, args.force)
        check_runtime(entry, args.force)
        os.makedirs(args.dest, exist_ok=True)
        final = install(ev, archive, args.dest, target, entry, fp)
    except (Refusal, ev.Refused) as exc:
        print(f"install.py: refused: {exc}; nothing was installed.", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"install.py: failed: {exc}; {args.dest} keeps the previous install.", file=sys.stderr)
        return EXIT_IO
    _prune(args.dest, os.path.basename(final))
    was = f" (was {previous['version']})" if previous else ""
    forced = " --force" if args.force else ""
    print(f"install.py: installed {target} version {entry['version']}{was}{forced} in {final}, key {fp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
