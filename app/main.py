"""create_app(): settings, database, queue and artifact store on app.state; routers; error handlers."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.api import datasets, health, jobs
from app.db.session import make_engine, make_sessionmaker
from app.errors import ApiError
from app.queue import make_celery
from app.settings import Settings, get_settings
from app.storage import ArtifactStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.engine.dispose()

    app = FastAPI(title="htl-miner", version="1", lifespan=lifespan,
                  description="Find the images a localization model finds hard to learn, by pruning.")
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.celery = make_celery(settings)
    app.state.store = ArtifactStore(settings.artifacts)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail, "code": exc.code}, status_code=exc.status_code, headers=headers)

    for router in (health.router, datasets.router, jobs.router):
        app.include_router(router)
    return app
