import hashlib
import uuid

import numpy as np
import pytest

from app.db.models import Checkpoint, Job, Metric, Score
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .conftest import count_rows
from .helpers import TINY, submit


def test_submit_answers_202_with_a_queued_job(client, alice, dataset_id):
    r = submit(client, alice, dataset_id)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["stage"] is None
    assert job["spec"]["prune"]["sparsities"] == [0.5, 0.9] and job["spec"]["htl"]["top_fraction"] == 0.1
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "queued"


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"prune": {"sparsities": [0.5, 1.2]}}, ["body", "spec", "prune", "sparsities"]),
        ({"trian": {}}, ["body", "spec", "trian"]),
        ({"prune": {"sparsities": []}}, ["body", "spec", "prune", "sparsities"]),
    ],
)
def test_a_bad_spec_is_422_naming_the_field(client, alice, dataset_id, session_factory, spec, field):
    r = submit(client, alice, dataset_id, spec)
    assert r.status_code == 422
    assert any(e["loc"] == field for e in r.json()["detail"]), r.json()
    assert count_rows(session_factory, Job) == 0


def test_a_spec_that_does_not_fit_the_dataset_is_422(client, alice, dataset_id, session_factory):
    r = submit(client, alice, dataset_id, {"split": {"group_column": "patient"}})
    assert r.status_code == 422 and "spec.split.group_column" in r.json()["detail"] and "patient" in r.json()["detail"]
    r = submit(client, alice, dataset_id, {"attributes": ["skin_type"]})
    assert r.status_code == 422 and "skin_type" in r.json()["detail"]
    assert count_rows(session_factory, Job) == 0


def test_a_supervised_job_needs_masks(client, alice, tmp_path):
    files = {k: v for k, v in dataset_files(tmp_path, n=8).items() if not k.startswith("masks/SYN_0000")}
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).json()
    r = submit(client, alice, ds["id"])
    assert r.status_code == 422 and "needs a mask for every image" in r.json()["detail"]


def test_unknown_dataset_is_404(client, alice):
    r = submit(client, alice, str(uuid.uuid4()))
    assert r.status_code == 404


def test_jobs_list_filters_and_paginates(client, alice, dataset_id):
    ids = [submit(client, alice, dataset_id).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice)
    pages, cursor = [], None
    while True:
        r = client.get("/v1/jobs", headers=alice, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([j["id"] for j in r["items"]])
        cursor = r["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [2, 2, 1] and sum(pages, []) == ids[::-1]
    queued = client.get("/v1/jobs", headers=alice, params={"status": "queued"}).json()["items"]
    assert {j["id"] for j in queued} == set(ids[1:])
    cancelled = client.get("/v1/jobs", headers=alice, params={"status": "cancelled", "dataset_id": dataset_id}).json()[
        "items"
    ]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", headers=alice, params={"status": "lost"}).status_code == 422
    assert client.get("/v1/jobs", headers=alice, params={"cursor": "not-a-cursor"}).status_code == 422


def test_cancelling_a_queued_job_is_immediate_and_its_delivery_then_does_nothing(client, alice, dataset_id, settings):
    job = submit(client, alice, dataset_id).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "skipped"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 409


def test_results_wait_for_success(client, alice, dataset_id):
    job = submit(client, alice, dataset_id).json()
    for path in ("scores", "metrics", "subgroups", "checkpoints", "checkpoints/dense"):
        r = client.get(f"/v1/jobs/{job['id']}/{path}", headers=alice)
        assert r.status_code == 409 and "queued" in r.json()["detail"]


@pytest.mark.torch
def test_scores_paginate_by_rank_and_filter_htl(client, alice, finished_job):
    pages, cursor = [], None
    while True:
        r = client.get(
            f"/v1/jobs/{finished_job}/scores",
            headers=alice,
            params={"limit": 7, **({"cursor": cursor} if cursor else {})},
        )
        body = r.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            break
    items = sum(pages, [])
    assert [i["rank"] for i in items] == list(range(1, 33))  # 40 images, 8 validation
    assert set(items[0]) == {
        "image_id",
        "htl_score",
        "is_htl",
        "rank",
        "labeled",
        "per_sparsity",
        "scores",
        "attributes",
        "subgroups",
        "label_quality",
        "label_issue",
        "attended",
    }
    assert all(
        i["label_quality"] is not None and isinstance(i["label_issue"], bool) for i in items
    )  # supervised: every mask checked
    assert set(items[0]["per_sparsity"]) == {"0.5", "0.9"} and "site" in items[0]["attributes"]
    # the labels enrichment counted: age banded, lesion contrast (an image property) in quartiles
    assert {"site", "age", "image:lesion_contrast"} <= set(items[0]["subgroups"])
    assert all(i["subgroups"]["site"] == i["attributes"]["site"] for i in items)
    htl = client.get(f"/v1/jobs/{finished_job}/scores", headers=alice, params={"htl_only": True}).json()["items"]
    assert htl == [i for i in items if i["is_htl"]] and len(htl) == 3


@pytest.mark.torch
def test_metrics_cover_every_model_overall_and_per_subgroup(client, alice, finished_job):
    body = client.get(f"/v1/jobs/{finished_job}/metrics", headers=alice).json()
    assert set(body["models"]) == {"dense", "attended", "pruned@0.5", "pruned@0.9"}
    dense = body["models"]["dense"]
    assert dense["n"] == 8 and set(dense["overall"]) == {
        "dice",
        "jaccard",
        "threshold_jaccard",
        "box_iou",
        "sensitivity",
        "specificity",
        "hd95",
        "nsd",
    }
    # boundary metrics for the models a user would use, not for the pruned ones that only rank
    assert {"hd95", "nsd"}.isdisjoint(body["models"]["pruned@0.5"]["overall"])
    assert all({"hd95", "nsd"} <= set(g) for g in dense["subgroups"]["site"].values())
    assert set(dense["subgroups"]) == {
        "site",
        "sex",
        "age",
        "dx",
        "label_check",
    }  # label_check=ok: figures without label issues
    assert sum(g["n"] for g in dense["subgroups"]["sex"].values()) == 8
    assert body["label_check"]["enabled"] and body["label_check"]["checked"] == {"train": 32, "validation": 8}
    # the endpoint: no test split, so the focus set is on validation; no control, and the verdict says so
    assert body["focus"]["split"] == "validation" and body["attended_vs_dense"]["focus"]["n"] == body["focus"]["n"]
    assert "no random control was trained" in body["verdict"] and set(body["worst_decile"]) == {"dense", "attended"}
    assert body["seeds"] == [0] and body["attended_vs_dense"]["single_seed"] is True
    assert set(body["pruning"]) == {"0.5", "0.9"} and body["scorer_agreement"] == []


@pytest.mark.torch
def test_subgroups_report_enrichment_and_gap_closing(client, alice, finished_job):
    body = client.get(f"/v1/jobs/{finished_job}/subgroups", headers=alice).json()
    assert body["single_seed"] is True and body["seeds"] == [0]
    groups = body["enrichment"]["groups"]
    assert {g["attribute"] for g in groups} >= {"site", "sex", "age", "image:lesion_area", "image:brightness"}
    assert sum(g["htl"] for g in groups if g["attribute"] == "site") == body["enrichment"]["htl"] == 3
    assert all(0 <= g["p_adjusted"] <= 1 for g in groups)
    assert body["gap_closing"]["validation"]["overall"]["n"] == 8


def test_the_split_column_is_resolved_at_submission_and_a_missing_one_is_warned_about(
    client, alice, dataset_id, tmp_path
):
    auto = submit(client, alice, dataset_id, {**TINY, "split": {}}).json()
    assert auto["spec"]["split"]["group_column"] == "lesion_id" and auto["warnings"] == []
    files = dataset_files(tmp_path, n=16)
    lines = files["metadata.csv"].decode().splitlines()
    files["metadata.csv"] = (
        "\n".join(",".join(cell for k, cell in enumerate(line.split(",")) if k != 1) for line in lines) + "\n"
    ).encode()
    assert "lesion_id" not in files["metadata.csv"].decode().splitlines()[0]
    other = client.post(
        "/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}, data={"name": "no-lesions"}
    ).json()
    job = submit(client, alice, other["id"], {**TINY, "split": {}}).json()
    assert job["spec"]["split"]["group_column"] is None
    assert len(job["warnings"]) == 1 and "group_column" in job["warnings"][0]
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["warnings"] == job["warnings"]


@pytest.mark.torch
def test_a_controlled_job_reports_test_metrics_and_attended_vs_control(client, alice, dataset_id, settings):
    spec = {
        **TINY,
        "model": {"width": 8},
        "train": {"epochs": 5, "batch_size": 8},
        "split": {"test_fraction": 0.2},
        "attention": {"control": "random"},
        "prune": {"sparsities": [0.3, 0.999]},
    }
    job = submit(client, alice, dataset_id, spec).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    done = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    test = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice, params={"split": "test"}).json()
    assert test["split"] == "test" and test["splits"] == ["validation", "test"] and "control" in test["models"]
    assert test["attended_vs_control"]["overall"]["dice"] == pytest.approx(
        test["models"]["attended"]["overall"]["dice"] - test["models"]["control"]["overall"]["dice"]
    )
    # the pre-registered endpoint is on test; validation serves the same endpoint measured there
    assert test["focus"]["split"] == "test" and test["attended_vs_control"]["focus"]["n"] == test["focus"]["n"]
    assert (
        test["attended_vs_control"]["focus"]["ci95"] is None or len(test["attended_vs_control"]["focus"]["ci95"]) == 2
    )
    assert "random control" in test["verdict"] and set(test["worst_decile"]) == {"dense", "attended", "control"}
    validation = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()
    assert validation["split"] == "validation" and "test" not in validation["attended_vs_control"]
    assert (
        validation["focus"]["split"] == "validation"
        and validation["attended_vs_control"]["focus"]["split"] == "validation"
    )
    assert not set(validation["focus"]["images"]) & set(test["focus"]["images"])
    assert validation["pruning"]["0.999"]["degenerate"] is True, validation["pruning"]
    assert validation["degenerate_sparsities"] == [0.999]
    assert any("0.999" in w for w in done["warnings"])
    gap = client.get(f"/v1/jobs/{job['id']}/subgroups", headers=alice).json()["gap_closing"]
    assert set(gap) == {"validation", "test"}


@pytest.mark.torch
def test_test_metrics_of_a_job_without_a_test_split_are_404(client, alice, finished_job):
    r = client.get(f"/v1/jobs/{finished_job}/metrics", headers=alice, params={"split": "test"})
    assert r.status_code == 404 and "test_fraction" in r.json()["detail"]


@pytest.mark.torch
def test_other_scorers_reach_the_scores_endpoint(client, alice, dataset_id, settings):
    spec = {**TINY, "scorers": ["loss", "forgetting"], "train": {"epochs": 2, "batch_size": 8, "seeds": [0, 1]}}
    job = submit(client, alice, dataset_id, spec).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    items = client.get(f"/v1/jobs/{job['id']}/scores", headers=alice, params={"limit": 5}).json()["items"]
    assert set(items[0]["scores"]) == {"loss", "forgetting"}
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()
    assert metrics["seeds"] == [0, 1] and {"dense", "dense-s0", "dense-s1", "attended"} <= set(metrics["models"])
    assert metrics["attended_vs_dense"]["single_seed"] is False and len(metrics["scorer_agreement"]) == 3
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=alice).json()["items"]
    by_name = {c["name"]: (c["seed"], c["sparsity"]) for c in checkpoints}
    assert (
        by_name["pruned@0.9-s1"] == (1, 0.9)
        and by_name["dense-s0"] == (0, None)
        and by_name["attended-s1"] == (1, None)
    )


@pytest.mark.torch
def test_checkpoints_list_and_download_with_checksum(client, alice, finished_job):
    listing = client.get(f"/v1/jobs/{finished_job}/checkpoints", headers=alice).json()["items"]
    assert [c["name"] for c in listing] == ["attended", "dense", "pruned@0.5", "pruned@0.9"]
    assert [c["sparsity"] for c in listing] == [None, None, 0.5, 0.9]
    assert {c["seed"] for c in listing} == {0}
    first = client.get(f"/v1/jobs/{finished_job}/checkpoints", headers=alice, params={"limit": 3}).json()
    rest = client.get(
        f"/v1/jobs/{finished_job}/checkpoints", headers=alice, params={"cursor": first["next_cursor"]}
    ).json()
    assert [c["name"] for c in first["items"] + rest["items"]] == [c["name"] for c in listing]
    meta = listing[2]
    r = client.get(f"/v1/jobs/{finished_job}/checkpoints/pruned@0.5", headers=alice)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == meta["size_bytes"] == len(r.content)
    assert r.headers["x-checksum-sha256"] == meta["sha256"] == hashlib.sha256(r.content).hexdigest()
    assert r.headers["etag"] == f'"{meta["sha256"]}"'
    again = client.get(
        f"/v1/jobs/{finished_job}/checkpoints/pruned@0.5", headers={**alice, "If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert client.get(f"/v1/jobs/{finished_job}/checkpoints/nope", headers=alice).status_code == 404


@pytest.mark.torch
def test_a_second_run_of_a_finished_job_writes_nothing(client, alice, finished_job, settings, session_factory):
    counts = [count_rows(session_factory, m) for m in (Score, Metric, Checkpoint)]
    before = client.get(f"/v1/jobs/{finished_job}", headers=alice).json()
    assert execute_job(uuid.UUID(finished_job), settings=settings, worker="another") == "skipped"
    assert [count_rows(session_factory, m) for m in (Score, Metric, Checkpoint)] == counts
    assert client.get(f"/v1/jobs/{finished_job}", headers=alice).json() == before
    assert before["status"] == "succeeded" and before["progress"] == 1 and before["attempt"] == 1


@pytest.mark.torch
def test_a_failing_job_stores_a_readable_error(client, alice, dataset_id, settings):
    job = submit(client, alice, dataset_id).json()
    store = client.app.state.store
    dataset_dir = store.path(f"datasets/{dataset_id}")
    for mask in (dataset_dir / "masks").iterdir():
        mask.write_bytes(b"corrupted")
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "failed"
    failed = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert failed["status"] == "failed" and failed["finished_at"] is not None
    assert "cannot identify image file" in failed["error"]


@pytest.mark.torch
def test_semi_and_weak_jobs_through_the_same_endpoints(client, alice, tmp_path, settings):
    files = dataset_files(tmp_path, n=40)
    for k in [k for k in files if k.startswith("masks/SYN_0001")]:  # ten images lose their masks
        del files[k]
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).json()
    assert ds["n_masks"] == 30
    assert submit(client, alice, ds["id"]).status_code == 422  # supervised needs every mask
    semi = submit(client, alice, ds["id"], {**TINY, "setting": "semi_supervised"}).json()
    weak = submit(
        client,
        alice,
        ds["id"],
        {**TINY, "setting": "weakly_supervised", "weak": {"label_column": "dx", "positive": ["mel"]}},
    ).json()
    assert weak["spec"]["model"]["arch"] == "cnn"
    for job in (semi, weak):
        assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded", client.get(
            f"/v1/jobs/{job['id']}", headers=alice
        ).json()
    semi_scores = client.get(f"/v1/jobs/{semi['id']}/scores", headers=alice, params={"limit": 100}).json()["items"]
    unlabeled = {s["image_id"] for s in semi_scores if not s["labeled"]}
    assert unlabeled and all(i.startswith("SYN_0001") for i in unlabeled)
    weak_metrics = client.get(f"/v1/jobs/{weak['id']}/metrics", headers=alice).json()
    assert (
        "pointing" in weak_metrics["models"]["dense"]["overall"]
        and "auroc" in weak_metrics["models"]["dense"]["overall"]
    )
    guesses = weak_metrics["blank_guesses"]
    assert guesses["n"] > 0 and 0 < guesses["all_foreground"] < 1 and set(guesses["models"]) >= {"dense", "attended"}
    r = submit(
        client,
        alice,
        ds["id"],
        {**TINY, "setting": "weakly_supervised", "weak": {"label_column": "grade", "positive": ["x"]}},
    )
    assert r.status_code == 422 and "spec.weak.label_column" in r.json()["detail"]


@pytest.mark.torch
def test_per_image_evaluations_page_by_model_and_split(client, alice, dataset_id, settings):
    spec = {**TINY, "split": {"test_fraction": 0.2}}
    job = submit(client, alice, dataset_id, spec).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice, params={"split": "test"}).json()
    pages, cursor = [], None
    while True:
        params = {"model": "attended", "split": "test", "limit": 3, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"/v1/jobs/{job['id']}/evaluations", headers=alice, params=params).json()
        pages += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(pages) == metrics["models"]["attended"]["n"] and len({p["image_id"] for p in pages}) == len(pages)
    for name in ("dice", "hd95", "nsd"):
        mean = sum(p["metrics"][name] for p in pages) / len(pages)
        assert mean == pytest.approx(metrics["models"]["attended"]["overall"][name])
    assert all(p["metrics"]["hd95"] >= 0 and 0 <= p["metrics"]["nsd"] <= 1 for p in pages)
    missing = client.get(f"/v1/jobs/{job['id']}/evaluations", headers=alice, params={"model": "nope"})
    assert missing.status_code == 404 and "attended on test" in missing.json()["detail"]


@pytest.mark.torch
def test_gallery_image_detail_and_overlays(client, alice, bob, finished_job):
    import io as _io

    from PIL import Image as PILImage

    scores = client.get(f"/v1/jobs/{finished_job}/scores", headers=alice, params={"limit": 1000}).json()["items"]
    hardest = scores[0]["image_id"]
    detail = client.get(f"/v1/jobs/{finished_job}/images/{hardest}", headers=alice).json()
    assert (
        detail["rank"] == 1
        and detail["is_htl"]
        and detail["layers"] == ["gt", "dense", "pruned@0.5", "pruned@0.9", "oos"]
    )
    assert detail["layer_colours"]["gt"] == "#28dc3c" and len(set(detail["layer_colours"].values())) == 5
    assert detail["label_quality"] == scores[0]["label_quality"] and detail["attended"] == scores[0]["attended"]
    assert detail["subgroups"] == scores[0]["subgroups"]
    overlay = client.get(detail["links"]["overlay"], headers=alice)
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    drawn = PILImage.open(_io.BytesIO(overlay.content))
    plain = PILImage.open(_io.BytesIO(client.get(detail["links"]["image"], headers=alice).content))
    assert drawn.size == plain.size == (32, 32)
    assert (np.asarray(drawn) != np.asarray(plain)).any()  # the layers are drawn on the image
    assert client.get(detail["links"]["overlay"], headers=alice).content == overlay.content  # cached, the same bytes
    bad = client.get(
        f"/v1/jobs/{finished_job}/images/{hardest}/overlay.png", headers=alice, params={"layers": "gt,pruned@0.7"}
    )
    assert bad.status_code == 422 and "pruned@0.5" in bad.json()["detail"]
    assert client.get(f"/v1/jobs/{finished_job}/images/{hardest}", headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{finished_job}/images/NOPE", headers=alice).status_code == 404


@pytest.mark.torch
def test_the_overlay_cache_stays_bounded_whatever_sizes_and_layer_strings_are_asked(
    client, alice, finished_job, settings, monkeypatch
):
    from app.services import gallery

    monkeypatch.setattr(gallery, "OVERLAY_CACHE_FILES", 5)
    hardest = client.get(f"/v1/jobs/{finished_job}/scores", headers=alice).json()["items"][0]["image_id"]
    url = f"/v1/jobs/{finished_job}/images/{hardest}/overlay.png"
    same = [
        client.get(url, headers=alice, params={"layers": layers}).content
        for layers in ("gt,dense", "dense,gt", "gt,gt,dense,dense")
    ]
    assert same[0] == same[1] == same[2]  # one picture, one cache entry
    assert len(list(gallery.overlay_cache(settings, finished_job).glob("*.png"))) == 1
    for size in range(32, 52):
        assert client.get(url, headers=alice, params={"size": size, "layers": "gt"}).status_code == 200
    assert len(list(gallery.overlay_cache(settings, finished_job).glob("*.png"))) == 5


@pytest.mark.torch
def test_label_issues_list_the_flagged_masks_worst_first_as_json_and_csv(
    client, alice, bob, finished_job, session_factory
):
    from sqlalchemy import select, update

    from app.db.models import JobReport

    job_id = uuid.UUID(finished_job)
    assert client.get(f"/v1/jobs/{finished_job}/label-issues", headers=alice).json() == {
        "items": [],
        "next_cursor": None,
    }
    scores = client.get(f"/v1/jobs/{finished_job}/scores", headers=alice, params={"limit": 1000}).json()["items"]
    a, b = scores[3]["image_id"], scores[9]["image_id"]
    # what a label check that flagged two training masks and one validation mask stores (the check
    # itself is tested on data with planted wrong masks in tests/ml/test_label_check.py)
    issues = [
        {"image_id": a, "split": "train", "quality": 0.05, "contradicted": 0.95, "oos_dice": 0.0, "issue": True},
        {
            "image_id": "VAL_1",
            "split": "validation",
            "quality": 0.2,
            "contradicted": 0.8,
            "oos_dice": 0.1,
            "issue": True,
        },
        {"image_id": b, "split": "train", "quality": 0.4, "contradicted": 0.6, "oos_dice": 0.3, "issue": True},
    ]
    with session_factory() as session:
        report = session.scalar(select(JobReport).where(JobReport.job_id == job_id, JobReport.kind == "summary"))
        report.body = {**report.body, "label_check": {**report.body["label_check"], "issues": issues}}
        session.execute(
            update(Score).where(Score.job_id == job_id, Score.image_id.in_([a, b])).values(label_issue=True)
        )
        session.commit()
    first = client.get(f"/v1/jobs/{finished_job}/label-issues", headers=alice, params={"limit": 2}).json()
    rest = client.get(
        f"/v1/jobs/{finished_job}/label-issues", headers=alice, params={"cursor": first["next_cursor"]}
    ).json()
    items = first["items"] + rest["items"]
    assert [i["image_id"] for i in items] == [a, "VAL_1", b] and rest["next_cursor"] is None
    assert items[0]["rank"] == 4 and items[0]["label_quality"] == 0.05 and "site" in items[0]["attributes"]
    assert items[1]["links"] == {} and items[1]["rank"] is None  # held out: no gallery image
    overlay = client.get(items[0]["links"]["overlay"], headers=alice)
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    csv_text = client.get(f"/v1/jobs/{finished_job}/label-issues", headers={**alice, "Accept": "text/csv"}).text
    lines = csv_text.splitlines()
    assert lines[0].startswith("image_id,split,label_quality,contradicted,oos_dice,rank,is_htl,attended,overlay,attr:")
    assert [line.split(",")[0] for line in lines[1:]] == [a, "VAL_1", b]
    assert client.get(f"/v1/jobs/{finished_job}/label-issues", headers=bob).status_code == 404
    assert (
        client.get(f"/v1/jobs/{finished_job}/label-issues", headers=alice, params={"cursor": "nope"}).status_code == 422
    )


def test_a_submit_the_queue_refuses_answers_503_with_retry_after_and_leaves_no_job(tmp_path, db_url):
    from fastapi.testclient import TestClient

    from app.core.settings import Settings
    from app.db.models import Job, JobUnit
    from app.main import create_app

    from .conftest import count_rows, make_key

    app = create_app(Settings(data_dir=tmp_path / "d", database_url=db_url, broker_url="redis://127.0.0.1:1/0"))
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {make_key(app.state.sessionmaker, 'alice')}"}
        ds = client.post(
            "/v1/datasets", headers=key, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=12)))}
        ).json()
        r = submit(client, key, ds["id"])
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "not submitted" in r.json()["detail"]
        assert client.get("/v1/jobs", headers=key).json()["items"] == []
        assert count_rows(app.state.sessionmaker, Job) == 0 and count_rows(app.state.sessionmaker, JobUnit) == 0
        assert client.delete(f"/v1/datasets/{ds['id']}", headers=key).status_code == 204


def test_submits_racing_the_deletion_of_their_dataset_answer_202_or_404_and_every_202_job_exists(
    client, alice, tmp_path, db_url
):
    import threading

    if not db_url.startswith("postgresql"):
        pytest.skip("a race of concurrent transactions: PostgreSQL's (SQLite's writers take turns on the whole file)")
    archive = make_zip(dataset_files(tmp_path, n=12))
    answers: list[tuple[str, int, str | None]] = []
    for _ in range(40):
        ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", archive)}).json()["id"]
        barrier = threading.Barrier(3)

        def submit_one(barrier=barrier, ds=ds):
            barrier.wait()
            r = submit(client, alice, ds)
            answers.append(("submit", r.status_code, r.json().get("id") if r.status_code == 202 else None))

        def delete(barrier=barrier, ds=ds):
            barrier.wait()
            answers.append(("delete", client.delete(f"/v1/datasets/{ds}", headers=alice).status_code, None))

        threads = [threading.Thread(target=f) for f in (submit_one, submit_one, delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert {(kind, status) for kind, status, _ in answers} <= {
        ("submit", 202),
        ("submit", 404),
        ("delete", 204),
        ("delete", 409),
    }, answers
    for _, _, job_id in answers:
        if job_id is not None:
            assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200


@pytest.mark.torch
def test_a_flexible_unet_job_with_encoder_weights_through_the_api(client, alice, dataset_id, settings, tmp_path):
    import torch

    from ml.models import build_model

    weights = tmp_path / "resnet18-encoder.pt"
    torch.save(build_model("flexible_unet", 4, encoder="resnet18").encoder.state_dict(), weights)
    spec = {**TINY, "model": {"arch": "flexible_unet", "encoder": "resnet18", "width": 4, "weights": str(weights)}}
    job = submit(client, alice, dataset_id, spec).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()
    assert {"dense", "attended", "pruned@0.5", "pruned@0.9"} == set(metrics["models"])
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/dense", headers=alice).status_code == 200
    # a weights file the worker cannot find fails the job saying so, before anything trains
    missing = submit(
        client, alice, dataset_id, {**spec, "model": {**spec["model"], "weights": str(tmp_path / "gone.pt")}}
    )
    assert execute_job(uuid.UUID(missing.json()["id"]), settings=settings, worker="w") == "failed"
    failed = client.get(f"/v1/jobs/{missing.json()['id']}", headers=alice).json()
    assert "gone.pt is not a file on this worker" in failed["error"]
    refused = submit(client, alice, dataset_id, {**TINY, "model": {"arch": "flexible_unet"}})
    assert refused.status_code == 422 and "needs model.encoder" in refused.text
