"""A 2-seed job on 1 worker vs 2 workers (each 1 torch thread), on PostgreSQL, Redis and a local
artifact folder (the store does not change the compute; tests/app/test_distributed.py covers S3):
the API alone (`htl serve --no-worker`), N `htl worker` processes, one job submitted over HTTP, the
wall clock from submission to success. Also prints each unit's worker and duration.

    HTL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    HTL_BENCH_REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/bench_workers.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ml.synthetic import make_dataset  # noqa: E402

SPEC = {
    "image_size": 64,
    "model": {"width": 16},
    "split": {"group_column": "lesion_id"},
    "train": {"epochs": 6, "batch_size": 16, "seeds": [0, 1]},
    "prune": {"sparsities": [0.5, 0.9]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(url: str) -> str:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"htl_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def run(n_workers: int, data: Path, work: Path, database: str, redis: str) -> dict:
    import redis as redis_lib

    redis_lib.Redis.from_url(redis).flushdb()
    db = fresh_database(database)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTL_")}
    env.update(
        {
            "HTL_DATABASE_URL": db,
            "HTL_BROKER_URL": redis,
            "HTL_DATA_DIR": str(work / "svc"),
            "HTL_DEVICE": "cpu",
            "HTL_RATE_LIMIT": "0",
            "HTL_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*cli, "keys", "create", "--owner", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    procs = [
        subprocess.Popen(
            [*cli, "serve", "--no-worker", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for i in range(n_workers):
        procs.append(
            subprocess.Popen(
                [*cli, "worker"],
                env={**env, "HTL_WORKER_NAME": f"w{i}@%h"},
                stdout=(work / f"worker{i}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        archive = work / "data.tar.gz"
        subprocess.run(["tar", "czf", str(archive), "-C", str(data), "images", "masks", "metadata.csv"], check=True)
        with archive.open("rb") as f:
            dataset = httpx.post(
                f"{base}/v1/datasets", headers=headers, files={"file": ("d.tar.gz", f)}, timeout=300
            ).json()["id"]
        start = time.perf_counter()
        job = httpx.post(
            f"{base}/v1/jobs", headers=headers, json={"dataset_id": dataset, "spec": SPEC}, timeout=30
        ).json()
        while True:
            state = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers, timeout=30).json()
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        wall = time.perf_counter() - start
        assert state["status"] == "succeeded", state["error"]
        return {
            "workers": n_workers,
            "wall_s": wall,
            "units": [
                {
                    "name": u["name"],
                    "worker": u["worker"].split("@")[0],
                    "seconds": round((_t(u["finished_at"]) - _t(u["started_at"])), 1),
                }
                for u in state["units"]
            ],
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def _t(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    database = os.environ["HTL_BENCH_DATABASE_URL"]
    redis = os.environ.get("HTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", n=args.images, size=64, seed=0)
        results = [run(n, data, Path(tempfile.mkdtemp(dir=tmp)), database, redis) for n in (1, 2)]
    for r in results:
        print(json.dumps(r))
    print(
        f"2-seed job, {args.images} images at 64 px: 1 worker {results[0]['wall_s']:.1f} s, 2 workers {results[1]['wall_s']:.1f} s, "
        f"ratio {results[1]['wall_s'] / results[0]['wall_s']:.2f} (target <= 0.6)"
    )


if __name__ == "__main__":
    main()
