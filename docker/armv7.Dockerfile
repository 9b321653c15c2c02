# edgepack device image: 32-bit ARM (armhf, ARMv7) boards such as a Raspberry Pi 2/3/4 on a 32-bit OS,
# with tflite-runtime. PyPI has no armv7l numpy (nor onnxruntime) wheels, so numpy comes from Debian
# (bookworm: 1.24.2, which tflite-runtime 2.14 needs: it fails with numpy 2) and tflite-runtime from
# its PyPI cp311 armv7l wheel. Nothing model-specific is copied in: the bundle is mounted read-only at
# /bundle and outputs go to a mounted /out.
#
#   docker build --platform linux/arm/v7 -t edgepack/armv7 -f docker/armv7.Dockerfile docker
#   docker run --rm --platform linux/arm/v7 -v "$PWD/bundle:/bundle:ro" -v "$PWD/out:/out" edgepack/armv7 \
#       python3 /bundle/run.py --output /out/y.npz --report /out/stats.json
FROM debian:bookworm-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# DL3008 (unpinned apt versions) is ignored: Debian stable replaces a package's version at each point
# release and security update, so an exact pin stops resolving; the bookworm tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-numpy python3-pip \
    && rm -rf /var/lib/apt/lists/*

# Debian marks its Python as externally managed (PEP 668); --no-deps keeps Debian's numpy.
RUN pip install --no-cache-dir --no-deps --only-binary=:all: --break-system-packages tflite-runtime==2.14.0 \
    && python3 -c "import numpy, tflite_runtime.interpreter"

WORKDIR /out
CMD ["python3", "/bundle/run.py", "--help"]
