"""/healthz: the process answers. /readyz: the database and the broker answer, and at least one
worker has said it is alive lately (each worker's sweep thread stamps the workers table)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.core.queue import broker_reachable
from app.db import queries

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"description": "ready: database, broker and at least one live worker"},
        503: {"description": "not ready; `checks` says what is missing, with detail and code NOT_READY"},
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks = {}
    workers: list[str] = []
    keyed = False
    settings = request.app.state.settings
    try:

        def ping_db() -> tuple[list[str], bool]:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            with request.app.state.sessionmaker() as session:
                names = [w.name for w in queries.live_workers(session=session, since=settings.live_workers_since)]
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                keyed = (
                    scheme.lower() == "bearer"
                    and bool(key.strip())
                    and queries.owner_for_key(session=session, key=key.strip()) is not None
                )
                return names, keyed

        workers, keyed = await run_in_threadpool(ping_db)
        checks["database"] = "ok"
        checks["workers"] = (
            "ok" if workers else "none alive: no worker has stamped itself lately (start one: htl worker)"
        )
    except Exception as e:  # noqa: BLE001
        checks["database"] = f"unavailable: {type(e).__name__}"
        checks["workers"] = "unknown: the database is unavailable"
    ok, detail = await run_in_threadpool(broker_reachable, request.app.state.celery)
    checks["broker"] = "ok" if ok else f"unavailable: {detail}"
    ready = all(v == "ok" for v in checks.values())
    # worker names are host names: only for a caller with a key
    body = {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "workers_alive": len(workers),
        **({"workers": workers} if keyed else {}),
    }
    if not ready:
        body.update(detail="; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"), code="NOT_READY")
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})
