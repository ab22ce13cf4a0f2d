import uuid

import pytest

from worker.tasks import execute_job

from .conftest import make_key
from .helpers import submit


def test_v1_routes_need_a_bearer_key(client):
    for method, path in [("get", "/v1/datasets"), ("post", "/v1/jobs"), ("get", f"/v1/jobs/{uuid.uuid4()}")]:
        r = getattr(client, method)(path)
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = client.get("/v1/datasets", headers={"Authorization": "Bearer htl_wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "the API key is not valid"


def _stamp_worker(session_factory, name="w-1@host", age_s=0.0):
    from datetime import timedelta

    from app.db import queries
    from app.db.base import utcnow
    from app.db.models import Worker

    with session_factory() as session:
        queries.worker_alive(session=session, name=name, hostname="host", pid=1)
        session.flush()
        session.get(Worker, name).heartbeat_at = utcnow() - timedelta(seconds=age_s)
        session.commit()


def test_health_needs_no_key_and_readiness_needs_a_live_worker(client, alice, session_factory):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    body = r.json()
    assert r.status_code == 503 and body["code"] == "NOT_READY" and body["checks"]["workers"].startswith("none alive")
    assert body["checks"]["database"] == "ok" and "workers" in body["detail"] and r.headers["retry-after"]
    _stamp_worker(session_factory, age_s=3600)  # silent for an hour: dead
    assert client.get("/readyz").status_code == 503
    _stamp_worker(session_factory, name="w-2@host")
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "workers": "ok", "broker": "ok"}
    assert r.json()["workers_alive"] == 1 and "workers" not in r.json()  # host names only for a caller with a key
    assert client.get("/readyz", headers=alice).json()["workers"] == ["w-2@host"]
    assert "workers" not in client.get("/readyz", headers={"Authorization": "Bearer not-a-key"}).json()


def test_keys_are_stored_hashed(client, alice, session_factory):
    from sqlalchemy import select

    from app.db.models import ApiKey

    key = alice["Authorization"].split()[1]
    with session_factory() as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert key not in stored and all(len(h) == 64 for h in stored)


@pytest.mark.torch
def test_another_owners_resources_answer_404_like_missing_ones(client, alice, bob, dataset_id, settings):
    job = submit(client, alice, dataset_id).json()
    execute_job(uuid.UUID(job["id"]), settings=settings, worker="w")
    missing_ds, missing_job = uuid.uuid4(), uuid.uuid4()
    pairs = [
        (f"/v1/datasets/{dataset_id}", f"/v1/datasets/{missing_ds}"),
        (f"/v1/jobs/{job['id']}", f"/v1/jobs/{missing_job}"),
        (f"/v1/jobs/{job['id']}/scores", f"/v1/jobs/{missing_job}/scores"),
        (f"/v1/jobs/{job['id']}/metrics", f"/v1/jobs/{missing_job}/metrics"),
        (f"/v1/jobs/{job['id']}/checkpoints", f"/v1/jobs/{missing_job}/checkpoints"),
        (f"/v1/jobs/{job['id']}/checkpoints/dense", f"/v1/jobs/{missing_job}/checkpoints/dense"),
    ]
    for theirs, missing in pairs:
        assert client.get(theirs, headers=alice).status_code == 200, theirs
        a, b = client.get(theirs, headers=bob), client.get(missing, headers=bob)
        assert a.status_code == b.status_code == 404
        assert a.json()["detail"].replace(job["id"], "X").replace(dataset_id, "X") == b.json()["detail"].replace(
            str(missing_job), "X"
        ).replace(str(missing_ds), "X")
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob).status_code == 404
    assert submit(client, bob, dataset_id).status_code == 404
    assert client.get("/v1/datasets", headers=bob).json()["items"] == []
    assert client.get("/v1/jobs", headers=bob).json()["items"] == []


def test_readyz_checks_a_redis_broker_and_says_when_it_is_down(db_url, tmp_path):
    from fastapi.testclient import TestClient

    from app.core.settings import Settings
    from app.main import create_app

    from .conftest import NO_REDIS, REDIS_URL

    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    up = create_app(Settings(data_dir=tmp_path / "a", database_url=db_url, broker_url=REDIS_URL))
    _stamp_worker(up.state.sessionmaker)
    with TestClient(up) as client:
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "workers": "ok", "broker": "ok"}
    down = create_app(Settings(data_dir=tmp_path / "b", database_url=db_url, broker_url="redis://127.0.0.1:1/0"))
    with TestClient(down) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"].startswith("unavailable")


@pytest.mark.torch
def test_metrics_answer_in_the_prometheus_text_format(client, alice, dataset_id, settings):
    from prometheus_client.parser import text_string_to_metric_families

    job = submit(client, alice, dataset_id).json()
    execute_job(uuid.UUID(job["id"]), settings=settings, worker="w")
    submit(client, alice, dataset_id)  # one left queued
    client.get("/v1/jobs", headers=alice)
    assert client.get("/metrics").status_code == 403  # every tenant's counts: not for any client elsewhere
    client.app.state.settings.metrics_token = "scrape-me"
    assert client.get("/metrics", headers=alice).status_code == 401  # a tenant's key is not the operator's token
    r = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    jobs = {s.labels["status"]: s.value for s in families["htl_jobs"].samples}
    assert jobs["succeeded"] == 1 and jobs["queued"] == 1
    assert next(iter(families["htl_queue_depth"].samples)).value == 1
    requests = [
        s
        for s in families["htl_http_requests"].samples
        if s.labels.get("route") == "/v1/jobs" and s.labels["method"] == "GET"
    ]
    assert requests and requests[0].labels["status"] == "200"  # by route template, never by raw path
    assert any(
        s.name == "htl_job_duration_seconds_count" and s.value == 1
        for s in families["htl_job_duration_seconds"].samples
    )
    assert "htl_live_workers" in families
    stage_counts = {
        s.labels["stage"]: s.value for s in families["htl_stage_duration_seconds"].samples if s.name.endswith("_count")
    }
    # one duration per unit: the label check runs as three fold units
    assert stage_counts == {"dense": 1, "label_check": 3, "score": 1, "select": 1, "attend": 1, "evaluate": 1}, (
        stage_counts
    )


def test_the_api_docs_load_every_asset_from_the_service_itself(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert assets and all(a.startswith("/") for a in assets), assets  # no CDN, no other host
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "/openapi.json" in page.text


def test_failed_authentication_is_rate_limited_per_address(tmp_path, db_url):
    from fastapi.testclient import TestClient

    from app.core.settings import Settings
    from app.main import create_app

    app = create_app(Settings(data_dir=tmp_path / "d", database_url=db_url, failed_auth_limit=60))  # a burst of 10
    with TestClient(app) as client:
        statuses = [
            client.get(path, headers={"Authorization": "Bearer guess"}).status_code
            for path in ["/v1/jobs", f"/v1/jobs/{uuid.uuid4()}", "/v1/datasets"] * 5
        ]
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
        r = client.get("/v1/jobs")  # no key at all counts too
        assert (
            r.status_code == 429
            and int(r.headers["retry-after"]) >= 1
            and "HTL_FAILED_AUTH_LIMIT" in r.json()["detail"]
        )
        key = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        assert client.get("/v1/jobs", headers=key).status_code == 200  # a valid key is not held back
