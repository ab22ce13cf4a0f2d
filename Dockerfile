# API and worker images of htl-miner. Build one with --target api or --target worker
# (docker-compose.yml does both). Each installs its lock file (exact versions, hashes checked) in a
# layer of its own before the source is copied, so a code change reinstalls nothing:
#   api     requirements/api.txt: the API alone, no torch (it never imports it)
#   worker  requirements/runtime.txt: what `pip install .` needs, torch included
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HTL_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 htl \
 && mkdir -p /data && chown htl /data
WORKDIR /srv/htl

FROM base AS source
COPY pyproject.toml README.md ./
COPY contract contract
COPY ml ml
COPY app app
COPY worker worker
COPY migrations migrations
COPY client client

FROM base AS api
COPY requirements/api.txt requirements/api.txt
RUN pip install --require-hashes -r requirements/api.txt
COPY --from=source /srv/htl /srv/htl
# no `pip check` here: it would name torch and the other worker-only dependencies, left out on purpose
RUN pip install --no-deps .
USER htl
VOLUME ["/data"]
EXPOSE 8000
# liveness only: /readyz also wants a live worker, which is no reason to restart the API
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["htl", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY --from=source /srv/htl /srv/htl
RUN pip install --no-deps . && pip check
USER htl
VOLUME ["/data"]
# one worker per container: the container's hostname makes the name unique
ENV HTL_WORKER_NAME=htl@%h
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
  CMD celery -A worker.celery_app inspect ping --timeout 10 --destination "htl@$(hostname)" || exit 1
CMD ["htl", "worker"]
