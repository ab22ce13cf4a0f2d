"""Service fixtures: a migrated database (SQLite always; PostgreSQL when HTL_TEST_DATABASE_URL is
set), a real broker (the filesystem broker; Redis when HTL_TEST_REDIS_URL is set), an API client."""

from __future__ import annotations

import os
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from app.core.settings import Settings
from app.db import queries
from app.db.migrate import upgrade
from app.main import create_app
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .helpers import start_worker, stop_worker, submit

PG_URL = os.environ.get("HTL_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("HTL_TEST_REDIS_URL")
NO_PG = "PostgreSQL tests need HTL_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test); .ci/run sets it"
NO_REDIS = "Redis tests need HTL_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15); .ci/run sets it"


def _fresh_postgres_database() -> tuple[str, callable]:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"htl_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path):
    """A new, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not PG_URL:
        pytest.skip(NO_PG)
    url, drop = _fresh_postgres_database()
    yield url
    drop()


@pytest.fixture
def db_url(empty_db_url):
    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=db_url, progress_interval_s=0.1)


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def session_factory(app):
    return app.state.sessionmaker


def make_key(session_factory, owner: str) -> str:
    with session_factory() as session:
        _, key = queries.create_api_key(session=session, owner_name=owner)
        session.commit()
    return key


@pytest.fixture
def alice(session_factory) -> dict:
    return {"Authorization": f"Bearer {make_key(session_factory, 'alice')}"}


@pytest.fixture
def bob(session_factory) -> dict:
    return {"Authorization": f"Bearer {make_key(session_factory, 'bob')}"}


def count_rows(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def dataset_id(client, alice, tmp_path):
    files = dataset_files(tmp_path, n=40)
    r = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}, data={"name": "d"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def finished_job(client, alice, dataset_id, settings):
    job = submit(client, alice, dataset_id).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="test-worker") == "succeeded"
    return job["id"]


@pytest.fixture
def worker_settings(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        return Settings(data_dir=tmp_path / "data", database_url=db_url, progress_interval_s=0.1)
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url=REDIS_URL, progress_interval_s=0.1)


@pytest.fixture
def worker_process(worker_settings, tmp_path):
    proc = start_worker(worker_settings, tmp_path / "worker.log")
    yield proc, tmp_path / "worker.log"
    stop_worker(proc)
