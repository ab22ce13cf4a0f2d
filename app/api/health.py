"""/healthz: the process answers. /readyz: the database and the broker answer too."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.queue import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    checks = {}
    try:
        def ping_db():
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await run_in_threadpool(ping_db)
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001
        checks["database"] = f"unavailable: {e}"
    ok, detail = await run_in_threadpool(broker_reachable, request.app.state.celery)
    checks["broker"] = "ok" if ok else f"unavailable: {detail}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
