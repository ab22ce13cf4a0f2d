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
from .test_worker_process import wait_for

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
        self.env.update({"HTL_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **{f"HTL_{k.upper()}": str(v) for k, v in settings.items()}})
        if database_url:
            self.env["HTL_DATABASE_URL"] = database_url
        self.cli = [sys.executable, "-m", "app.cli"]
        subprocess.run([*self.cli, "db", "upgrade", "--data-dir", str(self.data)], env=self.env, capture_output=True, check=True)
        self.key = subprocess.run([*self.cli, "keys", "create", "--owner", "load", "--data-dir", str(self.data)], env=self.env,
                                  capture_output=True, text=True, check=True).stdout.strip()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.no_worker = no_worker
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        log = self.log_path.open("a")
        args = [*self.cli, "serve", "--port", str(self.port), "--data-dir", str(self.data), *(["--no-worker"] if self.no_worker else [])]
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
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nslow\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def trickle(body: bytes, seconds: float, chunks: int = 20):
    step = max(1, len(body) // chunks)
    for start in range(0, len(body), step):
        yield body[start:start + step]
        time.sleep(seconds / chunks)


@pytest.fixture
def database_url(empty_db_url):
    return empty_db_url


def test_sixteen_slow_uploads_and_pollers_get_no_server_error(tmp_path, database_url):
    # a pool of 3 + 3 that waits 4 s: had an upload held a connection while it streamed, the pollers
    # would find none free for the whole upload and answer 5xx
    server = Server(tmp_path, database_url=database_url, db_pool_size=3, db_max_overflow=3, db_pool_timeout_s=4,
                    max_concurrent_uploads=SLOW_UPLOADS, rate_limit=0).start()
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
