"""The artifact store on a real S3-compatible server (SeaweedFS): the store itself, then the API
and a worker that share no folder, only the bucket."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from fastapi.testclient import TestClient

from app.core.scratch import ScratchCache
from app.core.settings import Settings
from app.core.storage import S3Store
from app.main import create_app
from worker.tasks import execute_job

from .archives import dataset_files, make_zip
from .conftest import make_key
from .helpers import TINY


@pytest.fixture
def s3_env(seaweedfs, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs


def objects(seaweedfs, bucket: str, prefix: str = "") -> list[str]:
    pages = seaweedfs.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_the_s3_store_puts_lists_streams_caches_and_deletes(s3_env, s3_bucket, tmp_path):
    store = S3Store(
        f"s3://{s3_bucket}/team", endpoint_url=s3_env.endpoint, scratch=ScratchCache(tmp_path / "scratch", 10**9)
    )
    folder = tmp_path / "tree"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"a" * 3_000_000)
    (folder / "metadata.csv").write_bytes(b"image_id\na\n")
    store.put_tree("datasets/d1", folder)
    assert sorted(objects(s3_env, s3_bucket)) == ["team/datasets/d1/images/a.png", "team/datasets/d1/metadata.csv"]
    assert store.list("datasets/d1") == {"images/a.png": 3_000_000, "metadata.csv": 11}
    assert store.size("datasets/d1/images/a.png") == 3_000_000 and store.exists("datasets/d1/metadata.csv")
    assert not store.exists("datasets/d1/nope") and store.local_file("datasets/d1/nope") is None
    assert (
        hashlib.sha256(b"".join(store.iter_chunks("datasets/d1/images/a.png"))).hexdigest()
        == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    )
    digest, size = store.put_file("jobs/j/model.bin", folder / "metadata.csv")
    assert digest == hashlib.sha256(b"image_id\na\n").hexdigest() and size == 11

    local = store.local_tree("datasets/d1")
    assert (local / "images" / "a.png").read_bytes() == b"a" * 3_000_000 and local.is_relative_to(tmp_path / "scratch")
    (local / "metadata.csv").write_bytes(b"changed-here")  # another size: fetched again
    assert (store.local_tree("datasets/d1") / "metadata.csv").read_bytes() == b"image_id\na\n"

    store.delete("datasets/d1")
    assert objects(s3_env, s3_bucket) == ["team/jobs/j/model.bin"]
    for bad in ("../x", "/abs", "a/../b", ""):
        with pytest.raises(ValueError):
            store.put_file(bad, folder / "metadata.csv")


def test_the_scratch_cache_evicts_the_least_recently_used_past_its_bound(tmp_path):
    import os
    import time

    cache = ScratchCache(tmp_path, max_bytes=2500, keep_s=60)
    for i, name in enumerate(["old", "mid", "new"]):
        path = cache.path(f"datasets/{name}/f.bin")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        cache.touch(f"datasets/{name}/f.bin")
        stamp = tmp_path / "datasets" / f".{name}.used"
        os.utime(stamp, (time.time() - 3600 + i, time.time() - 3600 + i))
    cache.touch("datasets/mid/f.bin")  # used just now: kept, though older than "new" before
    gone = cache.trim()
    assert gone == [tmp_path / "datasets" / "old"]
    assert (tmp_path / "datasets" / "mid").is_dir() and (tmp_path / "datasets" / "new").is_dir()


@pytest.mark.torch
def test_api_and_worker_share_only_the_bucket(s3_env, s3_bucket, db_url, tmp_path):
    url = f"s3://{s3_bucket}/htl"
    api_settings = Settings(
        data_dir=tmp_path / "api", database_url=db_url, storage_url=url, s3_endpoint_url=s3_env.endpoint
    )
    worker_settings = Settings(
        data_dir=tmp_path / "worker",
        database_url=db_url,
        storage_url=url,
        s3_endpoint_url=s3_env.endpoint,
        progress_interval_s=0.1,
    )
    with TestClient(create_app(api_settings)) as client:
        alice = {"Authorization": f"Bearer {make_key(client.app.state.sessionmaker, 'alice')}"}
        # a refused upload writes nothing to the bucket
        bad = dataset_files(tmp_path, n=8)
        bad["images/../../evil.png"] = b"x"
        assert client.post("/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(bad))}).status_code == 422
        assert objects(s3_env, s3_bucket) == []

        r = client.post(
            "/v1/datasets", headers=alice, files={"file": ("d.zip", make_zip(dataset_files(tmp_path, n=40)))}
        )
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        stored = objects(s3_env, s3_bucket, f"htl/datasets/{dataset}/")
        assert len([k for k in stored if "/images/" in k]) == 40 and any(k.endswith("metadata.csv") for k in stored)
        assert not (tmp_path / "api" / "artifacts" / "datasets").exists()  # nothing kept on the API's disk

        job = client.post("/v1/jobs", headers=alice, json={"dataset_id": dataset, "spec": TINY}).json()
        assert execute_job(uuid.UUID(job["id"]), settings=worker_settings, worker="remote-worker") == "succeeded"
        assert any(
            k.endswith("checkpoints/attended.safetensors") for k in objects(s3_env, s3_bucket, f"htl/jobs/{job['id']}/")
        )

        # the API streams a checkpoint from the bucket with the sha256 it states
        checkpoint = client.get(f"/v1/jobs/{job['id']}/checkpoints/attended", headers=alice)
        assert checkpoint.status_code == 200
        assert hashlib.sha256(checkpoint.content).hexdigest() == checkpoint.headers["x-checksum-sha256"]
        # the gallery reads the job's masks and the dataset's image through the store
        top = client.get(f"/v1/jobs/{job['id']}/scores", headers=alice, params={"limit": 1}).json()["items"][0][
            "image_id"
        ]
        detail = client.get(f"/v1/jobs/{job['id']}/images/{top}", headers=alice).json()
        assert detail["layers"] == ["gt", "dense", "pruned@0.5", "pruned@0.9", "oos"]
        overlay = client.get(detail["links"]["overlay"], headers=alice)
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")

        assert client.delete(f"/v1/jobs/{job['id']}", headers=alice).status_code == 204
        assert objects(s3_env, s3_bucket, f"htl/jobs/{job['id']}/") == []
        assert client.delete(f"/v1/datasets/{dataset}", headers=alice).status_code == 204
        assert objects(s3_env, s3_bucket) == []
