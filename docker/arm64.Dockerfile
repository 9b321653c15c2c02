# edgepack device image: 64-bit ARM Linux boards (Raspberry Pi 4/5 on a 64-bit OS, Android-class CPUs)
# with LiteRT and ONNX Runtime. Built for another architecture it also serves x86_64 profiles of those
# runtimes. Nothing model-specific is copied in: the bundle is mounted read-only at /bundle and outputs
# go to a mounted /out.
#
#   docker build --platform linux/arm64 -t edgepack/arm64 -f docker/arm64.Dockerfile docker
#   docker run --rm --platform linux/arm64 -v "$PWD/bundle:/bundle:ro" -v "$PWD/out:/out" edgepack/arm64 \
#       python3 /bundle/run.py --output /out/y.npz --report /out/stats.json
#
# The pins are the ones edgepack's emulated (qemu-user) check installs for the rpi*-arm64 profiles.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir --only-binary=:all: \
        numpy==2.4.6 \
        onnxruntime==1.32.0 \
        ai-edge-litert==2.3.0 \
    && python3 -c "import numpy, onnxruntime, ai_edge_litert.interpreter"

WORKDIR /out
CMD ["python3", "/bundle/run.py", "--help"]
