"""The client and the `htl` client commands against a real `htl serve` with its worker, as a user
runs them: upload a folder, submit with --wait, fetch scores as CSV, download a checkpoint."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys

import pytest

from client import HtlClient, HtlError
from ml.synthetic import make_dataset

from .test_service_under_load import Server

SPEC = {
    "image_size": 32,
    "model": {"width": 4},
    "train": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsities": [0.5]},
}

# a real `htl serve` with its worker trains the jobs these tests drive
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("client"), no_worker=False).start()
    yield server
    server.stop()


def htl(service, *args: str) -> subprocess.CompletedProcess:
    env = {**service.env, "HTL_SERVER": service.base, "HTL_API_KEY": service.key}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_the_htl_commands_drive_a_job_from_folder_to_checkpoint(service, tmp_path):
    folder = make_dataset(tmp_path / "mydata", n=40, size=32, seed=2)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))

    up = htl(service, "datasets", "upload", str(folder), "--name", "mine")
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.split()[1].rstrip(":")
    assert "40 images, 40 masks" in up.stdout

    submitted = htl(service, "jobs", "submit", dataset_id, "--spec", str(spec), "--wait")
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    job_id = submitted.stdout.split()[1].rstrip(":")
    assert f"job {job_id}: succeeded" in submitted.stdout

    listed = htl(service, "jobs", "list", "--status", "succeeded")
    assert job_id in listed.stdout
    shown = json.loads(htl(service, "jobs", "show", job_id).stdout)
    assert shown["status"] == "succeeded" and shown["spec"]["split"]["group_column"] == "lesion_id"

    table = htl(service, "scores", job_id, "--format", "csv")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert len(rows) == 32 and [int(r["rank"]) for r in rows] == list(range(1, 33))
    assert {"image_id", "htl_score", "is_htl", "pruned@0.5", "attr:site"} <= set(rows[0])
    as_json = json.loads(htl(service, "scores", job_id, "--htl-only").stdout)
    assert [s["image_id"] for s in as_json] == [r["image_id"] for r in rows if r["is_htl"] == "True"]

    got = htl(service, "checkpoints", "download", job_id, "attended", "--out", str(tmp_path))
    assert got.returncode == 0, got.stderr
    data = (tmp_path / "attended.safetensors").read_bytes()
    with HtlClient(service.base, service.key) as api:
        stated = {c["name"]: c["sha256"] for c in api.checkpoints(job_id)}
    assert hashlib.sha256(data).hexdigest() == stated["attended"]


def test_client_errors_carry_the_api_code_and_the_commands_say_them(service):
    with HtlClient(service.base, service.key) as api:
        with pytest.raises(HtlError) as e:
            api.job("00000000-0000-0000-0000-000000000000")
        assert e.value.status == 404 and e.value.code == "NOT_FOUND"
        with pytest.raises(HtlError) as e:
            api.submit_job("00000000-0000-0000-0000-000000000000", {"image_size": 100})
        assert e.value.status == 422 and "image_size" in str(e.value)
    wrong = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "list", "--server", service.base, "--api-key", "htl_nope"],
        env=service.env,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 1 and "401 UNAUTHORIZED" in wrong.stderr
    version = subprocess.run([sys.executable, "-m", "app.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("htl-miner ")


def test_scores_piped_into_a_reader_that_stops_early_end_quietly(service, tmp_path):
    with HtlClient(service.base, service.key) as api:
        dataset = api.upload_dataset(make_dataset(tmp_path / "d", n=40, size=32, seed=3))
        job = api.wait(api.submit_job(dataset["id"], SPEC)["id"])
    env = {**service.env, "HTL_SERVER": service.base, "HTL_API_KEY": service.key}
    piped = subprocess.run(
        f"{sys.executable} -m app.cli scores {job['id']} --format csv | head -2",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert piped.stdout.count("\n") == 2 and "Broken pipe" not in piped.stderr


def test_the_annotation_queue_command_exports_the_unlabeled_images_as_csv(service, tmp_path):
    folder = make_dataset(tmp_path / "semi", n=40, size=32, seed=4)
    for mask in sorted((folder / "masks").iterdir())[:12]:  # twelve images without a mask
        mask.unlink()
    with HtlClient(service.base, service.key) as api:
        dataset = api.upload_dataset(folder)
        job = api.wait(api.submit_job(dataset["id"], {**SPEC, "setting": "semi_supervised"})["id"])
        unlabeled = {s["image_id"] for s in api.scores(job["id"]) if not s["labeled"]}
    out = tmp_path / "queue.csv"
    done = htl(service, "annotation-queue", job["id"], "--strategy", "htl", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert f"{len(rows)} images, htl order" in done.stdout and unlabeled and {r["image_id"] for r in rows} == unlabeled
    assert [float(r["value"]) for r in rows] == sorted((float(r["value"]) for r in rows), reverse=True)
    shuffled = json.loads(
        htl(service, "annotation-queue", job["id"], "--strategy", "random", "--format", "json").stdout
    )
    assert {i["image_id"] for i in shuffled} == unlabeled and all(i["strategy"] == "random" for i in shuffled)
    refused = htl(service, "annotation-queue", job["id"], "--strategy", "mc_dropout")
    assert refused.returncode == 1 and "404" in refused.stderr and "mc_dropout" in refused.stderr


def test_htl_sweep_runs_the_variants_and_shows_them_side_by_side(service, tmp_path):
    folder = make_dataset(tmp_path / "sweep", n=40, size=32, seed=7)
    spec = tmp_path / "base.json"
    spec.write_text(json.dumps({**SPEC, "split": {"test_fraction": 0.25}, "attention": {"control": "random"}}))
    with HtlClient(service.base, service.key) as api:
        dataset = api.upload_dataset(folder)["id"]
    bad = htl(service, "sweep", dataset, "--vary", "attention.factor")
    assert bad.returncode != 0 and "FIELD=VALUE1,VALUE2" in bad.stderr
    refused = htl(service, "sweep", dataset, "--spec", str(spec), "--vary", "attention.factor=2,-3")
    assert refused.returncode == 1 and "422" in refused.stderr and "attention.factor" in refused.stderr

    ran = htl(
        service, "sweep", dataset, "--spec", str(spec), "--vary", "attention.factor=2,6",
        "--vary", "attention.mode=from_scratch,fine_tune", "--wait",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "4 variants, 1 submitted, 3 waiting for the dense units they share" in ran.stdout
    sweep_id = ran.stdout.split()[1].rstrip(":")
    shown = htl(service, "sweep", "show", sweep_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = lines[1].split()
    assert header[:5] == ["variant", "job", "status", "attention.factor", "attention.mode"]
    rows = [line.split() for line in lines[2:6]]  # the values as the jobs ran them: factor is a float
    assert [r[3:5] for r in rows] == [
        ["2.0", '"from_scratch"'],
        ["2.0", '"fine_tune"'],
        ["6.0", '"from_scratch"'],
        ["6.0", '"fine_tune"'],
    ]
    assert all(r[2] == "succeeded" for r in rows) and rows[0][-1] == "-"
    assert {r[-1] for r in rows[1:]} == {rows[0][1]}  # the other three re-used the first's dense units
    assert sum(line.startswith("variant ") and "random control" in line for line in lines) == 4
