# syntax=docker/dockerfile:1
# Two targets:
#   docker build --target serve -t gaussian-vae-serve .   onnxruntime-gpu service, no torch
#   docker build --target train -t gaussian-vae-train .   PyTorch (CUDA build) + vae-train
#
# The serve base must match what the pinned onnxruntime-gpu was built against: onnxruntime-gpu 1.31 wheels on
# PyPI need CUDA 13.x and cuDNN 9.x (its CUDA provider says "Require cuDNN 9.* and CUDA 13.*" when they are
# missing), hence the CUDA 13.0 + cuDNN runtime image. Change ORT_VERSION and CUDA_IMAGE together.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG ORT_VERSION=1.31.1

# ---- source: only what the package needs to install -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY vae_tables ./vae_tables
COPY runtime ./runtime
COPY gaussian_vae ./gaussian_vae
COPY training ./training
COPY service ./service

# ---- serve: CUDA + cuDNN runtime, the `serve` extra only ---------------------------------------------------
FROM ${CUDA_IMAGE} AS serve
ARG ORT_VERSION
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
COPY --from=source /src /src
# Non-editable install of the serve extra: fastapi, uvicorn, onnxruntime-gpu ... and no torch.
RUN pip install --no-cache-dir "/src[serve]" "onnxruntime-gpu==${ORT_VERSION}" \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
 && rm -rf /src
RUN useradd --create-home --uid 10001 vae && mkdir -p /models && chown vae /models
USER vae
# Bundles are read from the volume mounted here (written by the train target or copied in).
VOLUME ["/models"]
# The port: VAE_PORT, else PORT (KServe and Knative set it), else 8000; so neither is fixed here.
ENV VAE_MODEL_REPOSITORY=/models VAE_HOST=0.0.0.0 VAE_WORKERS=0 VAE_DEVICE=auto
EXPOSE 8000 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('VAE_PORT') or os.environ.get('PORT') or '8000'; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
CMD ["vae-serve"]

# ---- train: PyTorch with CUDA (PyPI's default Linux wheel bundles CUDA) + the `train` extra -----------------
FROM ${PYTHON_IMAGE} AS train
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
COPY --from=source /src /src
RUN pip install --no-cache-dir "/src[train,parquet]" && rm -rf /src
RUN useradd --create-home --uid 10001 vae && mkdir -p /models /data && chown vae /models /data
USER vae
WORKDIR /data
VOLUME ["/models"]
ENTRYPOINT ["vae-train", "--out", "/models"]
CMD ["--data", "builtin:digits", "--name", "digits"]
