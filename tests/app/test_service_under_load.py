"""A real API process (`htl serve --no-worker`) under slow uploads and pollers at once: uploads hold
no database connection while their bytes trickle in, so a small pool still serves everyone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from .archives import dataset_files, make_zip
from .helpers import wait_for

SLOW_UPLOADS = 16
POLLERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`htl serve` in a child process on a free port, with its own data folder and settings."""

    def __init__(self, tmp_path, *, database_url: str | None = None, no_worker: bool = True, **settings):
        self.data = tmp_path / "svc"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HTL_")}
        self.env.update(
            {"HTL_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **{f"HTL_{k.upper()}": str(v) for k, v in settings.items()}}
        )
        if database_url:
            self.env["HTL_DATABASE_URL"] = database_url
        self.cli = [sys.executable, "-m", "app.cli"]
        subprocess.run(
            [*self.cli, "db", "upgrade", "--data-dir", str(self.data)], env=self.env, capture_output=True, check=True
        )
        self.key = subprocess.run(
            [*self.cli, "keys", "create", "--owner", "load", "--data-dir", str(self.data)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.no_worker = no_worker
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        log = self.log_path.open("a")
        args = [
            *self.cli,
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data),
            *(["--no-worker"] if self.no_worker else []),
        ]
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self.answers, 60, "the API to answer")
        return self

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


def multipart(archive: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nslow\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        + archive
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def trickle(body: bytes, seconds: float, chunks: int = 20):
    step = max(1, len(body) // chunks)
    for start in range(0, len(body), step):
        yield body[start : start + step]
        time.sleep(seconds / chunks)


@pytest.fixture
def database_url(empty_db_url):
    return empty_db_url


def test_sixteen_slow_uploads_and_pollers_get_no_server_error(tmp_path, database_url):
    # a pool of 3 + 3 that waits 4 s: had an upload held a connection while it streamed, the pollers
    # would find none free for the whole upload and answer 5xx
    server = Server(
        tmp_path,
        database_url=database_url,
        db_pool_size=3,
        db_max_overflow=3,
        db_pool_timeout_s=4,
        max_concurrent_uploads=SLOW_UPLOADS,
        rate_limit=0,
    ).start()
    archive = make_zip(dataset_files(tmp_path, n=12))
    uploads: list[int] = []
    polls: list[int] = []
    done = threading.Event()

    def upload():
        body, content_type = multipart(archive)
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=120) as http:
            r = http.post("/v1/datasets", content=trickle(body, seconds=8.0), headers={"Content-Type": content_type})
            uploads.append(r.status_code)

    def poll():
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as http:
            while not done.is_set():
                polls.append(http.get("/v1/datasets", params={"limit": 5}).status_code)
                polls.append(http.get("/v1/jobs").status_code)

    try:
        threads = [threading.Thread(target=upload) for _ in range(SLOW_UPLOADS)]
        pollers = [threading.Thread(target=poll) for _ in range(POLLERS)]
        for t in threads + pollers:
            t.start()
        for t in threads:
            t.join(timeout=180)
        done.set()
        for t in pollers:
            t.join(timeout=60)
    finally:
        done.set()
        server.stop()
    assert uploads == [201] * SLOW_UPLOADS, (uploads, server.log_path.read_text()[-3000:])
    assert polls and all(s == 200 for s in polls), sorted(set(polls))
    assert len(polls) > 20  # the pollers kept being served while the uploads trickled in


POLL_WINDOW_S = 10.0


def test_pollers_stay_fast_while_uploads_are_checked_and_recorded(tmp_path, database_url):
    """40 pollers (lists and a dataset) and 6 uploads at once, on the default pool: an upload's
    database work or clean-up on the event loop would hold every request (the loop waits for a
    connection that only the routes it blocks would give back), and they would answer 503."""
    server = Server(tmp_path, database_url=database_url, max_concurrent_uploads=6, rate_limit=0).start()
    archive = make_zip(dataset_files(tmp_path, n=150))
    statuses: list[int] = []
    latencies: list[float] = []
    uploads: list[int] = []
    done = threading.Event()
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as http:
            first = http.post("/v1/datasets", files={"file": ("d.zip", archive)})
            assert first.status_code == 201, first.text
            job = http.post("/v1/jobs", json={"dataset_id": first.json()["id"], "spec": {"image_size": 32}})
            assert job.status_code in (202, 503), job.text  # no broker here: the job may be refused, its id unused

        def upload():
            with httpx.Client(base_url=server.base, headers=server.headers, timeout=120) as http:
                while not done.is_set():
                    uploads.append(http.post("/v1/datasets", files={"file": ("d.zip", archive)}).status_code)

        def poll(k: int):
            path = ("/v1/jobs", "/v1/datasets", f"/v1/datasets/{first.json()['id']}")[k % 3]
            with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as http:
                while not done.is_set():
                    started = time.perf_counter()
                    statuses.append(http.get(path, params={"limit": 5} if path.endswith("s") else None).status_code)
                    latencies.append(time.perf_counter() - started)

        threads = [threading.Thread(target=upload) for _ in range(6)] + [
            threading.Thread(target=poll, args=(k,)) for k in range(40)
        ]
        for t in threads:
            t.start()
        time.sleep(POLL_WINDOW_S)
        done.set()
        for t in threads:
            t.join(timeout=120)
    finally:
        done.set()
        server.stop()
    assert uploads and all(s == 201 for s in uploads), sorted(set(uploads))
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
    # a stalled loop shows as waits for the pool's 10 s timeout; the 1 s target is the bench's
    # (BENCHMARKS.md: bench/bench_load.py), not a timed test's on a shared machine
    p95 = sorted(latencies)[int(0.95 * len(latencies))]
    assert p95 < 5.0, (p95, len(latencies))
