"""Writing a target's bundle: model files, manifest, on-device runner, requirements, archive.

The bundle folder is built in a staging folder beside ``OUT/<target>`` and
renamed into place only when complete (see :mod:`edgepack.atomic`); the
``<target>.tar.gz`` beside it is byte-identical for identical inputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from edgepack.artifact import Artifact
from edgepack.errors import ProfileError
from edgepack.profiles import Arch, Profile, Runtime
from edgepack.version import __version__

BUNDLE_FORMAT = 1

# Runtime -> the device's pip requirement lines (numpy comes with each).
_REQUIREMENTS: dict[Runtime, tuple[str, ...]] = {
    Runtime.LITERT: ("ai-edge-litert{version}", "numpy"),
    Runtime.TFLITE_RUNTIME: ("tflite-runtime{version}", "numpy<2"),
    Runtime.ONNXRUNTIME: ("onnxruntime{version}", "numpy"),
    Runtime.OPENVINO: ("openvino{version}", "numpy"),
    Runtime.TENSORRT: ("numpy",),
}


# Files every bundle ships beside its model: the runner, its verifier and the installer (edgepack/templates).
DEVICE_SCRIPTS = ("run.py", "edgepack_verify.py", "install.py")


def requirements(profile: Profile) -> list[str]:
    """The device's pip requirements for the profile's runtime, and what signature checks need there."""
    lines = [line.format(version=profile.runtime_version) for line in _REQUIREMENTS[profile.runtime]]
    if profile.runtime is Runtime.TENSORRT:
        lines.insert(0, f"# TensorRT {runtime_version(profile)} and trtexec come with JetPack; run build_engine.sh")
        lines.append("# optional, to use run.py: onnxruntime-gpu for JetPack (NVIDIA's Jetson wheels)")
    lines.append(_signature_requirement(profile))
    return lines


def _signature_requirement(profile: Profile) -> str:
    """The comment naming what checks Ed25519 signatures on the device (run.py --pubkey, install.py)."""
    head = "# to check signatures on the device (run.py --pubkey, install.py): "
    if profile.arch is Arch.ARMV7L:  # PyPI has no 32-bit ARM wheel of cryptography; Debian packages one
        return head + "apt install python3-cryptography (PyPI has no armv7 wheel)"
    return head + "pip install cryptography"


def build_engine_script(
    profile: Profile, model_file: str, *, qdq_flags: Sequence[str] = (), shape_flags: Sequence[str] = ()
) -> str:
    """A ``build_engine.sh`` that runs trtexec on the device with flags for the profile's precision.

    ``shape_flags`` are trtexec's shape-range flags (:func:`edgepack.shapes.trtexec_flags`, shell-quoted) for
    inputs that stay dynamic. ``qdq_flags`` are the flags an explicitly quantized (Q/DQ) model needs, as its
    quantizer recorded them (``meta["tensorrt_flags"]``, see :func:`edgepack.quantize.onnx_qdq.tensorrt_flags`).
    """
    if profile.tensorrt is None:
        raise ProfileError(f"profile {profile.name} has no [tensorrt] table; it cannot build a TensorRT engine.")
    flags = [
        f"--onnx={model_file}",
        "--saveEngine=model.engine",
        f"--memPoolSize=workspace:{profile.tensorrt.workspace_mib}M",
    ]
    flags += list(shape_flags)  # --minShapes/--optShapes/--maxShapes: one optimisation profile for dynamic dims
    if qdq_flags:  # explicit Q/DQ: TensorRT takes the scales from the graph; no calibration cache
        flags += list(qdq_flags)
    elif profile.precision.value == "fp16":
        flags.append("--fp16")
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Build the TensorRT engine for {profile.name} on the Jetson itself",
            f"# (JetPack {profile.tensorrt.jetpack}, TensorRT {profile.tensorrt.tensorrt_version}); engines are"
            " not portable across GPUs or TensorRT versions.",
            "set -eu",
            'cd "$(dirname "$0")"',
            'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
            '"$TRTEXEC" ' + " ".join(flags) + ' "$@"',
            "",
        ]
    )


def stage_files(staging: Path, *, profile: Profile, artifact: Artifact, extra_files: Mapping[str, str]) -> None:
    """Copy the model and write the runner, requirements and extra files into ``staging``."""
    staging.mkdir(parents=True, exist_ok=True)
    for file in artifact.files:
        shutil.copyfile(file, staging / Path(file).name)
    templates = resources.files("edgepack.templates")
    for name in DEVICE_SCRIPTS:
        (staging / name).write_text(templates.joinpath(name).read_text())
    (staging / "requirements.txt").write_text("\n".join(requirements(profile)) + "\n")
    for name, text in extra_files.items():
        (staging / name).write_text(text)
        if name.endswith(".sh"):
            (staging / name).chmod(0o755)


def runtime_version(profile: Profile) -> str:
    """The runtime version the bundle is built for: TensorRT's from the JetPack, else the profile's range."""
    if profile.tensorrt is not None:
        return f"{profile.tensorrt.tensorrt_version} (JetPack {profile.tensorrt.jetpack})"
    return profile.runtime_version


def base_manifest(*, profile: Profile, source: Artifact, artifact: Artifact) -> dict[str, Any]:
    """The manifest's fixed part; steps, validation and checks are added by the pipeline."""
    named: dict[str, str] = dict(artifact.meta.get("source_names") or {})  # the converter's pairing of names
    return {
        "bundle_format": BUNDLE_FORMAT,
        "edgepack_version": __version__,
        "target": {"name": profile.name, "description": profile.description, "profile_sha256": profile.sha256},
        "profile": {k: v for k, v in profile.to_dict().items() if k != "source"},
        "source": {"file": source.path.name, "format": source.format.value, "sha256": source.sha256},
        "model": {
            "file": Path(artifact.path).name,
            "files": [Path(f).name for f in artifact.files],
            "format": artifact.format.value,
            "precision": artifact.meta.get("precision", profile.precision.value),
            "size_bytes": artifact.size_bytes(),
        },
        "runtime": {
            "name": profile.runtime.value,
            "version": runtime_version(profile),
            "arch": profile.arch.value,
            "delegate": profile.delegate,
        },
        # Names are the model file's own tensor names; source_name is the source model's (matched by position).
        "inputs": [
            {**i.to_dict(), "source_name": named.get(i.name, s.name)} for i, s in zip(artifact.inputs, source.inputs)
        ],
        "outputs": [
            {**o.to_dict(), "source_name": named.get(o.name, s.name)} for o, s in zip(artifact.outputs, source.outputs)
        ],
        "input_shape_origin": dict(source.meta.get("shape_origin", {})),
        "requirements": requirements(profile),
    }
