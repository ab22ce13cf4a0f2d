"""Exactly one runner per job, nothing stranded: takeover only by a stale heartbeat, a sweep that
re-sends lost work and gives up after HTL_MAX_ATTEMPTS, a stopping worker that gives its job back,
and `htl serve` killed with -9 whose worker dies with it, the job finishing once after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import units
from app.db.base import utcnow
from app.db.models import Checkpoint, Job, JobUnit, Metric, Score
from app.db.session import make_engine, make_sessionmaker
from app.main import create_app
from worker import tasks

from .archives import dataset_files, make_zip
from .conftest import count_rows, make_key
from .helpers import TINY, start_worker, stop_worker, submit, wait_for

LONG = {**TINY, "train": {"epochs": 60, "batch_size": 8}}
# the claim and sweep tests follow one chain of units: dense[0] -> score -> attend[0] -> evaluate
CHAIN = {**TINY, "label_check": {"enabled": False}}


def _age(factory, job_id, *, heartbeat_s: float | None = None, queued_s: float | None = None, **values):
    """Backdates the job's open units (queued or running), as if time had passed."""
    with factory() as session:
        for unit in session.scalars(
            select(JobUnit).where(JobUnit.job_id == uuid.UUID(str(job_id)), JobUnit.status.in_(("queued", "running")))
        ):
            if heartbeat_s is not None:
                unit.heartbeat_at = utcnow() - timedelta(seconds=heartbeat_s)
            if queued_s is not None:
                unit.queued_at = utcnow() - timedelta(seconds=queued_s)
            for k, v in values.items():
                setattr(unit, k, v)
        session.commit()


def _claim(factory, job_id, worker: str, stale_s: float = 300, max_attempts: int = 3) -> str | None:
    with factory() as session:
        unit = units.claim_unit(
            session=session,
            job_id=uuid.UUID(str(job_id)),
            worker=worker,
            stale_before=utcnow() - timedelta(seconds=stale_s),
            max_attempts=max_attempts,
        )
        session.commit()
        return unit and unit.name


def test_a_running_unit_is_taken_over_only_when_its_heartbeat_is_stale(client, alice, dataset_id, session_factory):
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    assert _claim(session_factory, job, "htl-aaaa@host") == "dense[0]"
    # the same name again (a restarted process, or a second worker that took the name) is not enough,
    # and nothing else is ready: score waits for every dense seed
    assert _claim(session_factory, job, "htl-aaaa@host") is None
    assert _claim(session_factory, job, "htl-bbbb@host") is None
    _age(session_factory, job, heartbeat_s=301)
    assert _claim(session_factory, job, "htl-bbbb@host") == "dense[0]"
    with session_factory() as session:
        row, unit = session.get(Job, uuid.UUID(job)), session.get(JobUnit, (uuid.UUID(job), "dense[0]"))
        assert (
            row.worker == unit.worker == "htl-bbbb@host"
            and row.attempt == unit.attempt == 2
            and row.status == "running"
        )
        # the first worker learns the unit is no longer its own
        assert units.unit_heartbeat(session=session, job_id=row.id, name="dense[0]", worker="htl-aaaa@host")[0] is False
        assert (
            units.report_unit_progress(
                session=session, job_id=row.id, name="dense[0]", worker="htl-aaaa@host", stage="dense", progress=0.5
            )[0]
            is False
        )
        assert units.complete_unit(session=session, job_id=row.id, name="dense[0]", worker="htl-aaaa@host") is None
        assert units.unit_heartbeat(session=session, job_id=row.id, name="dense[0]", worker="htl-bbbb@host") == (
            True,
            False,
        )
        # completing it releases what waited on it
        assert units.complete_unit(session=session, job_id=row.id, name="dense[0]", worker="htl-bbbb@host") == ["score"]
        session.commit()
    assert _claim(session_factory, job, "htl-aaaa@host") == "score"


def test_the_sweep_resends_lost_and_orphaned_units_and_fails_exhausted_ones(
    client, alice, dataset_id, session_factory, settings, monkeypatch
):
    sent = []
    monkeypatch.setattr(tasks, "enqueue_job", lambda _celery, job_id: sent.append(str(job_id)))
    monkeypatch.setattr(tasks, "_resources", lambda _s: (session_factory, None))
    fresh, lost, orphan, exhausted = (submit(client, alice, dataset_id, CHAIN).json()["id"] for _ in range(4))
    _age(session_factory, lost, queued_s=3600)  # queued an hour ago: its message is gone
    for job, attempt in ((orphan, 1), (exhausted, settings.max_attempts)):
        _claim(session_factory, job, f"htl-{job[:4]}@host")
        _age(session_factory, job, heartbeat_s=3600, attempt=attempt)
    assert sorted(map(str, tasks.sweep(settings))) == sorted([lost, orphan]) == sorted(sent)
    with session_factory() as session:
        failed = session.get(Job, uuid.UUID(exhausted))
        assert failed.status == "failed" and "HTL_MAX_ATTEMPTS" in failed.error and failed.error.startswith("dense[0]")
        assert {u.status for u in failed.units} == {"failed", "cancelled"}
        assert session.get(Job, uuid.UUID(fresh)).status == "queued"
    sent.clear()
    assert [str(j) for j in tasks.sweep(settings)] == [
        orphan
    ]  # a re-sent queued unit waits a window before the next send


def test_a_unit_whose_worker_went_silent_near_its_memory_limit_is_not_retried(
    client, alice, dataset_id, session_factory, settings, monkeypatch
):
    sent = []
    monkeypatch.setattr(tasks, "enqueue_job", lambda _celery, job_id: sent.append(str(job_id)))
    monkeypatch.setattr(tasks, "_resources", lambda _s: (session_factory, None))
    gib = 2**30
    oom, lost = (submit(client, alice, dataset_id, CHAIN).json()["id"] for _ in range(2))
    for job, used in ((oom, int(19.5 * gib)), (lost, 6 * gib)):  # of 23 GiB: 85% (an OOM kill, most likely) and 26%
        _claim(session_factory, job, f"htl-{job[:4]}@host")
        with session_factory() as session:
            assert units.unit_heartbeat(
                session=session,
                job_id=uuid.UUID(job),
                name="dense[0]",
                worker=f"htl-{job[:4]}@host",
                memory_bytes=used,
                memory_limit_bytes=23 * gib,
            ) == (True, False)
            session.commit()
        _age(session_factory, job, heartbeat_s=3600)
    assert _claim(session_factory, oom, "htl-cccc@host") is None  # no other worker takes it over into the same death
    assert [str(j) for j in tasks.sweep(settings)] == sent == [lost]  # the other silent unit is retried as before
    with session_factory() as session:
        failed = session.get(Job, uuid.UUID(oom))
        assert failed.status == "failed" and failed.error.startswith(
            "dense[0]: worker lost while the unit held 19.5 GiB of the 23.0 GiB"
        )
        assert "out-of-memory" in failed.error and "not retried" in failed.error
        assert session.get(JobUnit, (failed.id, "dense[0]")).attempt == 1
        assert session.get(Job, uuid.UUID(lost)).status == "running"
    # a new attempt starts with no reading: the memory of the last one does not carry over
    assert _claim(session_factory, lost, "htl-dddd@host") == "dense[0]"
    with session_factory() as session:
        unit = session.get(JobUnit, (uuid.UUID(lost), "dense[0]"))
        assert unit.memory_bytes is None and unit.attempt == 2


@pytest.mark.torch
def test_a_real_worker_reports_its_memory_and_a_kill_near_the_limit_fails_the_job(
    worker_settings, tmp_path, monkeypatch
):
    """The heartbeat's reading is real: a worker told it may use 64 MiB (less than torch alone takes)
    reports more than 80% of that, so once it is killed with -9 the sweep fails the job as an OOM kill."""
    limit = 64 * 2**20
    proc = start_worker(worker_settings, tmp_path / "worker.log", HTL_WORKER_MEMORY_BYTES=str(limit))
    try:
        app = create_app(worker_settings)
        factory = app.state.sessionmaker
        headers = {"Authorization": f"Bearer {make_key(factory, 'erin')}"}
        with TestClient(app) as client:
            ds = client.post(
                "/v1/datasets", headers=headers, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}
            ).json()
            job = uuid.UUID(
                client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"], "spec": LONG}).json()["id"]
            )

            def reading():
                with factory() as session:
                    unit = session.get(JobUnit, (job, "dense[0]"))
                    return unit is not None and unit.status == "running" and unit.memory_bytes and unit

            unit = wait_for(reading, 120, "the running unit's first memory reading", interval=0.2)
            assert unit.memory_limit_bytes == limit and unit.memory_bytes > 0.8 * limit, (
                unit.memory_bytes,
                unit.memory_limit_bytes,
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=20)
        _age(factory, job, heartbeat_s=worker_settings.job_stale_after_s + 1)
        sent = []
        monkeypatch.setattr(tasks, "enqueue_job", lambda _celery, job_id: sent.append(job_id))
        tasks.sweep(worker_settings)
        with factory() as session:
            row = session.get(Job, job)
            assert row.status == "failed" and "out-of-memory" in row.error and sent == [], row.error
    finally:
        if proc.poll() is None:
            stop_worker(proc)


def test_a_waiting_unit_whose_deps_succeeded_is_released_by_the_sweep(
    client, alice, dataset_id, session_factory, settings, monkeypatch
):
    sent = []
    monkeypatch.setattr(tasks, "enqueue_job", lambda _celery, job_id: sent.append(str(job_id)))
    monkeypatch.setattr(tasks, "_resources", lambda _s: (session_factory, None))
    job = submit(client, alice, dataset_id, CHAIN).json()["id"]
    assert _claim(session_factory, job, "htl-aaaa@host") == "dense[0]"
    with session_factory() as session:  # a crash between finishing dense[0] and releasing score
        session.execute(
            update(JobUnit)
            .where(JobUnit.job_id == uuid.UUID(job), JobUnit.name == "dense[0]")
            .values(status="succeeded")
        )
        session.commit()
    assert [str(j) for j in tasks.sweep(settings)] == [job]
    assert _claim(session_factory, job, "htl-bbbb@host") == "score"


@pytest.mark.torch
def test_a_stopping_worker_gives_its_job_back_and_another_finishes_it_once(worker_settings, worker_process, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    from .conftest import make_key

    proc, log_path = worker_process
    app = create_app(worker_settings)
    factory = app.state.sessionmaker
    headers = {"Authorization": f"Bearer {make_key(factory, 'dora')}"}
    with TestClient(app) as client:
        ds = client.post(
            "/v1/datasets", headers=headers, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}
        ).json()
        job = client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"], "spec": LONG}).json()
        get = lambda: client.get(f"/v1/jobs/{job['id']}", headers=headers).json()  # noqa: E731
        first = wait_for(
            lambda: (s := get())["stage"] == "dense" and s["progress"] > 0.02 and s, 120, "training to start"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        released = get()
        assert released["status"] == "queued" and released["attempt"] == 0, (released, log_path.read_text()[-2000:])
        assert "is queued again" in log_path.read_text()

        second = start_worker(worker_settings, tmp_path / "second.log")
        try:
            done = wait_for(
                lambda: (s := get())["status"] in ("succeeded", "failed") and s, 240, "the second worker to finish"
            )
        finally:
            stop_worker(second)
        assert done["status"] == "succeeded", (done["error"], (tmp_path / "second.log").read_text()[-3000:])
        assert done["attempt"] == 1 and done["worker"] != first["worker"] and done["started_at"] == first["started_at"]
        assert count_rows(factory, Score) == 32 and count_rows(factory, Checkpoint) == 4
        assert count_rows(factory, Metric) > 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


@pytest.mark.torch
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the worker dies with serve through Linux's PR_SET_PDEATHSIG"
)
def test_kill_9_of_htl_serve_takes_its_worker_down_and_a_restart_finishes_the_job_once(tmp_path):
    from .test_service_under_load import Server

    server = Server(tmp_path, no_worker=False, progress_interval_s=0.1).start()
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as http:
            ds = http.post("/v1/datasets", files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}).json()
            job = http.post("/v1/jobs", json={"dataset_id": ds["id"], "spec": LONG}).json()
            running = wait_for(
                lambda: (
                    (s := http.get(f"/v1/jobs/{job['id']}").json())["stage"] == "dense" and s["progress"] > 0.02 and s
                ),
                120,
                "training to start",
            )
            (worker,) = _children(server.proc.pid)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            wait_for(lambda: not _alive(worker), 30, "the orphaned worker to stop")
            server.start()
            done = wait_for(
                lambda: (s := http.get(f"/v1/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and s,
                300,
                "the job to finish after the restart",
            )
            assert done["status"] == "succeeded", done
            assert done["attempt"] == 1 and done["worker"] != running["worker"]
            scores = http.get(f"/v1/jobs/{job['id']}/scores", params={"limit": 1000}).json()["items"]
            assert len(scores) == 32 and len({s["image_id"] for s in scores}) == 32
    finally:
        server.stop()
    engine = make_engine(f"sqlite:///{(server.data / 'htl.db').resolve()}")
    factory = make_sessionmaker(engine)
    assert count_rows(factory, Score) == 32 and count_rows(factory, Checkpoint) == 4
    engine.dispose()


@pytest.mark.torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds serve's worker through ps --ppid")
def test_htl_serve_starts_another_worker_when_its_worker_dies(tmp_path):
    from .test_service_under_load import Server

    server = Server(tmp_path, no_worker=False).start()
    try:
        with httpx.Client(
            base_url=server.base, headers=server.headers, timeout=30
        ) as http:  # the key shows worker names
            ready = wait_for(lambda: (r := http.get("/readyz")).status_code == 200 and r.json(), 90, "a live worker")
            (worker,) = _children(server.proc.pid)
            os.kill(worker, signal.SIGKILL)
            replacement = wait_for(
                lambda: [p for p in _children(server.proc.pid) if p != worker and _alive(p)],
                60,
                "serve to start another worker",
            )
            assert len(replacement) == 1
            names = wait_for(
                lambda: set(http.get("/readyz").json()["workers"]) - set(ready["workers"]),
                90,
                "the new worker to stamp itself alive",
            )
            assert len(names) == 1  # a new, unique name
    finally:
        server.stop()
    assert "starting another" in server.log_path.read_text()


def test_a_worker_takes_its_share_of_the_cores_for_torch(settings):
    assert tasks.torch_threads_for(settings.model_copy(update={"torch_threads": 3}), 5) == 3
    cores = os.cpu_count() or 1
    assert tasks.torch_threads_for(settings, 1) == cores
    assert tasks.torch_threads_for(settings, 2) == max(1, cores // 2)
    assert tasks.torch_threads_for(settings, 64) == 1
