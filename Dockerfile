# syntax=docker/dockerfile:1
# The semirec image (CPU): ingest worker (default command) and the lag exporter.
#   docker compose build            # see docker-compose.yml and docs/operations.md
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
# CPU-only torch: the default Linux wheel from PyPI pulls gigabytes of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir semirec && touch semirec/__init__.py \
    && pip install . \
    && pip uninstall -y semirec \
    && rm -rf semirec
COPY semirec ./semirec
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home semirec

USER 10001
# Every worker serves /metrics, /healthz and /readyz here (SEMIREC_METRICS_PORT).
ENV SEMIREC_METRICS_PORT=9400
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['SEMIREC_METRICS_PORT'] + '/healthz', timeout=4)"]
ENTRYPOINT ["semirec"]
CMD ["worker"]
