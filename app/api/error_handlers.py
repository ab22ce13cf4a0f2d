"""The error handlers of the API: every status, 500 and 503 included, answers
{"detail": ..., "code": ...}; domain errors map to their HTTP status in one place (DOMAIN_ERRORS)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import CODES, ApiError, InvalidInput, NotFound
from app.services.gallery import GalleryError, UnknownLayers
from contract.jobspec import SpecError

log = logging.getLogger("htl.api")

DATABASE_RETRY_AFTER_S = 5

# what the domain raises, as the API answers it: the one place a domain error becomes an HTTP status
DOMAIN_ERRORS: dict[type[Exception], Callable[[Exception], ApiError]] = {
    SpecError: lambda e: InvalidInput(f"spec.{e.field}: {e.message}"),  # type: ignore[attr-defined]
    UnknownLayers: lambda e: InvalidInput(str(e)),
    GalleryError: lambda e: NotFound(str(e)),
}


def _json_safe(value):
    """Validation errors echo the input: NaN and infinity (refused there) must not break the answer."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _methods_of(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document lists for this path (one path can be several routes)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {m.upper() for m in operations}
    return methods


def error(status: int, detail, code: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """API errors, domain errors and request validation as themselves; HTTP errors with their code."""

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

    _add_server_error_handlers(app)


def _add_server_error_handlers(app: FastAPI) -> None:
    """The database down or busy: 503 with Retry-After; anything else unhandled: 500, logged."""

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
