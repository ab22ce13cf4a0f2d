"""A real Celery worker process, fed through the API: PostgreSQL + Redis (as deployed) and SQLite +
the filesystem broker (the embedded default)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from app.db.models import Checkpoint, Metric, Score
from app.main import create_app
from app.queue import RUN_JOB
from app.settings import Settings

from .archives import dataset_files, make_zip
from .conftest import REDIS_URL, NO_REDIS, count_rows, make_key
from .test_jobs_api import TINY


@pytest.fixture
def worker_settings(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        return Settings(data_dir=tmp_path / "data", database_url=db_url, progress_interval_s=0.1)
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return Settings(data_dir=tmp_path / "data", database_url=db_url, broker_url=REDIS_URL, progress_interval_s=0.1)


def start_worker(worker_settings: Settings, log_path, **env_extra: str) -> subprocess.Popen:
    """A Celery worker process as `htl worker` starts one, on worker_settings' database and broker."""
    env = dict(
        os.environ, HTL_DATA_DIR=str(worker_settings.data_dir), HTL_DATABASE_URL=worker_settings.resolved_database_url,
        HTL_PROGRESS_INTERVAL_S="0.1", HTL_DEVICE="cpu", **env_extra,
    )
    if worker_settings.broker_url:
        env["HTL_BROKER_URL"] = worker_settings.broker_url
    else:
        env.pop("HTL_BROKER_URL", None)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "-c", "1", "-Q", "htl",
             "-n", f"test-{uuid.uuid4().hex[:6]}@%h", "--loglevel=INFO"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def worker_process(worker_settings, tmp_path):
    proc = start_worker(worker_settings, tmp_path / "worker.log")
    yield proc, tmp_path / "worker.log"
    stop_worker(proc)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.torch
def test_a_real_worker_runs_a_job_ignores_a_second_delivery_and_cancels(worker_settings, worker_process, tmp_path):
    proc, log_path = worker_process
    app = create_app(worker_settings)
    headers = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'carol')}"}
    with TestClient(app) as client:
        files = dataset_files(tmp_path, n=40)
        ds = client.post("/v1/datasets", headers=headers, files={"file": ("d.zip", make_zip(files))}).json()
        job = client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"], "spec": TINY}).json()
        get = lambda j: client.get(f"/v1/jobs/{j}", headers=headers).json()  # noqa: E731

        seen_stages = set()

        def finished():
            state = get(job["id"])
            if state["stage"]:
                seen_stages.add(state["stage"])
            return state if state["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, 180, "the job to finish", interval=0.05)
        assert done["status"] == "succeeded", (done["error"], log_path.read_text()[-3000:])
        assert done["progress"] == 1.0 and done["started_at"] and done["finished_at"]
        assert seen_stages & {"dense", "prune", "score", "attend", "evaluate"}
        scores = client.get(f"/v1/jobs/{job['id']}/scores", headers=headers, params={"limit": 1000}).json()["items"]
        assert len(scores) == 32
        assert client.get(f"/v1/jobs/{job['id']}/checkpoints/attended", headers=headers).status_code == 200

        # the same job delivered again: the worker recognises it and writes nothing
        factory = app.state.sessionmaker
        counts = [count_rows(factory, m) for m in (Score, Metric, Checkpoint)]
        app.state.celery.send_task(RUN_JOB, args=[job["id"]], queue="htl")
        wait_for(lambda: "delivery ignored" in log_path.read_text(), 60, "the second delivery to be handled")
        assert [count_rows(factory, m) for m in (Score, Metric, Checkpoint)] == counts
        assert get(job["id"]) == done

        # a long job is cancelled while it runs
        long_spec = {**TINY, "image_size": 128, "train": {"epochs": 500, "batch_size": 8}}
        long_job = client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"], "spec": long_spec}).json()
        wait_for(lambda: get(long_job["id"])["stage"] == "dense", 60, "the long job to start training")
        asked = time.monotonic()
        r = client.post(f"/v1/jobs/{long_job['id']}/cancel", headers=headers)
        assert r.status_code == 202
        cancelled = wait_for(lambda: (s := get(long_job["id"]))["status"] == "cancelled" and s, 15, "the cancel")
        assert time.monotonic() - asked < 3  # about a second: the worker looks for a cancel every second
        assert cancelled["error"] == "cancelled on request" and cancelled["progress"] < 0.5
        assert proc.poll() is None  # the worker lives on
