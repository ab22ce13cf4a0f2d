"""A cancel is a state the system finishes: whatever the job's state when the request lands (queued,
a unit running on a live worker, a unit just completed, a worker dead), the job ends cancelled, by
whichever of the cancel, the unit's completion, the next claim or the sweep comes last; and the
cancel, claims, progress reports and completions lock the job before its units, so they never
deadlock (the races run for real on PostgreSQL)."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from sqlalchemy.exc import DBAPIError

from app.db import queries, units
from app.db.models import Job, JobUnit
from worker import tasks

from .helpers import submit
from .test_worker_lifecycle import CHAIN, _age, _claim


def _job(factory, job_id) -> Job:
    with factory() as session:
        job = session.get(Job, uuid.UUID(job_id))
        session.expunge(job)
        return job


def _unit_statuses(factory, job_id) -> dict[str, str]:
    with factory() as session:
        return {u.name: u.status for u in session.query(JobUnit).filter(JobUnit.job_id == uuid.UUID(job_id))}


def _complete(factory, job_id, name, worker):
    with factory() as session:
        ready = units.complete_unit(session=session, job_id=uuid.UUID(job_id), name=name, worker=worker)
        session.commit()
        return ready


def test_a_cancel_while_a_unit_runs_ends_the_job_when_that_unit_completes(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    assert _claim(session_factory, job, "htl-aaaa@host") == "dense[0]"
    r = client.post(f"/v1/jobs/{job}/cancel", headers=alice)
    assert r.status_code == 202 and r.json()["status"] == "running"  # the running unit notices at its next look
    # the unit completed in the last second before its heartbeat saw the cancel: nothing is released,
    # and with nothing else running the job ends here, not stranded with score queued
    assert _complete(session_factory, job, "dense[0]", "htl-aaaa@host") == []
    ended = _job(session_factory, job)
    assert ended.status == "cancelled" and ended.error == units.CANCELLED_ON_REQUEST and ended.finished_at is not None
    assert _unit_statuses(session_factory, job) == {
        "dense[0]": "succeeded",
        "score": "cancelled",
        "select": "cancelled",
        "attend[0]": "cancelled",
        "evaluate": "cancelled",
    }
    assert client.delete(f"/v1/jobs/{job}", headers=alice).status_code == 204


def test_a_cancel_between_units_ends_the_job_at_once(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    _claim(session_factory, job, "htl-aaaa@host")
    assert _complete(session_factory, job, "dense[0]", "htl-aaaa@host") == ["score"]  # score queued, nothing running
    r = client.post(f"/v1/jobs/{job}/cancel", headers=alice)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert _claim(session_factory, job, "htl-bbbb@host") is None


def test_the_evaluate_unit_of_a_cancelled_job_does_not_succeed(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    for name in ("dense[0]", "score", "select", "attend[0]", "evaluate"):
        assert _claim(session_factory, job, "htl-aaaa@host") == name
        if name == "evaluate":
            assert client.post(f"/v1/jobs/{job}/cancel", headers=alice).status_code == 202
        ready = _complete(session_factory, job, name, "htl-aaaa@host")
    assert ready == []
    with session_factory() as session:  # what the worker's last transaction then tries
        assert not queries.finish_job(session=session, job_id=uuid.UUID(job), status="succeeded")
    assert _job(session_factory, job).status == "cancelled"
    assert client.post(f"/v1/jobs/{job}/cancel", headers=alice).status_code == 409


def test_a_job_cancelled_while_its_worker_is_dead_ends_at_the_sweep(
    client, alice, dataset_id, session_factory, settings, monkeypatch
):
    sent = []
    monkeypatch.setattr(tasks, "enqueue_job", lambda _celery, job_id: sent.append(str(job_id)))
    monkeypatch.setattr(tasks, "_resources", lambda _s: (session_factory, None))
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    _claim(session_factory, job, "htl-aaaa@host")
    assert client.post(f"/v1/jobs/{job}/cancel", headers=alice).json()["status"] == "running"
    assert (
        tasks.sweep(settings) == [] and _job(session_factory, job).status == "running"
    )  # its worker may still be alive
    _age(session_factory, job, heartbeat_s=settings.job_stale_after_s + 1)  # ... until its heartbeat goes stale
    assert tasks.sweep(settings) == [] and sent == []  # nothing re-sent: the sweep ended it
    assert _job(session_factory, job).status == "cancelled"
    assert set(_unit_statuses(session_factory, job).values()) == {"cancelled"}


def test_a_claim_ends_a_cancelled_job_whose_worker_died(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    _claim(session_factory, job, "htl-aaaa@host")
    client.post(f"/v1/jobs/{job}/cancel", headers=alice)
    _age(session_factory, job, heartbeat_s=301)
    assert _claim(session_factory, job, "htl-bbbb@host", stale_s=300) is None
    assert _job(session_factory, job).status == "cancelled"


def test_a_stopping_worker_that_gives_back_a_cancelled_jobs_unit_ends_it(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    _claim(session_factory, job, "htl-aaaa@host")
    client.post(f"/v1/jobs/{job}/cancel", headers=alice)
    with session_factory() as session:
        assert units.release_unit(session=session, job_id=uuid.UUID(job), name="dense[0]", worker="htl-aaaa@host")
        session.commit()
    assert _job(session_factory, job).status == "cancelled"


RACES = 30


def test_cancel_claim_progress_and_completion_races_never_deadlock_and_always_end(
    client, alice, dataset_id, session_factory, db_url
):
    """Each round: a worker claims the job's first unit, reports progress and completes it while the
    API cancels at a random moment; afterwards the job is cancelled (or, cancelled before anything
    was claimed, still cancelled), never running with nothing to run, and no transaction failed."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks and deadlocks are PostgreSQL's; SQLite's writers take turns on the whole file")
    rng = random.Random(0)
    jobs = [submit(client, alice, dataset_id, CHAIN).json()["id"] for _ in range(RACES)]
    errors: list[BaseException] = []

    def worker(job_id: str, delay: float) -> None:
        try:
            time.sleep(delay)
            name = _claim(session_factory, job_id, f"htl-{job_id[:4]}@host")
            if name is None:
                return
            for step in range(5):
                with session_factory() as session:
                    units.report_unit_progress(
                        session=session,
                        job_id=uuid.UUID(job_id),
                        name=name,
                        worker=f"htl-{job_id[:4]}@host",
                        stage="dense",
                        progress=step / 5,
                    )
                    units.unit_heartbeat(
                        session=session, job_id=uuid.UUID(job_id), name=name, worker=f"htl-{job_id[:4]}@host"
                    )
                    session.commit()
            _complete(session_factory, job_id, name, f"htl-{job_id[:4]}@host")
        except DBAPIError as e:  # a deadlock, a serialization failure
            errors.append(e)

    def cancel(job_id: str, delay: float) -> None:
        try:
            time.sleep(delay)
            with session_factory() as session:
                queries.request_cancel(session=session, job_id=uuid.UUID(job_id))
                session.commit()
        except DBAPIError as e:
            errors.append(e)

    threads = []
    for job_id in jobs:
        threads += [
            threading.Thread(target=worker, args=(job_id, rng.uniform(0, 0.02))),
            threading.Thread(target=cancel, args=(job_id, rng.uniform(0, 0.02))),
        ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    # the worker's next claim (each job's first unit is done or cancelled) finds nothing and leaves
    # no job open
    for job_id in jobs:
        _claim(session_factory, job_id, "htl-zzzz@host")
    statuses = {job_id: _job(session_factory, job_id).status for job_id in jobs}
    assert set(statuses.values()) == {"cancelled"}, statuses
