"""The status poll's read, the API's hottest path: one prepared query (queries.OWNER_JOB_AND_UNITS)
awaited on the event loop. On PostgreSQL it runs on a psycopg connection pool directly (SQL compiled
once from the SQLAlchemy statement): SQLAlchemy's asyncio layer cost about 0.3 ms of the 0.5 ms a
poll took (bench/bench_api.py). Other databases (the embedded SQLite) go through SQLAlchemy's asyncio
engine. Both answer through queries.status_from_rows, so the two cannot drift apart.

Connections are in autocommit (no BEGIN/ROLLBACK around a single read) and are not pinged before use:
after a database restart a poll on a dead connection answers 503 and that connection is dropped."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import queries
from app.db.base import as_utc
from app.db.session import sqlite_pragmas

Status = tuple[uuid.UUID | None, dict | None]


def _times_in_utc(status: Status) -> Status:
    """What UTCDateTime does for SQLAlchemy's results, for rows read straight from psycopg."""
    _, job = status
    for record in [job, *job["units"]] if job else []:
        for key, value in record.items():
            if isinstance(value, datetime):
                record[key] = as_utc(value)
    return status


class SqlAlchemyStatusReader:
    def __init__(self, url: str, *, pool_size: int, max_overflow: int, pool_timeout_s: float):
        parsed = make_url(url)
        drivers = {"sqlite": "sqlite+aiosqlite", "sqlite+pysqlite": "sqlite+aiosqlite"}
        if parsed.drivername not in drivers:
            raise ValueError(f"no asyncio status reader for database URL scheme {parsed.drivername!r}")
        self.engine = create_async_engine(
            parsed.set(drivername=drivers[parsed.drivername]),
            connect_args={"timeout": 30},
            isolation_level="AUTOCOMMIT",
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout_s,
        )
        event.listen(self.engine.sync_engine, "connect", sqlite_pragmas)

    async def read(self, *, key: str, job_id: uuid.UUID) -> Status:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                queries.OWNER_JOB_AND_UNITS, {"job_id": job_id, "key_hash": queries.hash_key(key)}
            )
            return queries.status_from_rows(result.all())  # times typed UTCDateTime: aware, UTC

    async def close(self) -> None:
        await self.engine.dispose()


class PostgresStatusReader:
    SQL = str(queries.OWNER_JOB_AND_UNITS.compile(dialect=PGDialect_psycopg()))

    def __init__(self, url: str, *, max_size: int, timeout_s: float):
        parsed = make_url(url)
        self.conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.max_size, self.timeout_s = max_size, timeout_s
        self.pool = self.loop = self.opening = None

    async def _pool(self):
        from psycopg_pool import AsyncConnectionPool

        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # opened on first use, on the loop that serves (a test client may start another)
            self.loop, self.pool, self.opening = loop, None, asyncio.Lock()
        async with self.opening:
            if self.pool is None:
                pool = AsyncConnectionPool(
                    self.conninfo,
                    min_size=1,
                    max_size=self.max_size,
                    timeout=self.timeout_s,
                    kwargs={"autocommit": True},
                    open=False,
                )
                await pool.open()
                self.pool = pool
        return self.pool

    async def read(self, *, key: str, job_id: uuid.UUID) -> Status:
        pool = await self._pool()
        async with pool.connection() as connection:
            cursor = await connection.execute(self.SQL, {"job_id": job_id, "key_hash": queries.hash_key(key)})
            return _times_in_utc(queries.status_from_rows(await cursor.fetchall()))

    async def close(self) -> None:
        if self.pool is not None and self.loop is asyncio.get_running_loop():
            await self.pool.close()
        self.pool = None


def make_status_reader(url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout_s: float = 10.0):
    if make_url(url).drivername in ("postgresql", "postgresql+psycopg"):
        return PostgresStatusReader(url, max_size=pool_size + max_overflow, timeout_s=pool_timeout_s)
    return SqlAlchemyStatusReader(url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout_s=pool_timeout_s)
