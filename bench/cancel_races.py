"""Submit-then-cancel races against a real deployment (PostgreSQL, Redis, `htl serve --no-worker`,
two `htl worker` processes): each round submits a tiny job and cancels it after a random 0-2 s. Every
job must end `cancelled` (or `succeeded`, when the cancel came after success and was answered 409)
within one sweep interval of the last cancel, and nothing may answer 5xx. Then a job is cancelled
while its worker is dead (killed with -9): it must end `cancelled` once its heartbeat is stale and
the surviving worker sweeps.

    HTL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    HTL_BENCH_REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/cancel_races.py --rounds 200
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_workers import free_port, fresh_database  # noqa: E402
from ml.synthetic import make_dataset  # noqa: E402

TINY = {
    "image_size": 32,
    "model": {"width": 4},
    "split": {"group_column": "lesion_id"},
    "train": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsities": [0.5, 0.9]},
}
LONG = {**TINY, "train": {"epochs": 200, "batch_size": 8}}
SWEEP_S, STALE_S, HEARTBEAT_S = 5, 10, 2
FINISHED = ("succeeded", "failed", "cancelled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    import redis as redis_lib

    redis = os.environ.get("HTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    redis_lib.Redis.from_url(redis).flushdb()
    db = fresh_database(os.environ["HTL_BENCH_DATABASE_URL"])
    work = Path(tempfile.mkdtemp())
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
            "HTL_SWEEP_INTERVAL_S": str(SWEEP_S),
            "HTL_JOB_STALE_AFTER_S": str(STALE_S),
            "HTL_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        }
    )
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*cli, "keys", "create", "--owner", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    api = subprocess.Popen(
        [*cli, "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = [
        subprocess.Popen(
            [*cli, "worker"],
            env={**env, "HTL_WORKER_NAME": f"w{i}@%h"},
            stdout=(work / f"w{i}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    http = httpx.Client(base_url=base, headers=headers, timeout=60)
    try:
        _wait(lambda: _get(http, "/readyz").status_code == 200, 120, "a live worker")
        data = make_dataset(work / "data", n=40, size=32, seed=0)
        archive = work / "data.tar.gz"
        subprocess.run(["tar", "czf", str(archive), "-C", str(data), "images", "masks", "metadata.csv"], check=True)
        with archive.open("rb") as f:
            dataset = http.post("/v1/datasets", files={"file": ("d.tar.gz", f)}).json()["id"]
        rng = random.Random(0)
        delays = [rng.uniform(0, 2) for _ in range(args.rounds)]
        statuses: list[int] = []

        def race(delay: float) -> tuple[str, int, int]:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
                submitted = c.post("/v1/jobs", json={"dataset_id": dataset, "spec": TINY})
                if submitted.status_code != 202:
                    return "", submitted.status_code, 0
                time.sleep(delay)
                return submitted.json()["id"], 202, c.post(f"/v1/jobs/{submitted.json()['id']}/cancel").status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(race, delays))
        last_cancel = time.perf_counter()
        statuses = [s for _, submit, cancel in results for s in (submit, cancel) if s]
        jobs = {job: cancel for job, _, cancel in results if job}
        ends = _wait(
            lambda: (
                (e := {j: _get(http, f"/v1/jobs/{j}").json()["status"] for j in jobs})
                and all(s in FINISHED for s in e.values())
                and e
            ),
            SWEEP_S * 2 + 30,
            "every job to end",
        )
        settled = time.perf_counter() - last_cancel
        wrong = {
            j: (ends[j], c)
            for j, c in jobs.items()
            if not (ends[j] == "cancelled" and c == 202 or ends[j] == "succeeded" and c == 409)
        }
        print(
            f"{args.rounds} submit-then-cancel races (delays 0-2 s, {args.concurrency} at once, 2 workers) in {last_cancel - started:.0f} s: "
            f"{sum(e == 'cancelled' for e in ends.values())} cancelled, {sum(e == 'succeeded' for e in ends.values())} succeeded "
            f"(cancel answered 409), {len(wrong)} otherwise {dict(list(wrong.items())[:5])}; every job ended {settled:.1f} s after "
            f"the last cancel (sweep interval {SWEEP_S} s); answers {sorted(set(statuses))}, 5xx: {sum(s >= 500 for s in statuses)}"
        )

        # a cancel while the job's worker is dead
        job = http.post("/v1/jobs", json={"dataset_id": dataset, "spec": LONG}).json()["id"]
        unit = _wait(
            lambda: next((u for u in _get(http, f"/v1/jobs/{job}").json()["units"] if u["status"] == "running"), None),
            120,
            "the long job to run",
        )
        victim = next(w for i, w in enumerate(workers) if unit["worker"].startswith(f"w{i}@"))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.perf_counter()
        cancel = http.post(f"/v1/jobs/{job}/cancel")
        end = _wait(
            lambda: (s := _get(http, f"/v1/jobs/{job}").json())["status"] in FINISHED and s,
            STALE_S + SWEEP_S * 3 + 60,
            "the dead worker's cancelled job to end",
        )
        print(
            f"cancelled while its worker ({unit['worker']}) was dead: cancel answered {cancel.status_code}, the job ended "
            f"{end['status']} {time.perf_counter() - killed:.1f} s after the kill (heartbeat stale after {STALE_S} s, "
            f"sweep every {SWEEP_S} s)"
        )
    finally:
        http.close()
        for p in [api, *workers]:
            if p.poll() is None:
                p.terminate()
        for p in [api, *workers]:
            p.wait(timeout=60)


def _get(http: httpx.Client, path: str) -> httpx.Response:
    return http.get(path)


def _wait(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


if __name__ == "__main__":
    main()
