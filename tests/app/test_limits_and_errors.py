"""Hostile or unlucky requests get a 4xx or 503 naming the problem, in the one error shape
{"detail", "code"}; never a 500 for bad input, and a 500 that does happen is JSON too."""

import base64
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.db import queries
from app.db.models import Dataset, Image, Job, Score
from app.main import create_app
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .conftest import count_rows, make_key
from .helpers import TINY, submit


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"detail", "code"} and body["code"] == code, body
    return body


def _cursor(values) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def test_a_json_body_over_the_limit_is_413_before_it_is_parsed(tmp_path, db_url):
    app = create_app(Settings(data_dir=tmp_path / "d", database_url=db_url, max_json_bytes=4096))
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        big = {"dataset_id": str(uuid.uuid4()), "spec": {"attributes": ["x" * 100] * 60}}
        body = _error(client.post("/v1/jobs", headers=key, json=big), 413, "TOO_LARGE")
        assert "HTL_MAX_JSON_BYTES" in body["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"dataset_id": "' + str(uuid.uuid4()).encode() + b'", "spec": {"attributes": ['
            for _ in range(100):
                yield b'"' + b"y" * 100 + b'",'
            yield b'"z"]}}'

        _error(
            client.post("/v1/jobs", headers={**key, "Content-Type": "application/json"}, content=chunks()),
            413,
            "TOO_LARGE",
        )


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_spec_are_422(client, alice, dataset_id, number):
    raw = '{"dataset_id": "' + dataset_id + '", "spec": {"train": {"lr": ' + number + "}}}"
    body = _error(
        client.post("/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=raw),
        422,
        "INVALID_INPUT",
    )
    assert any(e["loc"][-2:] == ["train", "lr"] for e in body["detail"])
    assert count_rows(client.app.state.sessionmaker, Job) == 0


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"prune": {"sparsities": [0.5, 0.5000001]}}, "sparsities"),
        ({"train": {"seed": 2**64}}, "seed"),
        ({"train": {"seeds": [0, -1]}}, "seeds"),
        ({"attributes": ["a"] * 1000}, "attributes"),
        ({"weak": {"positive": ["p"] * 1000}}, "positive"),
        ({"sample": {"max_images": 10**12}}, "max_images"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.45}}, "split"),
    ],
)
def test_specs_that_cannot_run_are_422_naming_the_field(client, alice, dataset_id, spec, field):
    body = _error(submit(client, alice, dataset_id, spec), 422, "INVALID_INPUT")
    assert any(field in ".".join(map(str, e["loc"])) for e in body["detail"]), body


@pytest.mark.parametrize(
    "path, cursor",
    [
        ("/v1/jobs", _cursor({"created_at": "2026-01-01T00:00:00", "id": str(uuid.uuid4())})),  # naive datetime
        ("/v1/jobs", _cursor({"created_at": "yesterday", "id": str(uuid.uuid4())})),
        ("/v1/jobs", _cursor({"created_at": "2026-01-01T00:00:00+00:00", "id": "not-a-uuid"})),
        ("/v1/datasets", _cursor({"created_at": 5, "id": 7})),
        ("/v1/jobs", _cursor({"rank": 3})),  # a cursor of another list
        ("/v1/jobs", _cursor([1, 2])),
        ("/v1/jobs", "%%%not-base64"),
        ("/v1/jobs", "A" * 5000),
    ],
)
def test_forged_cursors_are_422(client, alice, path, cursor):
    body = _error(client.get(path, headers=alice, params={"cursor": cursor}), 422, "INVALID_CURSOR")
    assert "cursor" in body["detail"]


@pytest.mark.torch
@pytest.mark.parametrize("rank", [True, 2**40, -1, "5", 1.5])
def test_forged_score_cursors_are_422(client, alice, dataset_id, settings, rank):
    job = submit(client, alice, dataset_id).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    r = client.get(f"/v1/jobs/{job['id']}/scores", headers=alice, params={"cursor": _cursor({"rank": rank})})
    _error(r, 422, "INVALID_CURSOR")


def test_unknown_routes_and_methods_answer_in_the_error_shape(client, alice):
    _error(client.get("/v1/nothing", headers=alice), 404, "NOT_FOUND")
    r = client.put("/v1/jobs", headers=alice)
    _error(r, 405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == "GET, POST"  # both routes of the path, not only the first that matched
    assert client.post(f"/v1/jobs/{uuid.uuid4()}", headers=alice).headers["allow"] == "DELETE, GET"


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(tmp_path, db_url):
    app = create_app(Settings(data_dir=tmp_path / "d", database_url=db_url, rate_limit=12))  # bursts of 10
    with TestClient(app) as client:
        alice = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        bob = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'bob')}"}
        statuses = [client.get("/v1/jobs", headers=alice).status_code for _ in range(12)]
        assert statuses[:10] == [200] * 10 and 429 in statuses[10:]
        r = client.get("/v1/jobs", headers=alice)
        _error(r, 429, "RATE_LIMITED")
        assert int(r.headers["retry-after"]) >= 1
        assert client.get("/v1/jobs", headers=bob).status_code == 200  # per key


def test_uploads_past_the_concurrency_bound_get_503_with_retry_after(client, alice, tmp_path):
    slots = client.app.state.upload_slots
    slots.active = slots.limit  # as if that many were streaming now
    try:
        files = dataset_files(tmp_path, n=8)
        r = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))})
        _error(r, 503, "BUSY")
        assert r.headers["retry-after"]
    finally:
        slots.active = 0
    assert count_rows(client.app.state.sessionmaker, Dataset) == 0
    assert client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).status_code == 201


def test_a_database_that_does_not_answer_is_503_json(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "d", database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with TestClient(app) as client:
        r = client.get("/v1/jobs", headers={"Authorization": "Bearer htl_whatever"})
        _error(r, 503, "DATABASE_UNAVAILABLE")
        assert r.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["code"] == "NOT_READY"


def test_an_unexpected_error_is_a_500_in_the_error_shape(app, alice, monkeypatch):
    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(queries, "list_jobs", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = _error(client.get("/v1/jobs", headers=alice), 500, "INTERNAL")
        assert "boom" not in body["detail"]  # nothing internal leaks


@pytest.mark.torch
def test_deleting_a_dataset_waits_for_its_jobs_then_removes_rows_and_files(client, alice, bob, dataset_id, settings):
    factory = client.app.state.sessionmaker
    with factory() as session:
        storage_key = session.get(Dataset, uuid.UUID(dataset_id)).storage_key
    store = client.app.state.store
    assert store.path(storage_key).is_dir()
    job = submit(client, alice, dataset_id).json()
    _error(client.delete(f"/v1/datasets/{dataset_id}", headers=alice), 409, "CONFLICT")
    _error(client.delete(f"/v1/jobs/{job['id']}", headers=alice), 409, "CONFLICT")
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    assert store.path(f"jobs/{job['id']}").is_dir()
    _error(client.delete(f"/v1/datasets/{dataset_id}", headers=bob), 404, "NOT_FOUND")
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 204
    assert not store.path(storage_key).exists() and not store.path(f"jobs/{job['id']}").exists()
    for model in (Dataset, Image, Job, Score):
        assert count_rows(factory, model) == 0, model
    _error(client.get(f"/v1/datasets/{dataset_id}", headers=alice), 404, "NOT_FOUND")


@pytest.mark.torch
def test_deleting_a_finished_job_removes_its_results_and_files(client, alice, dataset_id, settings):
    job = submit(client, alice, dataset_id).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
    assert count_rows(client.app.state.sessionmaker, Score) == 0
    assert not client.app.state.store.path(f"jobs/{job['id']}").exists()
    _error(client.get(f"/v1/jobs/{job['id']}", headers=alice), 404, "NOT_FOUND")
    assert client.get(f"/v1/datasets/{dataset_id}", headers=alice).status_code == 200  # the dataset stays


def test_keys_list_and_revoke_from_the_command_line(tmp_path, capsys):
    from app.cli import main
    from app.db.migrate import upgrade

    data = tmp_path / "svc"
    args = ["--data-dir", str(data)]
    data.mkdir()
    upgrade(f"sqlite:///{(data / 'htl.db').resolve()}")
    assert main(["keys", "create", "--owner", "carol", *args]) == 0
    key = capsys.readouterr().out.strip()
    assert main(["keys", "list", *args]) == 0
    listing = capsys.readouterr().out
    assert key[:12] in listing and key not in listing and "carol" in listing
    app = create_app(Settings(data_dir=data))
    with TestClient(app) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert main(["keys", "revoke", key[:12], *args]) == 0
        _error(client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}), 401, "UNAUTHORIZED")
    assert main(["keys", "revoke", key[:12], *args]) == 1  # nothing live left to revoke
    assert main(["keys", "revoke", "htl_", *args]) == 2  # too short to name one key


def test_staging_folders_of_abandoned_uploads_are_removed_at_start(tmp_path, db_url):
    import os
    import time

    settings = Settings(data_dir=tmp_path / "d", database_url=db_url)
    settings.ensure_dirs()
    old, fresh = settings.uploads / "killed-mid-upload", settings.uploads / "in-flight"
    for folder in (old, fresh):
        (folder / "unpacked" / "images").mkdir(parents=True)
        (folder / "archive").write_bytes(b"partial")
    hours_ago = time.time() - 3600
    for path in [old, *old.rglob("*")]:
        os.utime(path, (hours_ago, hours_ago))
    with TestClient(create_app(settings)):
        pass
    assert not old.exists() and fresh.exists()


def test_a_job_estimated_over_the_memory_or_disk_limit_is_422_naming_both(tmp_path, db_url):
    app = create_app(
        Settings(
            data_dir=tmp_path / "d", database_url=db_url, max_job_memory_bytes=2 * 1024**3, max_job_disk_bytes=1024**3
        )
    )
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        ds = client.post(
            "/v1/datasets", headers=key, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=8)))}
        ).json()
        body = _error(
            submit(client, key, ds["id"], {**TINY, "image_size": 1024, "model": {"width": 16}}), 422, "INVALID_INPUT"
        )
        assert "HTL_MAX_JOB_MEMORY_BYTES" in body["detail"] and "GiB" in body["detail"]
        wide = {
            **TINY,
            "model": {"arch": "deeplabv3_resnet50"},
            "train": {"epochs": 1, "batch_size": 2, "seeds": list(range(10))},
            "prune": {"sparsities": [0.1 * k for k in range(1, 10)]},
        }
        body = _error(submit(client, key, ds["id"], wide), 422, "INVALID_INPUT")
        assert "HTL_MAX_JOB_DISK_BYTES" in body["detail"]
        assert submit(client, key, ds["id"]).status_code == 202


def test_the_memory_limit_defaults_to_a_share_of_the_host(monkeypatch):
    from app.core import settings as settings_module

    monkeypatch.setattr(settings_module, "host_memory_bytes", lambda: 8 * 1024**3)
    assert Settings().job_memory_limit == int(settings_module.HOST_MEMORY_SHARE * 8 * 1024**3)
    assert Settings(max_job_memory_bytes=123456).job_memory_limit == 123456


@pytest.mark.torch  # the worker's unit code imports ml
def test_a_worker_with_less_memory_than_a_job_needs_fails_it_saying_why_before_training(
    client, alice, dataset_id, settings
):
    job = submit(client, alice, dataset_id, {**TINY, "image_size": 256}).json()["id"]
    small = settings.model_copy(
        update={"max_job_memory_bytes": 16 * 1024**2}
    )  # a 16 MiB worker host; the job needs ~58 MB
    assert execute_job(uuid.UUID(job), settings=small, worker="htl-small@host") == "failed"
    ended = client.get(f"/v1/jobs/{job}", headers=alice).json()
    assert (
        ended["status"] == "failed"
        and "this worker cannot run it" in ended["error"]
        and "HTL_MAX_JOB_MEMORY_BYTES" in ended["error"]
    )
    assert {u["status"] for u in ended["units"]} <= {"failed", "cancelled"}
    assert not (settings.artifacts / "jobs" / job).exists()  # nothing was trained


def test_a_split_that_leaves_nothing_to_train_on_is_refused_at_submission(client, alice, tmp_path):
    ds = client.post(
        "/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=4)))}
    ).json()
    body = _error(
        submit(client, alice, ds["id"], {**TINY, "split": {"val_fraction": 0.25, "test_fraction": 0.5}}),
        422,
        "INVALID_INPUT",
    )
    assert "fewer than 2 are left to train on" in body["detail"]


# PostgreSQL's text and jsonb hold no NUL: each place one can arrive answers 422 before a query sees it
NUL_URLS = [
    "/v1/jobs?cursor=%00",
    "/v1/jobs/{job}/metrics?model=%00",
    "/v1/jobs/{job}/checkpoints/dense%00",
    "/v1/jobs/{job}/images/a%00b",
    "/v1/jobs/{job}/images/a/overlay.png?layers=dense%00",
    "/v1/datasets/{job}%00",
]


@pytest.mark.parametrize("url", NUL_URLS)
def test_a_nul_in_a_url_is_422(client, alice, url):
    body = _error(client.get(url.format(job=uuid.uuid4()), headers=alice), 422, "INVALID_INPUT")
    assert "NUL" in body["detail"]


@pytest.mark.parametrize(
    "spec", [{"weak": {"positive": ["mel\u0000"]}}, {"attributes": ["\u0000"]}, {"split": {"group_column": "a\u0000"}}]
)
def test_a_nul_in_a_spec_is_422_and_leaves_no_job(client, alice, dataset_id, spec):
    body = _error(submit(client, alice, dataset_id, spec), 422, "INVALID_INPUT")
    assert "NUL" in body["detail"]
    assert count_rows(client.app.state.sessionmaker, Job) == 0


def test_a_nul_in_an_upload_name_or_a_metadata_cell_is_422_and_leaves_nothing(client, alice, tmp_path, settings):
    files = dataset_files(tmp_path, n=4)
    body = _error(
        client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}, data={"name": "a\x00b"}),
        422,
        "INVALID_INPUT",
    )
    assert "NUL" in body["detail"]
    first_id = next(p.split("/")[1].rsplit(".", 1)[0] for p in files if p.startswith("images/"))
    files["metadata.csv"] = f"image_id,site\n{first_id},fa\x00ce\n".encode()
    body = _error(
        client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}), 422, "INVALID_INPUT"
    )
    assert "NUL" in body["detail"] and "line 2" in body["detail"]
    assert (
        count_rows(client.app.state.sessionmaker, Dataset) == 0
        and count_rows(client.app.state.sessionmaker, Image) == 0
    )
    assert not any(settings.uploads.iterdir())


@pytest.mark.torch
@pytest.mark.parametrize("path, key", [("evaluations", "image_id"), ("checkpoints", "name")])
def test_a_cursor_holding_a_nul_is_422(client, alice, finished_job, path, key):
    _error(
        client.get(f"/v1/jobs/{finished_job}/{path}", headers=alice, params={"cursor": _cursor({key: "a\x00"})}),
        422,
        "INVALID_CURSOR",
    )


def test_a_multipart_body_to_a_json_route_is_held_to_the_json_limit_with_or_without_a_key(tmp_path, db_url):
    app = create_app(Settings(data_dir=tmp_path / "d", database_url=db_url, max_json_bytes=4096))
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        for headers in ({}, key):
            r = client.post("/v1/jobs", headers=headers, files={"file": ("x.bin", b"\0" * 100_000)})
            _error(r, 413, "TOO_LARGE")
        # the upload route still streams its multipart body past the JSON limit
        files = dataset_files(tmp_path, n=4)
        assert client.post("/v1/datasets", headers=key, files={"file": ("d.zip", make_zip(files))}).status_code == 201


@pytest.mark.parametrize(
    "path", ["/v1/jobs", "/v1/datasets?limit=1", f"/v1/jobs/{uuid.uuid4()}", "/v1/job-spec", "/docs", "/", "/healthz"]
)
def test_every_answer_forbids_sniffing_and_framing_and_the_api_forbids_storing(client, alice, path):
    r = client.get(path, headers=alice)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    if path.startswith("/v1/"):
        assert r.headers["cache-control"] == "no-store", r.headers


@pytest.mark.torch
def test_csv_png_and_checkpoint_answers_are_not_stored(client, alice, finished_job):
    first = client.get(f"/v1/jobs/{finished_job}/scores", headers=alice).json()["items"][0]["image_id"]
    for path, accept in (
        (f"/v1/jobs/{finished_job}/scores", "text/csv"),
        (f"/v1/jobs/{finished_job}/checkpoints/dense", "*/*"),
        (f"/v1/jobs/{finished_job}/images/{first}/overlay.png", "image/png"),
    ):
        r = client.get(path, headers={**alice, "Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] in (
            accept,
            "application/octet-stream",
        ), (path, r.headers)
        assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff", (
            path,
            r.headers,
        )


@pytest.mark.torch
def test_the_scores_csv_has_a_column_for_every_key_of_any_row(client, alice, finished_job, session_factory):
    from sqlalchemy import update

    with session_factory() as session:  # the hardest image has no metadata row and no subgroup
        session.execute(
            update(Score)
            .where(Score.job_id == uuid.UUID(finished_job), Score.rank == 1)
            .values(attributes={}, subgroups={})
        )
        session.commit()
    header = (
        client.get(f"/v1/jobs/{finished_job}/scores", headers={**alice, "Accept": "text/csv"})
        .text.splitlines()[0]
        .split(",")
    )
    assert "attr:lesion_id" in header and "attr:site" in header and any(c.startswith("group:") for c in header), header
