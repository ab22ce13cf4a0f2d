"""Label Studio export: the brush RLE decoded by the format's own definition (thi.ng rle-pack, as
Label Studio's frontend and label_studio_sdk.converter.brush.decode_rle read it), and the label
issues and the annotation queue exported through the API and parsed back against the masks they
came from."""

import io
import uuid

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from app.db.models import JobReport, Score
from app.services import jobs
from app.services.label_studio import brush, encode_rle
from contract.layout import read_mask
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .helpers import TINY, submit


def decode_rle(data: list[int]) -> np.ndarray:
    """rle-pack decode (github.com/thi-ng/umbrella, packages/rle-pack/src/index.ts), written from its
    definition: 32-bit count, 5-bit word size - 1, four 4-bit run widths - 1, then runs."""
    bits = "".join(f"{b:08b}" for b in data)
    at = 0

    def read(n: int) -> int:
        nonlocal at
        value = int(bits[at : at + n], 2)
        at += n
        return value

    count = read(32)
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeat = read(1)
        j = i + 1 + read(widths[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def region_mask(region: dict) -> np.ndarray:
    """A brush region back to a boolean mask: the alpha channel of its RGBA pixels, as Label Studio does."""
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127


def test_brush_rle_round_trips_by_the_format_definition():
    rng = np.random.default_rng(0)
    for shape in ((7, 5), (40, 33), (300, 300)):
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            region = brush(mask, "r")
            assert region["original_width"] == shape[1] and region["value"]["brushlabels"] == ["Lesion"]
            assert (region_mask(region) == mask).all()
    blob = np.zeros((300, 300), dtype=bool)
    blob[100:180, 50:250] = True
    assert len(brush(blob, "r")["value"]["rle"]) < 1000  # runs, not pixels: 360,000 RGBA values in a few hundred bytes
    assert (decode_rle(encode_rle(np.arange(256, dtype=np.uint8).repeat(3))) == np.arange(256).repeat(3)).all()


@pytest.fixture
def files(tmp_path):
    return dataset_files(tmp_path, n=40)


@pytest.mark.torch
def test_label_issues_as_label_studio_tasks(client, alice, bob, settings, files, session_factory):
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).json()
    job = submit(client, alice, ds["id"], TINY).json()
    assert execute_job(uuid.UUID(job["id"]), settings=settings, worker="w") == "succeeded"
    scores = client.get(f"/v1/jobs/{job['id']}/scores", headers=alice, params={"limit": 1000}).json()["items"]
    held_out = client.get(
        f"/v1/jobs/{job['id']}/evaluations", headers=alice, params={"model": "dense", "split": "validation"}
    ).json()["items"][0]["image_id"]
    a, b = scores[2]["image_id"], scores[7]["image_id"]
    # what a label check that flagged two training masks and one validation mask stores (the check is
    # tested on planted wrong masks in tests/ml/test_label_check.py)
    issues = [
        {"image_id": a, "split": "train", "quality": 0.05, "contradicted": 0.95, "oos_dice": 0.0, "issue": True},
        {"image_id": held_out, "split": "validation", "quality": 0.2, "contradicted": 0.8, "oos_dice": 0.1},
        {"image_id": b, "split": "train", "quality": 0.4, "contradicted": 0.6, "oos_dice": 0.3, "issue": True},
    ]
    with session_factory() as session:
        job_id = uuid.UUID(job["id"])
        report = session.scalar(select(JobReport).where(JobReport.job_id == job_id, JobReport.kind == "summary"))
        report.body = {**report.body, "label_check": {**report.body["label_check"], "issues": issues}}
        session.execute(
            update(Score).where(Score.job_id == job_id, Score.image_id.in_([a, b])).values(label_issue=True)
        )
        session.commit()

    url = f"/v1/jobs/{job['id']}/label-issues"
    r = client.get(url, headers=alice, params={"format": "label-studio"})
    assert r.status_code == 200 and "label-studio.json" in r.headers["content-disposition"]
    tasks = r.json()
    assert [t["data"]["image_id"] for t in tasks] == [a, held_out, b]
    store = client.app.state.store
    run = store.path(jobs.run_key(uuid.UUID(job["id"])))
    for task, issue in zip(tasks, issues):
        image_id = issue["image_id"]
        picture = client.get(task["data"]["image"], headers=alice)
        assert picture.status_code == 200 and picture.content == files[f"images/{image_id}.png"]
        assert task["data"]["split"] == issue["split"] and task["predictions"][0]["score"] == issue["quality"]
        # the annotation is the mask as uploaded, at the image's own size
        truth = read_mask(io.BytesIO(files[f"masks/{image_id}_segmentation.png"]))
        (annotated,) = task["annotations"][0]["result"]
        assert (region_mask(annotated) == truth).all() and annotated["from_name"] == "mask"
        # the prediction is the out-of-sample mask (training) or the dense model's (held out)
        source = run / ("gallery/oos" if issue["split"] == "train" else "predictions/dense") / f"{image_id}.png"
        expected = np.asarray(Image.open(source).convert("L").resize(truth.shape[::-1], Image.Resampling.NEAREST)) > 127
        (predicted,) = task["predictions"][0]["result"]
        assert (region_mask(predicted) == expected).all() and predicted["to_name"] == "image"
    assert tasks[0]["predictions"][0]["model_version"] != tasks[1]["predictions"][0]["model_version"]

    prefixed = client.get(
        url, headers=alice, params={"format": "label-studio", "image_prefix": "/data/local-files/?d=x/"}
    )
    assert prefixed.json()[0]["data"]["image"] == f"/data/local-files/?d=x/{a}.png"
    assert client.get(url, headers=alice, params={"format": "coco"}).status_code == 422
    assert client.get(url, headers=bob, params={"format": "label-studio"}).status_code == 404
    assert client.get(tasks[0]["data"]["image"], headers=bob).status_code == 404
    assert client.get(f"/v1/datasets/{ds['id']}/images/NOPE", headers=alice).status_code == 404


@pytest.mark.torch
def test_annotation_queue_as_label_studio_tasks(client, alice, settings, files):
    for k in [k for k in files if k.startswith("masks/SYN_0001")]:  # ten images lose their masks
        del files[k]
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).json()
    semi = submit(client, alice, ds["id"], {**TINY, "setting": "semi_supervised"}).json()
    assert execute_job(uuid.UUID(semi["id"]), settings=settings, worker="w") == "succeeded"
    url = f"/v1/jobs/{semi['id']}/annotation-queue"
    queue = client.get(url, headers=alice, params={"strategy": "htl"}).json()["items"]
    tasks = client.get(url, headers=alice, params={"strategy": "htl", "format": "label-studio"}).json()
    assert [t["data"]["image_id"] for t in tasks] == [i["image_id"] for i in queue]
    assert [t["data"]["position"] for t in tasks] == list(range(1, len(queue) + 1))
    assert all("annotations" not in t for t in tasks)  # nothing to correct: these images have no mask yet
    run = client.app.state.store.path(jobs.run_key(uuid.UUID(semi["id"])))
    with_prediction = [t for t in tasks if "predictions" in t]
    assert with_prediction  # the gallery kept the dense masks of these few images
    for task in with_prediction:
        dense = np.asarray(Image.open(run / "gallery/dense" / f"{task['data']['image_id']}.png").convert("L")) > 127
        assert (region_mask(task["predictions"][0]["result"][0]) == dense).all()
