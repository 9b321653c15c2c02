"""Lazy imports of optional heavy frameworks, with the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgepack.errors import MissingDependencyError

# module -> extra that provides it
EXTRAS: dict[str, str] = {
    "tensorflow": "tflite",
    "keras": "tflite",
    "tf_keras": "tflite",
    "tf2onnx": "onnx",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxsim": "onnx",
    "onnxslim": "onnx",
    "onnx2tf": "tflite",
    "openvino": "openvino",
    "nncf": "openvino",
    "ai_edge_litert": "tflite",
    "matplotlib": "report",
    "cryptography": "sign",
    "PIL": "images",
    "torch": "torch",
    "onnxscript": "torch",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise MissingDependencyError(
            f"{module} is not installed.",
            hint=f"Install it with: pip install 'edgepack[{extra}]'",
        ) from exc


def version_of(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
