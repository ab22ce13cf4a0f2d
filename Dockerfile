# API and worker images of htl-miner. Build one with --target api or --target worker
# (docker-compose.yml does both). Both hold the same package; only the command differs.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HTL_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/htl
COPY pyproject.toml README.md ./
COPY contract contract
COPY ml ml
COPY app app
COPY worker worker
COPY migrations migrations
COPY client client
RUN pip install . \
 && useradd --create-home --uid 1000 htl \
 && mkdir -p /data && chown htl /data
USER htl
VOLUME ["/data"]

FROM base AS api
EXPOSE 8000
# liveness only: /readyz also wants a live worker, which is no reason to restart the API
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["htl", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# one worker per container: the container's hostname makes the name unique
ENV HTL_WORKER_NAME=htl@%h
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
  CMD celery -A worker.celery_app inspect ping --timeout 10 --destination "htl@$(hostname)" || exit 1
CMD ["htl", "worker"]
