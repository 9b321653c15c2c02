# syntax=docker/dockerfile:1
# edgepack device image for a real NVIDIA Jetson (JetPack 6, L4T r36, TensorRT 10): it builds the
# bundle's TensorRT engine with build_engine.sh (trtexec), then runs run.py, whose "tensorrt" runtime
# is ONNX Runtime's TensorRT provider. It needs the Jetson's GPU, so it runs ON the Jetson, with the
# NVIDIA container runtime; it cannot be emulated on another machine. Nothing model-specific is copied
# in: the bundle is mounted read-only at /bundle (it is copied to a scratch folder, where the engine is
# built) and outputs go to a mounted /out.
#
#   docker build -t edgepack/jetson -f docker/jetson.Dockerfile docker
#   docker run --rm --runtime nvidia -v "$PWD/bundle:/bundle:ro" -v "$PWD/out:/out" edgepack/jetson \
#       --output /out/y.npz --report /out/stats.json
#
# L4T_IMAGE must match the Jetson's L4T release (`cat /etc/nv_tegra_release`): r36.4.0 is JetPack 6.1,
# the release the jetson-orin-trt profile names. ORT_INDEX is NVIDIA's Jetson AI Lab package index of
# CUDA 12.6 (JetPack 6) builds of onnxruntime-gpu; PyPI's onnxruntime-gpu has no Jetson (aarch64) wheel.
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
FROM ${L4T_IMAGE}

ARG ORT_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG ORT_VERSION=1.23.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/usr/src/tensorrt/bin:${PATH}

# DL3008 (unpinned apt versions) is ignored: the L4T base image pins the Ubuntu 22.04 release, and
# Ubuntu replaces a package's version with each update, so an exact pin stops resolving.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 22.04's Python is 3.10: numpy 1.26 is the newest numpy for it that every onnxruntime-gpu takes.
RUN pip3 install --no-cache-dir --only-binary=:all: --extra-index-url "${ORT_INDEX}" \
        numpy==1.26.4 \
        "onnxruntime-gpu==${ORT_VERSION}"

COPY --chmod=755 <<'SCRIPT' /usr/local/bin/edgepack-run-jetson
#!/bin/sh
# Build the TensorRT engine in a writable copy of the read-only bundle, then run its run.py there.
set -eu
work="$(mktemp -d)"
cp -R /bundle/. "$work/"
if [ -f "$work/build_engine.sh" ]; then
    sh "$work/build_engine.sh" >&2
fi
cd "$work"
exec python3 "$work/run.py" "$@"
SCRIPT

WORKDIR /out
ENTRYPOINT ["/usr/local/bin/edgepack-run-jetson"]
CMD ["--help"]
