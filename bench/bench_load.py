"""The API under mixed load: slow uploads (bytes trickling in), pollers of job status, and job
submissions, all at once, against a real `htl serve --no-worker` on this machine. Reports, per kind of
request, the count, status codes and latency percentiles, and the pollers' rate next to their rate
with no uploads running (the ratio is what to compare across machines).

    .venv/bin/python bench/bench_load.py --uploads 16 --pollers 8 --submitters 2 --seconds 20
    HTL_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test .venv/bin/python bench/bench_load.py
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml.synthetic import make_dataset  # noqa: E402

SPEC = {
    "image_size": 32,
    "model": {"width": 4},
    "train": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsities": [0.5]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database(url: str | None) -> tuple[str | None, callable]:
    if not url:
        return None, lambda: None
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"htl_load_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def archive_bytes(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root))
    return buf.getvalue()


def multipart(archive: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head + archive + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def trickle(body: bytes, seconds: float, chunks: int = 40):
    step = max(1, len(body) // chunks)
    for start in range(0, len(body), step):
        yield body[start : start + step]
        time.sleep(seconds / chunks)


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else (values[0] if values else float("nan"))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=16, help="slow uploads running at once")
    parser.add_argument(
        "--upload-seconds", type=float, default=10.0, help="how long each upload's bytes take to arrive"
    )
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--submitters", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="htl-load-"))
    database_url, drop = fresh_database(os.environ.get("HTL_BENCH_DATABASE_URL"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HTL_")}
    env.update(HTL_RATE_LIMIT="0", HTL_MAX_CONCURRENT_UPLOADS=str(args.uploads), OMP_NUM_THREADS="1")
    if database_url:
        env["HTL_DATABASE_URL"] = database_url
    cli = [sys.executable, "-m", "app.cli"]
    data = work / "svc"
    subprocess.run([*cli, "db", "upgrade", "--data-dir", str(data)], env=env, cwd=REPO, check=True, capture_output=True)
    key = subprocess.run(
        [*cli, "keys", "create", "--owner", "load", "--data-dir", str(data)],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [*cli, "serve", "--no-worker", "--port", str(port), "--data-dir", str(data)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        archive = archive_bytes(make_dataset(work / "dataset", n=40, size=32, seed=0))
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            dataset_id = http.post("/v1/datasets", files={"file": ("d.zip", archive)}).json()["id"]
            job_id = http.post("/v1/jobs", json={"dataset_id": dataset_id, "spec": SPEC}).json()["id"]

        def phase(with_load: bool) -> dict[str, list[tuple[int, float]]]:
            results: dict[str, list[tuple[int, float]]] = defaultdict(list)
            stop = threading.Event()

            def timed(kind: str, call):
                t0 = time.perf_counter()
                try:
                    status = call().status_code
                except httpx.HTTPError:
                    status = 0  # a connection error or timeout
                results[kind].append((status, time.perf_counter() - t0))

            def poller():
                with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                    while not stop.is_set():
                        timed("poll", lambda: http.get(f"/v1/jobs/{job_id}"))

            def submitter():
                with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                    while not stop.is_set():
                        timed("submit", lambda: http.post("/v1/jobs", json={"dataset_id": dataset_id, "spec": SPEC}))
                        time.sleep(0.5)

            def uploader():
                with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
                    while not stop.is_set():
                        body, content_type = multipart(archive)
                        timed(
                            "upload",
                            lambda body=body, content_type=content_type: http.post(
                                "/v1/datasets",
                                content=trickle(body, args.upload_seconds),
                                headers={"Content-Type": content_type},
                            ),
                        )

            threads = [threading.Thread(target=poller) for _ in range(args.pollers)]
            if with_load:
                threads += [threading.Thread(target=uploader) for _ in range(args.uploads)]
                threads += [threading.Thread(target=submitter) for _ in range(args.submitters)]
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join(timeout=args.upload_seconds * 3 + 60)
            return results

        quiet = phase(with_load=False)
        loaded = phase(with_load=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
        drop()

    print(
        f"database: {'PostgreSQL' if database_url else 'SQLite'}; {args.uploads} slow uploads ({args.upload_seconds:g} s each), "
        f"{args.pollers} pollers, {args.submitters} submitters, {args.seconds:g} s per phase"
    )
    print(f"{'phase':<8}{'kind':<8}{'count':>7}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses")
    for name, results in (("quiet", quiet), ("loaded", loaded)):
        for kind, rows in sorted(results.items()):
            ms = [1000 * d for _, d in rows]
            statuses = dict(sorted(Counter(s for s, _ in rows).items()))
            print(
                f"{name:<8}{kind:<8}{len(rows):>7}{len(rows) / args.seconds:>8.1f}{pct(ms, 50):>9.1f}{pct(ms, 95):>9.1f}"
                f"{pct(ms, 99):>9.1f}  {statuses}"
            )
    ratio = len(loaded["poll"]) / max(1, len(quiet["poll"]))
    errors = sum(1 for rows in loaded.values() for s, _ in rows if s == 0 or s >= 500)
    print(f"poll rate under load / quiet: {ratio:.2f}; 5xx or connection errors under load: {errors}")


if __name__ == "__main__":
    main()
