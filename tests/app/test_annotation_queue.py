"""The annotation queue: a semi-supervised job's unlabeled images in a strategy's order."""

import csv
import io
import uuid
from dataclasses import dataclass, field

import pytest

from app.services.annotation_queue import StrategyUnavailable, queue_order
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .helpers import TINY, submit


@dataclass
class Image:
    image_id: str
    rank: int
    htl_score: float
    other_scores: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)


def test_each_strategy_orders_by_its_own_score_and_random_is_seeded():
    images = [
        Image("a", 1, 0.9, {"mc_dropout": 0.1}),
        Image("b", 2, 0.5, {"mc_dropout": 0.7}),
        Image("c", 3, 0.5, {"mc_dropout": 0.4}),
        Image("d", 4, 0.2, {"mc_dropout": 0.7}),
    ]
    assert [q.image.image_id for q in queue_order(images, "htl")] == ["a", "b", "c", "d"]  # a tie goes by rank
    assert [q.image.image_id for q in queue_order(images, "mc_dropout")] == ["b", "d", "c", "a"]
    assert [q.position for q in queue_order(images, "mc_dropout")] == [1, 2, 3, 4]
    draws = {seed: [q.image.image_id for q in queue_order(images * 1, "random", seed=seed)] for seed in range(6)}
    assert draws[0] == [
        q.image.image_id for q in queue_order(list(reversed(images)), "random", seed=0)
    ]  # not the input order
    assert len({tuple(d) for d in draws.values()}) > 1
    with pytest.raises(StrategyUnavailable, match="mc_dropout"):
        queue_order([Image("a", 1, 0.9)], "mc_dropout")


@pytest.mark.torch
def test_the_queue_lists_only_unlabeled_images_for_their_owner_as_json_and_csv(
    client, alice, bob, tmp_path, settings, dataset_id
):
    files = dataset_files(tmp_path, n=40)
    for k in [k for k in files if k.startswith("masks/SYN_0001")]:  # ten images lose their masks
        del files[k]
    ds = client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(files))}).json()
    semi = submit(
        client, alice, ds["id"], {**TINY, "setting": "semi_supervised", "scorers": ["pruning", "mc_dropout"]}
    ).json()
    assert execute_job(uuid.UUID(semi["id"]), settings=settings, worker="w") == "succeeded"
    url = f"/v1/jobs/{semi['id']}/annotation-queue"
    scores = client.get(f"/v1/jobs/{semi['id']}/scores", headers=alice, params={"limit": 1000}).json()["items"]
    unlabeled = [s for s in scores if not s["labeled"]]
    assert unlabeled and all(s["image_id"].startswith("SYN_0001") for s in unlabeled)

    htl = client.get(url, headers=alice, params={"strategy": "htl"}).json()["items"]
    assert [i["image_id"] for i in htl] == [
        s["image_id"] for s in sorted(unlabeled, key=lambda s: (-s["htl_score"], s["rank"]))
    ]
    assert [i["position"] for i in htl] == list(range(1, len(unlabeled) + 1)) and htl[0]["links"]["detail"].endswith(
        htl[0]["image_id"]
    )
    mc = client.get(url, headers=alice, params={"strategy": "mc_dropout"}).json()["items"]
    assert [i["value"] for i in mc] == sorted((s["scores"]["mc_dropout"] for s in unlabeled), reverse=True)
    first = client.get(url, headers=alice, params={"strategy": "random", "seed": 3, "limit": 4}).json()
    rest = client.get(
        url, headers=alice, params={"strategy": "random", "seed": 3, "cursor": first["next_cursor"]}
    ).json()
    shuffled = [i["image_id"] for i in first["items"] + rest["items"]]
    assert sorted(shuffled) == sorted(s["image_id"] for s in unlabeled) and rest["next_cursor"] is None
    assert shuffled == [
        i["image_id"] for i in client.get(url, headers=alice, params={"strategy": "random", "seed": 3}).json()["items"]
    ]
    assert client.get(f"/v1/jobs/{semi['id']}/images/{htl[0]['image_id']}", headers=alice).status_code == 200

    rows = list(
        csv.DictReader(
            io.StringIO(client.get(url, headers={**alice, "Accept": "text/csv"}, params={"strategy": "htl"}).text)
        )
    )
    assert (
        [r["image_id"] for r in rows] == [i["image_id"] for i in htl]
        and rows[0]["position"] == "1"
        and rows[0]["image_url"]
    )
    default = [i["image_id"] for i in client.get(url, headers=alice).json()["items"]]
    assert default == [
        i["image_id"] for i in client.get(url, headers=alice, params={"strategy": "random"}).json()["items"]
    ]

    assert client.get(url, headers=bob).status_code == 404
    supervised = submit(client, alice, dataset_id).json()
    assert execute_job(uuid.UUID(supervised["id"]), settings=settings, worker="w") == "succeeded"
    r = client.get(f"/v1/jobs/{supervised['id']}/annotation-queue", headers=alice)
    assert r.status_code == 404 and "semi_supervised" in r.json()["detail"]
    without = submit(client, alice, ds["id"], {**TINY, "setting": "semi_supervised"}).json()
    assert execute_job(uuid.UUID(without["id"]), settings=settings, worker="w") == "succeeded"
    r = client.get(f"/v1/jobs/{without['id']}/annotation-queue", headers=alice, params={"strategy": "mc_dropout"})
    assert r.status_code == 404 and "mc_dropout" in r.json()["detail"]
    assert client.get(url, headers=alice, params={"strategy": "entropy"}).status_code == 422
