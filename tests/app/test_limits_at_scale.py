"""The limits at the sizes an attacker uses, against a real API process (`htl serve --no-worker`):
a 300 MiB multipart body to a JSON route, a 0.4 MiB zip of 400 one-MiB members of zeros, and a
metadata header of 30 million columns each get a 4xx, while the API's peak memory (VmHWM) and what it
writes (wchar) stay far below what the input would have cost had it been read."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import httpx
import pytest

from .test_service_under_load import Server, multipart

MIB = 1024**2


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _written(pid: int) -> int:
    """Bytes the process has handed to write() (files, sockets, logs alike): an upper bound on disk."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def _declared_only(port: int, headers: dict[str, str]) -> str:
    """Sends a POST's headers and none of its declared body; answers the response's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        answer = sock.recv(4096).decode("latin-1")
    return answer.split("\r\n", 1)[0]


@pytest.fixture
def server(tmp_path):
    if not Path("/proc/self/io").is_file():
        pytest.skip("needs Linux /proc to measure the API process")
    server = Server(tmp_path).start()
    yield server
    server.stop()


def test_a_300_mib_multipart_body_to_a_json_route_is_refused_without_being_held(server):
    pid = server.proc.pid
    before = _status(pid)["VmHWM"]

    def body():
        head, _ = multipart(b"")
        yield head
        for _ in range(300):
            yield b"\0" * MIB

    sent_type = multipart(b"")[1]
    answers = []
    for headers in ({}, server.headers):  # without a key and with one
        try:
            r = httpx.post(
                f"{server.base}/v1/jobs", headers={**headers, "Content-Type": sent_type}, content=body(), timeout=120
            )
            answers.append((r.status_code, r.json()["code"]))
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            answers.append("closed while sending")  # the API answered and closed before the body was all sent
        # declared up front: refused from the header alone, with the body not yet sent
        status_line = _declared_only(
            server.port, {**headers, "Content-Type": sent_type, "Content-Length": str(300 * MIB)}
        )
        assert status_line.startswith("HTTP/1.1 413"), status_line
    assert all(a in ((413, "TOO_LARGE"), "closed while sending") for a in answers), answers
    grown = _status(pid)["VmHWM"] - before
    assert grown < 32 * MIB, f"the API's peak memory grew by {grown / MIB:.0f} MiB for a 300 MiB body it refused"
    assert httpx.get(f"{server.base}/healthz", timeout=5).status_code == 200


def test_a_zip_of_400_one_mib_members_of_zeros_is_refused_before_it_is_unpacked(server, tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(400):  # each just under the per-member grace size: only the whole archive's ratio catches it
            zf.writestr(f"images/z{k}.png", b"\0" * (MIB - 1))
    data = archive.getvalue()
    assert len(data) < MIB  # 400 MiB of zeros in under 1 MiB
    pid = server.proc.pid
    written = _written(pid)
    body, content_type = multipart(data)
    r = httpx.post(
        f"{server.base}/v1/datasets",
        headers={**server.headers, "Content-Type": content_type},
        content=body,
        timeout=120,
    )
    assert r.status_code == 413 and "compression ratio" in r.json()["detail"], r.text
    wrote = _written(pid) - written
    assert wrote < 8 * MIB, f"the API wrote {wrote / MIB:.1f} MiB for a {len(data) / MIB:.2f} MiB archive it refused"
    assert not any((server.data / "staging").rglob("*.png")) if (server.data / "staging").exists() else True
    datasets = httpx.get(f"{server.base}/v1/datasets", headers=server.headers, timeout=10).json()["items"]
    assert datasets == []


def test_a_metadata_header_of_30_million_columns_is_refused_in_bounded_memory(tmp_path):
    import tracemalloc

    from contract.layout import LayoutError, read_metadata

    path = tmp_path / "metadata.csv"
    with path.open("w") as f:  # 60 MB of header: "image_id,a,a,a,..."
        f.write("image_id")
        for _ in range(30):
            f.write(",a" * 1_000_000)
        f.write("\n")
    tracemalloc.start()
    with pytest.raises(LayoutError, match="line 1 is over"):
        read_metadata(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * MIB, peak
