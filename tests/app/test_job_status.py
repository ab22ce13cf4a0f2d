"""GET /v1/jobs/{id}, the polled route, reads through app.db.status (psycopg's pool on PostgreSQL,
SQLAlchemy's asyncio engine on SQLite): it must answer what the ORM-backed routes answer."""

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.settings import Settings
from app.db import queries
from app.db.models import Job, JobUnit
from app.db.results import persist_results
from app.main import create_app
from contract.jobspec import JobSpec
from contract.results import EvaluationResult, ImageScore, JobResults


def make_job(session_factory, key_header: dict) -> uuid.UUID:
    key = key_header["Authorization"].split()[1]
    with session_factory() as s:
        owner = queries.owner_for_key(session=s, key=key)
        ds = queries.create_dataset(
            session=s,
            dataset_id=uuid.uuid4(),
            owner_id=owner.id,
            name="d",
            storage_key="datasets/d",
            size_bytes=0,
            columns=[],
            warnings=[],
            images=[],
        )
        spec = JobSpec.model_validate({"train": {"seeds": [0, 1]}}).model_dump(mode="json")
        job = queries.create_job(session=s, owner_id=owner.id, dataset_id=ds.id, spec=spec, warnings=["a warning"])
        # one unit under way, with times and a worker, so every column type is read back
        unit = s.get(JobUnit, (job.id, "dense[1]"))
        unit.status, unit.worker, unit.progress, unit.attempt = "running", "w@host", 0.25, 1
        unit.started_at = datetime.now(timezone(timedelta(hours=2)))
        s.commit()
        return job.id


def test_a_status_poll_answers_what_the_job_list_answers(client, session_factory, alice):
    job_id = make_job(session_factory, alice)
    polled = client.get(f"/v1/jobs/{job_id}", headers=alice)
    assert polled.status_code == 200 and polled.headers["content-type"] == "application/json"
    listed = client.get("/v1/jobs", headers=alice).json()["items"]
    assert polled.json() == listed[0]
    body = polled.json()
    assert [u["name"] for u in body["units"]] == [
        "dense[0]",
        "dense[1]",
        "label_check[0]",
        "label_check[1]",
        "label_check[2]",
        "score",
        "select",
        "attend[0]",
        "attend[1]",
        "evaluate",
    ]
    running = body["units"][1]
    assert (
        running["status"] == "running"
        and running["worker"] == "w@host"
        and running["started_at"].endswith(("Z", "+00:00"))
    )
    assert body["warnings"] == ["a warning"] and body["spec"]["train"]["seeds"] == [0, 1]


def test_a_status_poll_needs_a_live_key_of_the_jobs_owner(client, session_factory, alice, bob):
    job_id = make_job(session_factory, alice)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer htl_nonsense"}).status_code == 401
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=alice).status_code == 404
    with session_factory() as s:
        assert queries.revoke_api_keys(session=s, prefix=alice["Authorization"].split()[1][:12]) == 1
        s.commit()
    revoked = client.get(f"/v1/jobs/{job_id}", headers=alice)
    assert revoked.status_code == 401 and revoked.json()["code"] == "UNAUTHORIZED"


def test_a_status_poll_answers_503_when_postgresql_is_unreachable(tmp_path):
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none", db_pool_timeout_s=1
    )
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": "Bearer htl_whatever"})
    assert r.status_code == 503 and r.json()["code"] == "DATABASE_UNAVAILABLE" and "Retry-After" in r.headers


def test_a_scores_page_written_as_text_matches_the_stored_rows(client, session_factory, alice):
    from app.api.schemas import Page, ScoreOut

    job_id = make_job(session_factory, alice)
    odd_ids = ['IMG "quoted"', "IMG_ünïcode", "IMG\\back", "IMG_4"]
    scores = [
        ImageScore(
            rank=r,
            image_id=image_id,
            htl_score=1 / (r + 2),
            is_htl=r == 1,
            labeled=r != 3,
            per_sparsity={"0.5": 0.25 * r, "0.9": 1e-9},
            scores={"loss": None, "el2n": 0.1 * r},
            attributes={"sex": "female", "site": 'a "b"'},
            subgroups={"sex": "female"},
        )
        for r, image_id in enumerate(odd_ids, start=1)
    ]
    with session_factory() as s:
        persist_results(
            session=s,
            job_id=job_id,
            run_prefix=f"jobs/{job_id}/run",
            results=JobResults(scores=scores, evaluation=EvaluationResult([], [], {}, {}), checkpoints=[]),
        )
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
        s.commit()
    first = client.get(f"/v1/jobs/{job_id}/scores", params={"limit": 3}, headers=alice)
    assert first.status_code == 200
    page = Page[ScoreOut].model_validate_json(first.content)
    rest = Page[ScoreOut].model_validate(
        client.get(f"/v1/jobs/{job_id}/scores", params={"cursor": page.next_cursor}, headers=alice).json()
    )
    assert rest.next_cursor is None
    got = [item.model_dump() for item in page.items + rest.items]
    assert got == [dataclasses.asdict(s) for s in scores]
    htl = client.get(f"/v1/jobs/{job_id}/scores", params={"htl_only": "true"}, headers=alice).json()
    assert [i["image_id"] for i in htl["items"]] == ['IMG "quoted"'] and htl["next_cursor"] is None
