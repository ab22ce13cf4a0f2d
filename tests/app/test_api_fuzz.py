"""Schemathesis against a real `htl serve` (with its worker, so /readyz is ready), on SQLite and on
PostgreSQL: at least 1,000
generated requests, stateful sequences along the document's links, and every check but one with no
failure: no server error, every status, content type, header and body as the document says.

Left out: positive_data_acceptance, which expects every schema-valid request to succeed. Cursors
are opaque (any string is schema-valid, only ours decode) and an archive's content is not a schema
matter, so those refusals are right."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import httpx
import pytest

from .archives import dataset_files, make_zip
from .helpers import wait_for
from .test_service_under_load import Server

MIN_CASES = 1000


@pytest.mark.torch
def test_generated_requests_find_no_server_error_and_no_nonconformance(tmp_path, empty_db_url):
    """On SQLite and on PostgreSQL (which refuses text SQLite stores, such as NUL)."""
    if importlib.util.find_spec("schemathesis") is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]' installs it)")
    # no rate limits (per key, or on failed authentication): each would answer 429 where the
    # document's checks expect the route's own answer (401 for a missing key)
    server = Server(tmp_path, database_url=empty_db_url, no_worker=False, rate_limit=0, failed_auth_limit=0).start()
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, 90, "a live worker")
            dataset = http.post("/v1/datasets", files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=12)))})
            assert dataset.status_code == 201
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from schemathesis.cli import schemathesis; schemathesis()",
                "run",
                f"{server.base}/openapi.json",
                "--header",
                f"Authorization: Bearer {server.key}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "40",
                "--seed",
                "7",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.stop()
    report = (result.stdout + result.stderr)[-6000:]
    generated = re.search(r"(\d+) generated", result.stdout)
    assert result.returncode == 0, report
    assert generated and int(generated.group(1)) >= MIN_CASES, report
