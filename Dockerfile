# timemachine demo image.
#
#   CPU (default):  docker build -t timemachine .
#   CUDA:           docker build --target cuda -t timemachine:cuda .
#   run:            docker run -p 8501:8501 -v timemachine-data:/data timemachine
#   scale out:      docker compose up --scale worker=4   (Redis, the UI and queue workers; see docker-compose.yml)
#
# Weights, age vectors and the projection cache live in the /data volume (TIMEMACHINE_HOME); the first
# projection downloads the model and VGG16 there.  The AFHQ models are NVIDIA's, under the NVIDIA Source Code
# License-NC (non-commercial use only).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

# --------------------------------------------------------------------------------------------------------
# CPU image: slim Python, PyTorch's CPU wheels.
FROM ${PYTHON_IMAGE} AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIMEMACHINE_HOME=/data \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# Same pins as .ci/run (tests/test_docker.py checks they agree), from the CPU-only index.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY timemachine ./timemachine
COPY stylegan_ops ./stylegan_ops
COPY ui ./ui
# The project itself; its dependencies carry the version ranges of pyproject.toml, tested by CI.
# hadolint ignore=DL3013
RUN pip install '.[ui,heic,queue]'

RUN useradd --create-home --uid 1000 timemachine \
    && mkdir -p /data \
    && chown timemachine:timemachine /data
USER 1000
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["timemachine", "ui", "--host", "0.0.0.0", "--port", "8501"]

# --------------------------------------------------------------------------------------------------------
# CUDA image: the CUDA ops (bias_act, upfirdn2d) are compiled at build time for the common GPU
# architectures; the devel base keeps nvcc so that PyTorch's JIT loader can confirm the build is current.
FROM ${CUDA_IMAGE} AS cuda

ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIMEMACHINE_HOME=/data \
    STYLEGAN_OPS_BUILD_DIR=/opt/stylegan_ops \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python from the base image's distribution, which pins its own package versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# Same pins as .ci/run (tests/test_docker.py checks they agree): the CUDA 13 build.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY timemachine ./timemachine
COPY stylegan_ops ./stylegan_ops
COPY ui ./ui
# The project itself (see the CPU stage), then compile and load the CUDA ops; doctor exits 1 if that fails.
# hadolint ignore=DL3013
RUN pip install '.[ui,heic,queue]' \
    && timemachine doctor --build-ops

# The same uid as the CPU image, so that both can share one /data volume (Ubuntu's base image already has
# a user 'ubuntu' with uid 1000: it goes).
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 timemachine \
    && mkdir -p /data \
    && chown -R timemachine:timemachine /data /opt/stylegan_ops
USER 1000
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["timemachine", "ui", "--host", "0.0.0.0", "--port", "8501"]

# The default target is the CPU image.
FROM cpu
