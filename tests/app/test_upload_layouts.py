"""Uploads in the layouts people download: ISIC challenge archives as published, Kvasir-SEG (JPEG
masks), a COCO JSON (polygons, RLE): each detected and named, arranged into the service's own layout
with masks that match what the source meant; a mixed, ambiguous or broken one refused naming what
was found, leaving nothing behind."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from .archives import make_targz, make_zip, png_bytes
from .test_datasets_api import assert_nothing_left, upload


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _picture(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _stored_mask(client, dataset_id: str, image_id: str) -> np.ndarray:
    path = client.app.state.store.path(f"datasets/{dataset_id}") / "masks" / f"{image_id}_segmentation.png"
    return np.asarray(Image.open(path).convert("L")) > 127


def _isic_2017(ids: list[str]) -> dict[str, bytes]:
    files = {}
    for k, image_id in enumerate(ids):
        files[f"ISIC-2017_Validation_Data/{image_id}.jpg"] = _jpeg(_picture(k))
        files[f"ISIC-2017_Validation_Data/{image_id}_superpixels.png"] = png_bytes(np.zeros((24, 32), np.uint8))
        mask = (_disc(24, 32, 12, 10 + k, 6) * 255).astype(np.uint8)
        files[f"ISIC-2017_Validation_Part1_GroundTruth/{image_id}_segmentation.png"] = png_bytes(mask)
    # the published CSVs cover the whole split: rows for images not uploaded
    rows = [*ids, "ISIC_9999999"]
    files["ISIC-2017_Validation_Part3_GroundTruth.csv"] = (
        "image_id,melanoma,seborrheic_keratosis\n" + "".join(f"{i},{k % 2}.0,0.0\n" for k, i in enumerate(rows))
    ).encode()
    files["ISIC-2017_Validation_Data/ISIC-2017_Validation_Data_metadata.csv"] = (
        "image_id,age_approximate,sex\n" + "".join(f"{i},{40 + k * 5},female\n" for k, i in enumerate(rows))
    ).encode()
    files["ISIC-2017_Validation_Data/LICENSE.txt"] = b"CC0"
    return files


@pytest.mark.parametrize("pack", [make_zip, make_targz])
def test_isic_challenge_download_as_published(client, alice, pack):
    ids = ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
    r = upload(client, alice, pack(_isic_2017(ids)), filename="ISIC-2017_Validation.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["layout"] == "isic" and body["n_images"] == 3 and body["n_masks"] == 3
    assert set(body["attributes"]) == {"melanoma", "seborrheic_keratosis", "age_approximate", "sex"}
    assert any("superpixel" in w for w in body["warnings"])
    assert any("1 metadata rows name images not in the upload" in w for w in body["warnings"])
    assert not any("not part of the isic layout" in w for w in body["warnings"])  # the CSVs were read
    stored = client.app.state.store.path(f"datasets/{body['id']}")
    with (stored / "metadata.csv").open() as f:
        rows = {row["image_id"]: row for row in csv.DictReader(f)}
    assert rows["ISIC_0000002"]["melanoma"] == "1.0" and rows["ISIC_0000003"]["age_approximate"] == "50"
    assert _stored_mask(client, body["id"], "ISIC_0000002").sum() == _disc(24, 32, 12, 11, 6).sum()
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice).json()["layout"] == "isic"


def test_isic_2018_names_and_real_isic_2017_files(client, alice, shared_data):
    """Real ISIC 2017 images and masks (byte copies), in the 2018 download's folder names and its
    'image' id column."""
    source = shared_data / "isic2017-val"
    ids = ["ISIC_0009995", "ISIC_0010459"]  # the two smallest (1024x768)
    files = {}
    for image_id in ids:
        files[f"ISIC2018_Task1-2_Validation_Input/{image_id}.jpg"] = (
            source / "images" / f"{image_id}.jpg"
        ).read_bytes()
        mask = (source / "masks" / f"{image_id}_segmentation.png").read_bytes()
        files[f"ISIC2018_Task1_Validation_GroundTruth/{image_id}_segmentation.png"] = mask
    files["ISIC2018_Task3_Validation_GroundTruth.csv"] = (
        "image,MEL,NV\n" + "".join(f"{i},1.0,0.0\n" for i in ids)
    ).encode()
    r = upload(client, alice, make_zip(files))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["layout"] == "isic" and body["n_masks"] == 2 and body["attributes"] == ["MEL", "NV"]
    truth = np.asarray(Image.open(source / "masks" / "ISIC_0009995_segmentation.png").convert("L")) > 127
    assert (_stored_mask(client, body["id"], "ISIC_0009995") == truth).all()


def test_kvasir_seg_with_jpeg_masks(client, alice):
    files = {}
    truths = {}
    for k in range(3):
        image_id = f"cju{k}abc"
        truths[image_id] = _disc(24, 32, 10 + k, 14, 7)
        files[f"Kvasir-SEG/images/{image_id}.jpg"] = _jpeg(_picture(k))
        # a JPEG mask: compression rings the edge; grey > 127 is the lesion, as the source means
        files[f"Kvasir-SEG/masks/{image_id}.jpg"] = _jpeg(
            np.repeat((truths[image_id] * 255).astype(np.uint8)[..., None], 3, 2), 75
        )
    files["Kvasir-SEG/kavsir_bboxes.json"] = json.dumps({"cju0abc": {"height": 24, "width": 32, "bbox": []}}).encode()
    r = upload(client, alice, make_zip(files))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["layout"] == "kvasir" and body["n_images"] == 3 and body["n_masks"] == 3
    assert any("1 files are not part of the kvasir layout" in w for w in body["warnings"])  # the bbox JSON only
    for image_id, truth in truths.items():
        stored = _stored_mask(client, body["id"], image_id)
        assert (stored != truth).sum() <= 4  # only JPEG's ringing at the edge may move a pixel


def _coco_files() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    h, w = 24, 32
    compressed = coco_mask.encode(np.asfortranarray(_disc(h, w, 12, 20, 5).astype(np.uint8)))
    uncompressed_truth = np.zeros((h, w), dtype=bool)
    uncompressed_truth[:, 3:5] = True  # column-major runs: 3 columns off, 2 on, the rest off
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": w, "height": h},
            {"id": 2, "file_name": "b.jpg", "width": w, "height": h},
            {"id": 3, "file_name": "c.jpg", "width": w, "height": h},
        ],
        "annotations": [
            # a rectangle polygon and an RLE object on one image: the mask is their union
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]], "iscrowd": 0},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()},
                "iscrowd": 1,
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 1,
                "segmentation": {"size": [h, w], "counts": [3 * h, 2 * h, 27 * h]},
            },
        ],
        "categories": [{"id": 1, "name": "lesion"}],
    }
    polygon = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([[2, 2, 10, 2, 10, 8, 2, 8]], h, w))).astype(bool)
    files = {f"images/{name}": _jpeg(_picture(k)) for k, name in enumerate(("a.jpg", "b.jpg", "c.jpg"))}
    files["annotations/instances_val.json"] = json.dumps(doc).encode()
    expected = {"a": polygon | _disc(h, w, 12, 20, 5), "b": uncompressed_truth, "c": np.zeros((h, w), dtype=bool)}
    return files, expected


def test_coco_json_with_polygons_and_rle(client, alice):
    files, expected = _coco_files()
    r = upload(client, alice, make_zip(files))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["layout"] == "coco" and body["n_images"] == 3 and body["n_masks"] == 3
    assert any("1 images have no annotation" in w for w in body["warnings"])
    assert not any("not part of the coco layout" in w for w in body["warnings"])  # the JSON was read
    for image_id, truth in expected.items():
        assert (_stored_mask(client, body["id"], image_id) == truth).all(), image_id
    # by hand: the rectangle covers the pixel centres of rows 2-7 and columns 2-9 (48 pixels); with the
    # disc the mask is their union, not the last one drawn
    polygon = np.zeros((24, 32), dtype=bool)
    polygon[2:8, 2:10] = True
    assert (expected["a"] == polygon | _disc(24, 32, 12, 20, 5)).all() and polygon.sum() == 48


def _coco_with(change) -> bytes:
    files, _ = _coco_files()
    doc = json.loads(files["annotations/instances_val.json"])
    change(doc)
    files["annotations/instances_val.json"] = json.dumps(doc).encode()
    return make_zip(files)


def _bad_layouts():
    isic = _isic_2017(["ISIC_0000001"])
    plain = {
        "images/x.png": png_bytes(np.zeros((8, 8), np.uint8)),
        "masks/x.png": png_bytes(np.zeros((8, 8), np.uint8)),
    }
    coco_files, _ = _coco_files()
    yield "ISIC folders beside images/", make_zip({**isic, **plain}), "mixes layouts"
    yield "COCO file beside masks/", make_zip({**coco_files, "masks/a.png": plain["masks/x.png"]}), "mixes layouts"
    second = {**coco_files, "other.json": coco_files["annotations/instances_val.json"]}
    yield "two COCO files", make_zip(second), "mixes layouts"

    def unknown_image(d):
        d["annotations"][0]["image_id"] = 77

    yield "annotation of an unlisted image", _coco_with(unknown_image), "names image id '77'"

    def wrong_size(d):
        d["images"][0]["width"] = 40

    yield "COCO size that is not the image's", _coco_with(wrong_size), "says a.jpg is 40x24, but the image is 32x24"

    def short_rle(d):
        d["annotations"][1]["segmentation"]["counts"] = ""  # pycocotools would decode uninitialised memory

    yield "RLE that does not cover the image", _coco_with(short_rle), "add up to height x width = 768"

    def far_polygon(d):
        d["annotations"][0]["segmentation"] = [[1, 1, 8e9, 1, 8, 5]]  # pycocotools would exhaust the memory

    yield "polygon far outside the image", _coco_with(far_polygon), "reaches outside the 32x24 image"

    def odd_polygon(d):
        d["annotations"][0]["segmentation"] = [[1, 1, 8, 1, 8]]

    yield "polygon of an odd length", _coco_with(odd_polygon), "at least 3 x, y pairs"

    def escaping(d):
        d["images"][0]["file_name"] = "../a.jpg"

    yield "file_name leaving the archive", _coco_with(escaping), "leaves the archive"

    def missing_file(d):
        d["images"][0]["file_name"] = "zzz.jpg"

    yield "COCO image not in the archive", _coco_with(missing_file), "lists zzz.jpg, which is not in the archive"
    yield "broken JSON and nothing else", make_zip({"annotations.json": b"{not json"}), "annotations.json is not JSON"
    kvasir_mixed = {
        "images/a.jpg": _jpeg(_picture(0, 8, 8)),
        "masks/a.jpg": _jpeg(np.zeros((8, 8, 3), np.uint8)),
        "masks/b.png": png_bytes(np.zeros((8, 8), np.uint8)),
    }
    yield "JPEG and PNG masks together", make_zip(kvasir_mixed), "both JPEG masks"
    gt_only = {k: v for k, v in isic.items() if "GroundTruth" in k and k.endswith(".png")}
    yield "ISIC ground truth without its images", make_zip(gt_only), "has no images"


BAD_LAYOUTS = 13


@pytest.mark.parametrize("case", range(BAD_LAYOUTS))
def test_each_bad_layout_is_refused_and_leaves_nothing(client, alice, session_factory, case):
    cases = list(_bad_layouts())
    assert len(cases) == BAD_LAYOUTS
    name, data, message = cases[case]
    r = upload(client, alice, data)
    assert r.status_code == 422, (name, r.text)
    assert message in r.json()["detail"], (name, r.json())
    assert_nothing_left(client.app, session_factory)
