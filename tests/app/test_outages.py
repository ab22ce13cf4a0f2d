"""Outages mid-job, with servers the tests start themselves so they can restart them: a PostgreSQL
cluster and a Redis (no persistence, as on these machines). A job finishes, or fails with an error,
within the stale window: never stuck. Skipped, saying why, where the server binaries are missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .archives import dataset_files, make_zip
from .helpers import wait_for
from .test_service_under_load import Server, free_port

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
REDIS_SERVER = shutil.which("redis-server")
LONG = {
    "image_size": 32,
    "model": {"width": 4},
    "split": {"group_column": "lesion_id"},
    "prune": {"sparsities": [0.5]},
    "train": {"epochs": 40, "batch_size": 8},
}
SHORT = {**LONG, "train": {"epochs": 1, "batch_size": 8}}
FAST_RECOVERY = {"heartbeat_interval_s": 1, "sweep_interval_s": 2, "job_stale_after_s": 20, "progress_interval_s": 0.2}


class OwnPostgres:
    """A PostgreSQL cluster of the test's own, on a free port (as the postgres user when run as root)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="htl-pg-"))
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_postgres, f"{PG_BIN}/{tool}", *args], check=True, capture_output=True)

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class OwnRedis:
    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 20, "redis to answer")

    def _answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def own_redis():
    if REDIS_SERVER is None:
        pytest.skip("outage tests need redis-server on PATH (Debian package redis-server)")
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres():
    if PG_BIN is None:
        pytest.skip("outage tests need PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("as root, PostgreSQL must run as the postgres user: runuser is missing")
    server = OwnPostgres()
    server.start()
    yield server
    server.remove()


def _job(http: httpx.Client, job_id: str) -> dict | None:
    r = http.get(f"/v1/jobs/{job_id}")
    return r.json() if r.status_code == 200 else None


def _finished(http, job_id):
    state = _job(http, job_id)
    return state if state and state["status"] in ("succeeded", "failed", "cancelled") else None


@pytest.mark.torch
def test_a_postgresql_restart_mid_job_neither_strands_nor_duplicates_it(tmp_path, own_postgres, own_redis):
    server = Server(
        tmp_path, database_url=own_postgres.url, no_worker=False, broker_url=own_redis.url, **FAST_RECOVERY
    ).start()
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, 90, "a live worker")
            ds = http.post("/v1/datasets", files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}).json()
            job = http.post("/v1/jobs", json={"dataset_id": ds["id"], "spec": LONG}).json()
            wait_for(
                lambda: (s := _job(http, job["id"])) and s["stage"] == "dense" and s["progress"] > 0.02, 120, "training"
            )
            own_postgres.stop()
            during = http.get(f"/v1/jobs/{job['id']}")
            assert during.status_code == 503 and during.json()["code"] == "DATABASE_UNAVAILABLE"
            time.sleep(8)
            own_postgres.start()
            done = wait_for(lambda: _finished(http, job["id"]), 240, "the job to finish after the restart")
            assert done["status"] == "succeeded", (done, server.log_path.read_text()[-4000:])
            assert done["attempt"] == 1  # one worker ran it, start to end
            scores = http.get(f"/v1/jobs/{job['id']}/scores", params={"limit": 1000}).json()["items"]
            assert len(scores) == 32 == len({s["image_id"] for s in scores})
    finally:
        server.stop()


@pytest.mark.torch
def test_a_job_whose_message_a_redis_restart_lost_is_sent_again_and_runs(tmp_path, own_redis):
    server = Server(tmp_path, no_worker=False, broker_url=own_redis.url, **FAST_RECOVERY).start()
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, 90, "a live worker")
            ds = http.post("/v1/datasets", files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}).json()
            busy = http.post("/v1/jobs", json={"dataset_id": ds["id"], "spec": LONG}).json()
            wait_for(lambda: (s := _job(http, busy["id"])) and s["status"] == "running", 120, "the first job to run")
            waiting = http.post("/v1/jobs", json={"dataset_id": ds["id"], "spec": SHORT}).json()
            own_redis.stop()  # no persistence: the waiting job's message is gone
            own_redis.start()
            for job in (busy, waiting):
                done = wait_for(lambda job=job: _finished(http, job["id"]), 300, f"job {job['id']} to finish")
                assert done["status"] == "succeeded", (done, server.log_path.read_text()[-4000:])
            assert "sent again by the sweep" in server.log_path.read_text()
    finally:
        server.stop()
