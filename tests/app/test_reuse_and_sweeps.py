"""Re-use and sweeps through the API, with the worker's own code run in this process: a job
differing from an earlier one only in attention copies its dense, label-check and score outputs
(and runs none of those units), gives the same dense metrics and HTL scores, and keeps its
checkpoints when the first job is deleted; another owner, another dense setting or reuse false
re-use nothing; a sweep submits its variants as their shared dense units become ready."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from sqlalchemy import update

from app.db.models import Job, Sweep, SweepVariant
from tests.app.archives import dataset_files, make_zip
from tests.app.conftest import count_rows
from tests.app.helpers import TINY
from worker.tasks import execute_job

pytestmark = pytest.mark.torch

SPEC = {
    **TINY,
    "split": {"group_column": "lesion_id", "test_fraction": 0.2},
    "train": {"epochs": 1, "batch_size": 8, "seeds": [0, 1]},
    "label_check": {"enabled": True, "folds": 2},
    "attention": {"control": "random", "factor": 6},
}
VARIANT = {**SPEC, "attention": {"control": "random", "factor": 2}}
REUSED = {"dense[0]", "dense[1]", "label_check[0]", "label_check[1]", "score"}


def _submit(client, headers, dataset_id, spec, **extra):
    r = client.post("/v1/jobs", headers=headers, json={"dataset_id": dataset_id, "spec": spec, **extra})
    assert r.status_code == 202, r.text
    return r.json()


def _run(settings, job_id) -> None:
    assert execute_job(uuid.UUID(job_id), settings=settings, worker="w") == "succeeded"


def _reused(job: dict) -> dict[str, str | None]:
    return {u["name"]: u["reused_from"] for u in job["units"]}


def _scores(client, headers, job_id) -> list[dict]:
    r = client.get(f"/v1/jobs/{job_id}/scores", headers=headers, params={"limit": 1000})
    assert r.status_code == 200, r.text
    return [{k: v for k, v in s.items() if k != "attended"} for s in r.json()["items"]]


def _no_shared_units(monkeypatch) -> None:
    """From here on a dense, label-check or score unit run in this process fails the job."""
    from ml import pipeline  # torch: imported here, so the API-only install can still collect this module

    def refuse(job, seed):
        raise AssertionError("a re-used unit ran")

    for kind in ("dense", "label_check", "score"):
        monkeypatch.setitem(pipeline.RUNNERS, kind, refuse)


def test_a_job_differing_only_in_attention_reuses_and_survives_the_first_ones_deletion(
    client, alice, bob, dataset_id, settings, tmp_path, monkeypatch
):
    first = _submit(client, alice, dataset_id, SPEC)
    assert not any(_reused(first).values())
    _run(settings, first["id"])

    _no_shared_units(monkeypatch)
    second = _submit(client, alice, dataset_id, VARIANT)
    assert second["reused_from"] == first["id"]
    assert {n for n, r in _reused(second).items() if r} == REUSED
    assert all(r == first["id"] for n, r in _reused(second).items() if n in REUSED)
    statuses = {u["name"]: u["status"] for u in second["units"]}
    assert {statuses[n] for n in REUSED} == {"succeeded"} and statuses["select"] == "queued"
    _run(settings, second["id"])
    job = client.get(f"/v1/jobs/{second['id']}", headers=alice).json()
    assert job["status"] == "succeeded"
    assert all(u["attempt"] == 0 for u in job["units"] if u["name"] in REUSED)  # no worker took them up

    assert _scores(client, alice, second["id"]) == _scores(client, alice, first["id"])
    metrics = {
        j: client.get(f"/v1/jobs/{j}/metrics", headers=alice).json()["models"] for j in (first["id"], second["id"])
    }
    for model in ("dense-s0", "dense-s1", "pruned@0.5-s0", "pruned@0.9-s1"):
        assert metrics[first["id"]][model] == metrics[second["id"]][model], model
    assert metrics[first["id"]]["attended-s0"] != metrics[second["id"]]["attended-s0"]  # its own attention ran

    stated = {c["name"]: c for c in client.get(f"/v1/jobs/{second['id']}/checkpoints", headers=alice).json()["items"]}
    before = {
        c["name"]: c["sha256"] for c in client.get(f"/v1/jobs/{first['id']}/checkpoints", headers=alice).json()["items"]
    }
    assert stated["dense-s0"]["sha256"] == before["dense-s0"]
    assert client.delete(f"/v1/jobs/{first['id']}", headers=alice).status_code == 204
    for name in ("dense-s0", "pruned@0.5-s1", "attended-s0"):
        r = client.get(f"/v1/jobs/{second['id']}/checkpoints/{name}", headers=alice)
        assert r.status_code == 200, (name, r.text)
        assert hashlib.sha256(r.content).hexdigest() == stated[name]["sha256"]

    # the survivor lends its outputs in turn; another dense setting, reuse false and another owner do not re-use
    third = _submit(client, alice, dataset_id, SPEC)
    assert third["reused_from"] == second["id"]
    assert not any(
        _reused(_submit(client, alice, dataset_id, {**VARIANT, "train": {**SPEC["train"], "epochs": 2}})).values()
    )
    assert not any(_reused(_submit(client, alice, dataset_id, VARIANT, reuse=False)).values())
    files = dataset_files(tmp_path / "bob", n=40)
    r = client.post("/v1/datasets", headers=bob, files={"file": ("d.zip", make_zip(files))}, data={"name": "d"})
    assert r.status_code == 201, r.text
    assert _submit(client, bob, r.json()["id"], VARIANT)["reused_from"] is None


def test_a_sweep_submits_its_variants_once_the_shared_dense_units_are_done(
    client, alice, dataset_id, settings, session_factory
):
    vary = {"attention.factor": [2, 6], "attention.mode": ["from_scratch", "fine_tune"]}
    select = {"split": "validation", "on": "focus"}
    body = {"dataset_id": dataset_id, "spec": SPEC, "vary": vary, "name": "s", "select": select}
    r = client.post("/v1/sweeps", headers=alice, json=body)
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert sweep["select"] == select
    lead = sweep["variants"][0]
    assert lead["state"] == "submitted" and [v["overrides"] for v in sweep["variants"]] == [
        {"attention.factor": 2, "attention.mode": "from_scratch"},
        {"attention.factor": 2, "attention.mode": "fine_tune"},
        {"attention.factor": 6, "attention.mode": "from_scratch"},
        {"attention.factor": 6, "attention.mode": "fine_tune"},
    ]
    assert all(v["state"] == "pending" and v["waits_for"] == lead["job_id"] for v in sweep["variants"][1:])

    _run(settings, lead["job_id"])  # its score unit's completion submits the others
    sweep = client.get(f"/v1/sweeps/{sweep['id']}", headers=alice).json()
    assert [v["state"] for v in sweep["variants"]] == ["submitted"] * 4
    waiting = sweep["selection"]
    assert waiting["job_id"] is None and waiting["sentence"].startswith("Waiting for 3 of 4 variants")
    for variant in sweep["variants"][1:]:
        job = client.get(f"/v1/jobs/{variant['job_id']}", headers=alice).json()
        assert job["reused_from"] == lead["job_id"] and job["sweep_id"] == sweep["id"]
        _run(settings, variant["job_id"])

    sweep = client.get(f"/v1/sweeps/{sweep['id']}", headers=alice).json()
    comparison = sweep["comparison"]
    assert comparison["fields"] == ["attention.factor", "attention.mode"]
    assert [row["values"] for row in comparison["rows"]] == [v["overrides"] for v in sweep["variants"]]
    for row in comparison["rows"]:
        headline = row["headline"]
        assert row["status"] == "succeeded" and headline["split"] == "test"
        for key in ("attended_vs_dense", "attended_vs_control"):
            assert isinstance(headline[key]["overall"], float) and isinstance(headline[key]["focus"], float)
        assert set(headline["worst_decile"]) == {"dense", "attended", "control"}
        assert headline["verdict"].startswith("On the focus set")
    _check_selection(client, alice, sweep)
    listed = client.get(f"/v1/datasets/{dataset_id}/comparison", headers=alice).json()
    assert len(listed["rows"]) == 4 and "attention.factor" in listed["fields"]
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers={"Authorization": "Bearer nope"}).status_code == 401


def _check_selection(client, headers, sweep: dict) -> None:
    """The selection is the variant with the best attended - control on the validation focus set (read
    from each job's own validation metrics), reported with that job's test figures."""
    on_validation, on_test = {}, {}
    for v in sweep["variants"]:
        job = v["job_id"]
        validation = client.get(f"/v1/jobs/{job}/metrics", headers=headers, params={"split": "validation"}).json()
        test = client.get(f"/v1/jobs/{job}/metrics", headers=headers, params={"split": "test"}).json()
        on_validation[job] = validation["attended_vs_control"]["focus"]["difference"]
        on_test[job] = test["attended_vs_control"]["focus"]["difference"]
    chosen = sweep["selection"]
    best = max(on_validation.values())
    assert chosen["job_id"] == next(j for j, v in on_validation.items() if v == best)
    assert chosen["split"] == "validation" and chosen["on"] == "focus" and chosen["compared"] == 4
    assert chosen["value"] == pytest.approx(best)
    assert chosen["test"]["attended_vs_control"]["focus"]["difference"] == pytest.approx(on_test[chosen["job_id"]])
    assert chosen["test"]["verdict"].startswith("On the focus set")
    assert "among 4 variants" in chosen["sentence"] and "On test" in chosen["sentence"]


def test_a_sweep_variant_that_does_not_fit_is_refused_whole(client, alice, bob, dataset_id, session_factory):
    r = client.post(
        "/v1/sweeps",
        headers=alice,
        json={"dataset_id": dataset_id, "spec": SPEC, "vary": {"attention.factor": [2, -1]}},
    )
    assert r.status_code == 422, r.text
    assert "attention.factor" in r.text and "-1" in r.text
    r = client.post(
        "/v1/sweeps", headers=alice, json={"dataset_id": dataset_id, "spec": SPEC, "vary": {"attention.nonsense": [1]}}
    )
    assert r.status_code == 422 and "nonsense" in r.text, r.text
    r = client.post(
        "/v1/sweeps",
        headers=alice,
        json={"dataset_id": dataset_id, "spec": SPEC, "vary": {"attention.factor": [2]}, "select": {"split": "test"}},
    )
    assert r.status_code == 422 and "select" in r.text, r.text  # a choice is made on validation only
    assert count_rows(session_factory, Sweep) == count_rows(session_factory, SweepVariant) == 0
    assert count_rows(session_factory, Job) == 0
    r = client.post(
        "/v1/sweeps", headers=bob, json={"dataset_id": dataset_id, "spec": SPEC, "vary": {"attention.factor": [2]}}
    )
    assert r.status_code == 404, r.text


def test_pending_variants_are_skipped_when_their_lead_fails(client, alice, dataset_id, settings, session_factory):
    from app.services import jobs as job_service
    from app.services import sweeps

    r = client.post(
        "/v1/sweeps", headers=alice, json={"dataset_id": dataset_id, "spec": SPEC, "vary": {"attention.factor": [2, 6]}}
    )
    sweep = r.json()
    lead = uuid.UUID(sweep["variants"][0]["job_id"])
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == lead).values(status="running"))  # as a worker's claim leaves it
        assert job_service.fail(session, job_id=lead, error="boom")
        assert sweeps.advance(session, settings=settings, store=client.app.state.store) == []
        session.commit()
    variant = client.get(f"/v1/sweeps/{sweep['id']}", headers=alice).json()["variants"][1]
    assert variant["state"] == "skipped" and "ended failed" in variant["error"] and "boom" in variant["error"]
