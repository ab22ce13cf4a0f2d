"""Helpers the service tests share: a tiny job spec, submitting it, a real worker process, waiting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from app.core.settings import Settings

TINY = {
    "image_size": 32,
    "model": {"width": 4},
    "split": {"group_column": "lesion_id"},
    "train": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsities": [0.5, 0.9]},
}


def submit(client, headers, dataset_id, spec=TINY):
    return client.post("/v1/jobs", headers=headers, json={"dataset_id": dataset_id, "spec": spec})


def start_worker(worker_settings: Settings, log_path, **env_extra: str) -> subprocess.Popen:
    """A Celery worker process as `htl worker` starts one, on worker_settings' database and broker."""
    env = dict(
        os.environ,
        HTL_DATA_DIR=str(worker_settings.data_dir),
        HTL_DATABASE_URL=worker_settings.resolved_database_url,
        HTL_PROGRESS_INTERVAL_S="0.1",
        HTL_DEVICE="cpu",
        **env_extra,
    )
    if worker_settings.broker_url:
        env["HTL_BROKER_URL"] = worker_settings.broker_url
    else:
        env.pop("HTL_BROKER_URL", None)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--pool=solo",
                "-c",
                "1",
                "-Q",
                "htl",
                "-n",
                f"test-{uuid.uuid4().hex[:6]}@%h",
                "--loglevel=INFO",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
