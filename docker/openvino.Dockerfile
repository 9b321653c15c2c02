# edgepack device image: x86_64 Intel CPUs with the OpenVINO runtime. It runs natively on an x86_64
# host: the container gives a clean, pinned runtime, not another CPU. Nothing model-specific is copied
# in: the bundle is mounted read-only at /bundle and outputs go to a mounted /out.
#
#   docker build --platform linux/amd64 -t edgepack/openvino -f docker/openvino.Dockerfile docker
#   docker run --rm --platform linux/amd64 -v "$PWD/bundle:/bundle:ro" -v "$PWD/out:/out" edgepack/openvino \
#       python3 /bundle/run.py --precision f32 --output /out/y.npz --report /out/stats.json
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENVINO_TELEMETRY_OPT_OUT=1

RUN pip install --no-cache-dir --only-binary=:all: \
        numpy==2.4.6 \
        openvino==2026.4.1 \
    && python3 -c "import numpy, openvino"

WORKDIR /out
CMD ["python3", "/bundle/run.py", "--help"]
