"""create_app(): settings, database, queue and artifact store on app.state; routers; limits; error
handlers that answer {"detail": ..., "code": ...} on every status, 500 and 503 included."""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from app import web
from app.api import annotation, datasets, health, images, jobs, sweeps
from app.api.schemas import error_responses
from app.core.errors import CODES, ApiError, InvalidInput, NotFound
from app.core.headers import SecurityHeaders, check_metrics_access
from app.core.limits import RateLimiter, RequestLimits, UploadSlots
from app.core.observability import JobCollector, RequestMetrics
from app.core.queue import make_celery
from app.core.settings import Settings, get_settings
from app.core.storage import make_store
from app.db.session import make_engine, make_sessionmaker
from app.db.status import make_status_reader
from app.services.gallery import GalleryError, UnknownLayers
from contract.jobspec import SpecError

log = logging.getLogger("htl.api")


def _json_safe(value):
    """Validation errors echo the input: NaN and infinity (refused there) must not break the answer."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


DATABASE_RETRY_AFTER_S = 5

# what the domain raises, as the API answers it: the one place a domain error becomes an HTTP status
DOMAIN_ERRORS: dict[type[Exception], Callable[[Exception], ApiError]] = {
    SpecError: lambda e: InvalidInput(f"spec.{e.field}: {e.message}"),  # type: ignore[attr-defined]
    UnknownLayers: lambda e: InvalidInput(str(e)),
    GalleryError: lambda e: NotFound(str(e)),
}


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


def _methods_of(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document lists for this path (one path can be several routes)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {m.upper() for m in operations}
    return methods


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

    app.state.settings = settings
    app.state.engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
    )
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.status_reader = make_status_reader(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
    )
    app.state.celery = make_celery(settings)
    app.state.store = make_store(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit)
    app.state.failed_auth = RateLimiter(
        settings.failed_auth_limit,
        "requests a minute with a missing or invalid key from this address (HTL_FAILED_AUTH_LIMIT)",
    )
    app.state.upload_slots = UploadSlots(settings.max_concurrent_uploads)
    app.add_middleware(RequestLimits, max_bytes=settings.max_json_bytes, upload_paths=("/v1/datasets",))
    app.add_middleware(SecurityHeaders)
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

    def error(status: int, detail, code: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        return error(exc.status_code, exc.detail, exc.code, {**headers, **exc.headers})

    def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        mapped = next(build(exc) for kind, build in DOMAIN_ERRORS.items() if isinstance(exc, kind))
        return error(mapped.status_code, mapped.detail, mapped.code, mapped.headers)

    for kind in DOMAIN_ERRORS:
        app.add_exception_handler(kind, domain_error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _json_safe(jsonable_encoder(exc.errors())), "INVALID_INPUT")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # one path can be several routes (GET and POST): name every method it takes
            headers["Allow"] = ", ".join(sorted(_methods_of(app, request.url.path)))
        return error(exc.status_code, exc.detail, CODES.get(exc.status_code, "ERROR"), headers)

    # the database is down, restarting, or every pooled connection is taken: come back shortly
    async def database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return error(
            503,
            "the database is unavailable or busy; try again shortly",
            "DATABASE_UNAVAILABLE",
            {"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    # (psycopg's own errors come from the status poll's connection pool, app.db.status)
    for exc_type in (OperationalError, PoolTimeout, psycopg.OperationalError, psycopg_pool.PoolTimeout):
        app.add_exception_handler(exc_type, database_unavailable)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await database_unavailable(request, exc)
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error", "INTERNAL")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error", "INTERNAL")

    for router in (
        health.router,
        datasets.router,
        jobs.spec_router,
        jobs.router,
        images.router,
        annotation.router,
        sweeps.router,
        web.router,
    ):
        app.include_router(router)
    return app
