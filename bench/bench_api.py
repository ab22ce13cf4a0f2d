"""API latency on PostgreSQL: a page of 1,000 scores from a job with 100,000 scores (p50/p95, pages
read from all over the ranking), and job-status polling throughput, against a real uvicorn server
on loopback. Also times writing the 100,000 scores (what a worker does at the end of a job).

    HTL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test .venv/bin/python bench/bench_api.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.core.pagination import encode_cursor
from app.db import queries
from app.db.migrate import upgrade
from app.db.results import persist_results
from app.db.session import make_engine, make_sessionmaker
from contract.jobspec import JobSpec
from contract.results import EvaluationResult, ImageScore, JobResults


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scores", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--page-requests", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--poll-threads", type=int, default=8)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    base_url = os.environ.get("HTL_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    name = f"htl_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    server = None
    try:
        upgrade(url)
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        with factory() as s:
            owner, key = queries.create_api_key(session=s, owner_name="bench")
            ds = queries.create_dataset(
                session=s,
                dataset_id=uuid.uuid4(),
                owner_id=owner.id,
                name="b",
                storage_key="datasets/b",
                size_bytes=0,
                columns=["sex"],
                warnings=[],
                images=[],
            )
            # a polled job looks like a real one: the spec as run, and its units (a 2-seed job with a control: 8, made with the job)
            spec = JobSpec.model_validate({"train": {"seeds": [0, 1]}, "attention": {"control": "random"}}).model_dump(
                mode="json"
            )
            job = queries.create_job(session=s, owner_id=owner.id, dataset_id=ds.id, spec=spec)
            s.commit()
            rng = random.Random(0)
            scores = [
                ImageScore(
                    rank=r,
                    image_id=f"IMG_{r:07d}",
                    htl_score=1 - r / args.scores,
                    is_htl=r <= args.scores // 10,
                    labeled=True,
                    per_sparsity={"0.3": rng.random(), "0.5": rng.random(), "0.7": rng.random(), "0.9": rng.random()},
                    scores={},
                    subgroups={},
                    attributes={
                        "sex": rng.choice(["male", "female"]),
                        "age": str(rng.randint(5, 85)),
                        "localization": "back",
                    },
                )
                for r in range(1, args.scores + 1)
            ]
            start = time.perf_counter()
            persist_results(
                session=s,
                job_id=job.id,
                run_prefix=f"jobs/{job.id}/run",
                results=JobResults(scores=scores, evaluation=EvaluationResult([], [], {}, {}), checkpoints=[]),
            )
            s.execute(text("UPDATE jobs SET status='succeeded' WHERE id=:id"), {"id": job.id})
            s.commit()
            write_s = time.perf_counter() - start
            del scores  # a million live objects make every garbage collection here slow: not what is measured
            gc.collect()
            rng = random.Random(1)
            sql_latencies = []
            for _ in range(args.page_requests):
                after = rng.randrange(0, args.scores - args.page)
                t = time.perf_counter()
                rows = queries.score_rows(session=s, job_id=job.id, htl_only=False, limit=args.page, after_rank=after)
                sql_latencies.append(time.perf_counter() - t)
                assert len(rows) == args.page + 1
                s.expunge_all()
        engine.dispose()

        # the per-key rate limit would cap the pollers: this measures the API, not the limit
        env = dict(
            os.environ, HTL_DATABASE_URL=url, HTL_DATA_DIR=str(Path("runs/bench-api").resolve()), HTL_RATE_LIMIT="0"
        )
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--port",
                str(args.port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        api = f"http://127.0.0.1:{args.port}"
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
            for _ in range(100):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            rng = random.Random(1)
            latencies = []
            for _ in range(args.page_requests):
                after = rng.randrange(0, args.scores - args.page)
                params = {"limit": args.page, **({"cursor": encode_cursor({"rank": after})} if after else {})}
                t = time.perf_counter()
                r = client.get(f"/v1/jobs/{job.id}/scores", params=params)
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200 and len(r.json()["items"]) == args.page, r.text[:200]

        def poll(path: str, deadline: float) -> int:
            n = 0
            with httpx.Client(base_url=api, headers=headers, timeout=30) as c:
                while time.perf_counter() < deadline:
                    assert c.get(path).status_code == 200
                    n += 1
            return n

        def throughput(path: str) -> float:
            deadline = time.perf_counter() + args.poll_seconds
            with ThreadPoolExecutor(args.poll_threads) as pool:
                return sum(pool.map(lambda _: poll(path, deadline), range(args.poll_threads))) / args.poll_seconds

        status_rps = throughput(f"/v1/jobs/{job.id}")
        healthz_rps = throughput("/healthz")
        slowest = sorted(range(len(latencies)), key=latencies.__getitem__)[-10:]
        print(
            "slowest page requests (index: ms):", {i: round(1000 * latencies[i], 1) for i in slowest}, file=sys.stderr
        )
        result = {
            "scores_in_job": args.scores,
            "write_scores_s": round(write_s, 2),
            "page_of_scores": {
                "limit": args.page,
                "requests": args.page_requests,
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
                "bytes": len(r.content),
                # the page's query alone (queries.score_rows), from this process
                "sql_only_p50_ms": round(1000 * statistics.median(sql_latencies), 1),
                "sql_only_p95_ms": round(1000 * percentile(sql_latencies, 0.95), 1),
            },
            "job_status_polling": {
                "threads": args.poll_threads,
                "seconds": args.poll_seconds,
                "requests_per_s": round(status_rps, 1),
                "healthz_requests_per_s (no auth, no database)": round(healthz_rps, 1),
                "ratio": round(status_rps / healthz_rps, 2),
            },
            "server": "uvicorn, 1 process",
        }
        print(json.dumps(result, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
