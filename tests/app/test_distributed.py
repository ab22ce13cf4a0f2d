"""Two machines' worth of htl-miner on one host: PostgreSQL, Redis, SeaweedFS, the API alone
(`htl serve --no-worker`) and two `htl worker` processes with scratch folders of their own and no
artifact folder in common, only the bucket. A 2-seed job trains its two dense units on the two
workers at once; kill -9 of a worker mid-unit hands that unit to the other, which finishes it once."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import httpx
import pytest

from app.db.migrate import upgrade

from .archives import dataset_files, make_zip
from .conftest import PG_URL, _fresh_postgres_database
from .helpers import wait_for
from .test_service_under_load import Server

REDIS_URL = os.environ.get("HTL_TEST_REDIS_URL")
SPEC = {
    "image_size": 32,
    "model": {"width": 8},
    "split": {"group_column": "lesion_id"},
    "train": {"epochs": 12, "batch_size": 8, "seeds": [0, 1]},
    "prune": {"sparsities": [0.5]},
}

pytestmark = [
    pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL: set HTL_TEST_DATABASE_URL (.ci/run sets it)"),
    pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set HTL_TEST_REDIS_URL (.ci/run sets it)"),
]


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Workers:
    def __init__(self, tmp_path, env: dict[str, str]):
        self.tmp, self.env, self.procs = tmp_path, env, {}

    def start(self, name: str) -> subprocess.Popen:
        home = self.tmp / name
        home.mkdir()
        env = {
            **self.env,
            "HTL_DATA_DIR": str(home / "data"),
            "HTL_SCRATCH_DIR": str(home / "scratch"),
            "HTL_WORKER_NAME": f"{name}@%h",
        }
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster(tmp_path, seaweedfs, s3_bucket, monkeypatch):
    url, drop = _fresh_postgres_database()
    upgrade(url)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    settings = {
        "storage_url": f"s3://{s3_bucket}/htl",
        "s3_endpoint_url": seaweedfs.endpoint,
        "broker_url": REDIS_URL,
        "rate_limit": 0,
    }
    (tmp_path / "api-host").mkdir()
    api = Server(tmp_path / "api-host", database_url=url, no_worker=True, **settings)
    api.start()
    worker_env = {
        **api.env,
        "HTL_TORCH_THREADS": "1",
        "HTL_HEARTBEAT_INTERVAL_S": "1",
        "HTL_JOB_STALE_AFTER_S": "6",
        "HTL_SWEEP_INTERVAL_S": "2",
        "HTL_PROGRESS_INTERVAL_S": "0.2",
    }
    workers = Workers(tmp_path, worker_env)
    try:
        yield api, workers
    finally:
        workers.stop()
        api.stop()
        drop()


def _upload(api, tmp_path) -> str:
    files = dataset_files(tmp_path, n=48)
    r = httpx.post(
        f"{api.base}/v1/datasets", headers=api.headers, files={"file": ("d.zip", make_zip(files))}, timeout=120
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _job(api, job_id: str) -> dict:
    return httpx.get(f"{api.base}/v1/jobs/{job_id}", headers=api.headers, timeout=30).json()


def _units(job: dict) -> dict[str, dict]:
    return {u["name"]: u for u in job["units"]}


@pytest.mark.torch
def test_two_workers_share_a_job_through_the_bucket_and_survive_kill_9(cluster, tmp_path):
    api, workers = cluster
    workers.start("alpha")
    workers.start("beta")
    dataset = _upload(api, tmp_path)
    assert not (tmp_path / "api-host" / "svc" / "artifacts" / "datasets").exists()

    # a 2-seed job: the two dense units train at the same time, one on each worker
    job = httpx.post(
        f"{api.base}/v1/jobs", headers=api.headers, json={"dataset_id": dataset, "spec": SPEC}, timeout=30
    ).json()
    assert [u["name"] for u in job["units"]] == [
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
    done = wait_for(
        lambda: (j := _job(api, job["id"]))["status"] in ("succeeded", "failed") and j, 400, "the job to finish"
    )
    assert done["status"] == "succeeded", (done["error"], workers.log("alpha")[-3000:], workers.log("beta")[-3000:])
    dense = [_units(done)[f"dense[{s}]"] for s in (0, 1)]
    assert {u["worker"].split("@")[0] for u in dense} == {"alpha", "beta"}, dense
    (a0, a1), (b0, b1) = [(_when(u["started_at"]), _when(u["finished_at"])) for u in dense]
    assert a0 < b1 and b0 < a1, dense  # they overlapped in time
    assert all(u["status"] == "succeeded" and u["attempt"] == 1 for u in done["units"])
    checkpoints = httpx.get(f"{api.base}/v1/jobs/{job['id']}/checkpoints", headers=api.headers).json()["items"]
    assert {c["name"] for c in checkpoints} == {
        "dense-s0",
        "dense-s1",
        "pruned@0.5-s0",
        "pruned@0.5-s1",
        "attended-s0",
        "attended-s1",
    }
    for c in checkpoints:
        body = httpx.get(f"{api.base}/v1/jobs/{job['id']}/checkpoints/{c['name']}", headers=api.headers, timeout=60)
        assert (
            body.status_code == 200
            and hashlib.sha256(body.content).hexdigest() == c["sha256"] == body.headers["x-checksum-sha256"]
        )

    # kill -9 of the worker running dense[1]: once its heartbeat is stale the other worker takes the unit over
    long = {**SPEC, "train": {**SPEC["train"], "epochs": 60}}
    job = httpx.post(
        f"{api.base}/v1/jobs", headers=api.headers, json={"dataset_id": dataset, "spec": long}, timeout=30
    ).json()
    running = wait_for(
        lambda: (
            (u := _units(_job(api, job["id"])))["dense[1]"]["status"] == "running"
            and u["dense[1]"]["progress"] > 0.05
            and u
        ),
        240,
        "dense[1] to be training",
    )
    victim = running["dense[1]"]["worker"].split("@")[0]
    survivor = ({"alpha", "beta"} - {victim}).pop()
    os.kill(workers.procs[victim].pid, signal.SIGKILL)
    workers.procs[victim].wait(timeout=30)
    killed_at = time.time()
    done = wait_for(
        lambda: (j := _job(api, job["id"]))["status"] in ("succeeded", "failed") and j,
        600,
        "the survivor to finish the job",
    )
    assert done["status"] == "succeeded", (done["error"], workers.log(survivor)[-4000:])
    taken = _units(done)["dense[1]"]
    assert taken["worker"].split("@")[0] == survivor and taken["attempt"] == 2 and taken["status"] == "succeeded", taken
    assert _when(taken["started_at"]).timestamp() > killed_at  # started again after the kill, on the survivor
    assert workers.log(survivor).count(f"job {job['id']}: unit dense[1] succeeded") == 1
    assert f"job {job['id']}: unit dense[1] succeeded" not in workers.log(victim)
    assert all(u["worker"].split("@")[0] == survivor for name, u in _units(done).items() if name != "dense[0]")
