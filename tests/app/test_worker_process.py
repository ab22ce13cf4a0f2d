"""A real Celery worker process, fed through the API: PostgreSQL + Redis (as deployed) and SQLite +
the filesystem broker (the embedded default)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.core.queue import RUN_JOB
from app.db.models import Checkpoint, Metric, Score
from app.main import create_app

from .archives import dataset_files, make_zip
from .conftest import count_rows, make_key
from .helpers import TINY, wait_for


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
