"""create_app(): settings, database, queue and artifact store on app.state; routers; limits; error
handlers that answer {"detail": ..., "code": ...} on every status, 500 and 503 included
(app.api.error_handlers)."""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from swagger_ui_bundle import swagger_ui_path

from app import web
from app.api import annotation, datasets, health, images, jobs, sweeps
from app.api.error_handlers import add_error_handlers
from app.api.schemas import error_responses
from app.core.headers import SecurityHeaders, check_metrics_access
from app.core.limits import RateLimiter, RequestLimits, UploadSlots
from app.core.observability import JobCollector, RequestMetrics
from app.core.queue import make_celery
from app.core.settings import Settings, get_settings
from app.core.storage import make_store
from app.db.session import make_engine, make_sessionmaker
from app.db.status import make_status_reader

log = logging.getLogger("htl.api")

ROUTERS = (
    health.router,
    datasets.router,
    jobs.spec_router,
    jobs.router,
    images.router,
    annotation.router,
    sweeps.router,
    web.router,
)


def remove_abandoned_uploads(uploads: Path, *, older_than_s: float) -> list[Path]:
    """Staging folders left by an API process killed mid-upload: nothing in them changed for
    older_than_s (a live upload keeps writing its archive; another API process's is left alone)."""
    removed = []
    cutoff = time.time() - older_than_s
    for folder in uploads.iterdir() if uploads.is_dir() else []:
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        if max(newest, folder.stat().st_mtime) < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for folder in remove_abandoned_uploads(settings.uploads, older_than_s=settings.abandoned_upload_after_s):
            log.warning("removed an abandoned upload's staging folder %s", folder)
        app.state.store.prepare()
        yield
        app.state.engine.dispose()
        await app.state.status_reader.close()

    # /docs serves Swagger UI from files in the package: nothing from a CDN, which many hosts cannot reach
    app = FastAPI(
        title="htl-miner",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Find the images a localization model finds hard to learn, by pruning.",
    )
    _add_docs_and_assets(app)
    _add_resources(app, settings)
    app.add_middleware(RequestLimits, max_bytes=settings.max_json_bytes, upload_paths=("/v1/datasets",))
    app.add_middleware(SecurityHeaders)
    _add_metrics(app, settings)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _add_docs_and_assets(app: FastAPI) -> None:
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    app.mount("/static", web.Assets(directory=str(web.ASSETS)), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="htl-miner API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _add_resources(app: FastAPI, settings: Settings) -> None:
    """What the routes use, on app.state: the database (engine, sessions, the status poll's pool), the
    queue, the artifact store and the limiters."""
    app.state.settings = settings
    url = settings.resolved_database_url
    size, overflow, timeout = settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_s
    app.state.engine = make_engine(url, pool_size=size, max_overflow=overflow, pool_timeout_s=timeout)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.status_reader = make_status_reader(url, pool_size=size, max_overflow=overflow, pool_timeout_s=timeout)
    app.state.celery = make_celery(settings)
    app.state.store = make_store(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit)
    app.state.failed_auth = RateLimiter(
        settings.failed_auth_limit,
        "requests a minute with a missing or invalid key from this address (HTL_FAILED_AUTH_LIMIT)",
    )
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)


def _add_metrics(app: FastAPI, settings: Settings) -> None:
    registry = CollectorRegistry()
    registry.register(JobCollector(app.state.sessionmaker, settings))
    app.add_middleware(RequestMetrics, registry=registry)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={
            **error_responses(401, 403),
            200: {
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            },
        },
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics: requests by route and status with latencies, jobs by status, queue depth,
        live workers, durations of succeeded jobs. They are every tenant's, so only for the operator:
        with HTL_METRICS_TOKEN as a bearer token, or (no token set) from this host."""
        check_metrics_access(request, settings.metrics_token)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
