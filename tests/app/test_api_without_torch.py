"""The API, the client and the CLI's client commands work where the worker-only dependencies
(torch, torchvision, scipy, safetensors: pyproject's [tool.htl] worker-only-dependencies) cannot be
imported: what the API-only install (requirements/api.txt) relies on."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from tests.conftest import REPO

BLOCKED = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["htl"]["worker-only-dependencies"]

# the worker-only modules made absent (None in sys.modules: an import raises, find_spec finds nothing),
# then a request to each kind of route
PROGRAM = """
import json, sys
blocked = set(json.loads(sys.argv[1]))
for name in blocked:
    sys.modules[name] = None

from fastapi.testclient import TestClient
import app.cli, client
from app.main import create_app
from app.core.settings import Settings
from app.db.migrate import upgrade
url = "sqlite:///" + sys.argv[2] + "/t.db"
upgrade(url)
with TestClient(create_app(Settings(data_dir=sys.argv[2], database_url=url))) as c:
    print(json.dumps({path: c.get(path).status_code for path in ("/healthz", "/v1/job-spec", "/v1/jobs", "/", "/openapi.json")}))
print(json.dumps(sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in blocked)))
"""


def test_the_api_starts_and_answers_with_the_worker_only_modules_refused(tmp_path):
    assert "torch" in BLOCKED
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(BLOCKED), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    statuses, imported = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert statuses == {"/healthz": 200, "/v1/job-spec": 200, "/v1/jobs": 401, "/": 200, "/openapi.json": 200}
    assert imported == []


def test_the_refusal_does_refuse(tmp_path):
    """The check above is only worth something if an import of torch really fails under it."""
    program = PROGRAM.split("from fastapi")[0] + "import torch.nn\n"
    result = subprocess.run(
        [sys.executable, "-c", program, json.dumps(BLOCKED)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_commands_that_train_say_they_need_torch_instead_of_starting(tmp_path):
    for argv in (
        ["serve", "--data-dir", str(tmp_path)],
        ["worker"],
        ["run", str(tmp_path), "--out", str(tmp_path / "o")],
    ):
        program = PROGRAM.split("from fastapi")[0] + f"import app.cli\nsys.exit(app.cli.main({argv!r}))\n"
        result = subprocess.run(
            [sys.executable, "-c", program, json.dumps(BLOCKED)], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert result.returncode != 0 and "needs torch" in result.stderr, (argv, result.stderr[-2000:])
