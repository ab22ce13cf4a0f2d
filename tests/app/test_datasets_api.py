import io
import zipfile

import numpy as np
import pytest

from app.db.models import Dataset, Image

from .archives import dataset_files, make_targz, make_zip, png_bytes, png_claiming_size
from .conftest import count_rows


def upload(client, headers, data: bytes, name="ds", filename="ds.zip"):
    return client.post("/v1/datasets", headers=headers, files={"file": (filename, data)}, data={"name": name})


def assert_nothing_left(app, session_factory):
    settings = app.state.settings
    assert count_rows(session_factory, Dataset) == 0
    assert count_rows(session_factory, Image) == 0
    assert not any(settings.artifacts.rglob("*")), list(settings.artifacts.rglob("*"))
    assert not any(settings.uploads.iterdir()), list(settings.uploads.iterdir())


@pytest.mark.parametrize("pack", [make_zip, make_targz])
def test_upload_reports_counts_attributes_and_warnings(client, alice, session_factory, tmp_path, pack):
    files = dataset_files(tmp_path, n=12)
    del files["masks/SYN_00003_segmentation.png"]
    files["__MACOSX/._x"] = b"junk"
    r = upload(client, alice, pack({f"mydata/{k}": v for k, v in files.items()}), name="skin")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "skin" and body["n_images"] == 12 and body["n_masks"] == 11
    assert body["attributes"] == ["lesion_id", "site", "sex", "age", "dx"]
    assert any("1 of 12 images have no mask" in w for w in body["warnings"])
    assert any("ignored" in w for w in body["warnings"])
    assert count_rows(session_factory, Image) == 12
    stored = client.app.state.store.path(f"datasets/{body['id']}")
    assert len(list((stored / "images").iterdir())) == 12 and (stored / "metadata.csv").is_file()
    assert client.get(f"/v1/datasets/{body['id']}", headers=alice).json() == body


def test_datasets_list_paginates_newest_first(client, alice, tmp_path):
    data = make_zip(dataset_files(tmp_path, n=4))
    ids = [upload(client, alice, data, name=f"d{i}").json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        r = client.get(
            "/v1/datasets", headers=alice, params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [d["id"] for d in r["items"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def _bad_archives(tmp_path):
    good = dataset_files(tmp_path, n=4)
    bomb = png_claiming_size(100_000, 100_000)  # 10 Gpx claimed in a 100-byte file
    wrong_mask = dict(good)
    wrong_mask["masks/SYN_00001_segmentation.png"] = png_bytes(np.zeros((31, 32), dtype=np.uint8))
    yield "path escaping the archive", make_zip({**good, "../evil.txt": b"x"}), 422, "escapes the archive"
    yield "absolute path", make_targz({**good, "/etc/evil": b"x"}), 422, "absolute path"
    yield "tar symlink", make_targz(good, symlinks={"images/link.jpg": "/etc/passwd"}), 422, "is a link"
    yield "tar hard link", make_targz(good, hardlinks={"images/hard.png": "images/SYN_00000.png"}), 422, "is a link"
    yield "zip symlink", make_zip(good, symlinks={"images/link.png": "/etc/passwd"}), 422, "is a link"
    yield "not an archive", b"hello, not an archive at all", 415, "neither a zip nor a tar.gz"
    yield (
        "image that does not decode",
        make_zip({**good, "images/SYN_00002.png": b"\x89PNG\r\n\x1a\n garbage"}),
        422,
        "SYN_00002.png",
    )
    yield (
        "image that is no image",
        make_zip({**good, "images/SYN_00003.png": b"hello"}),
        422,
        "images/SYN_00003.png is not a readable image",
    )
    yield (
        "decompression bomb image",
        make_zip({**good, "images/BIG.png": bomb}),
        422,
        "BIG.png is over the limit of 50000000 pixels",
    )
    yield (
        "image over the pixel limit",
        make_zip({**good, "images/WIDE.png": png_claiming_size(10_000, 6_000)}),
        422,
        "WIDE.png is 10000x6000 = 60000000 pixels, over the limit",
    )
    yield "mask of another size", make_zip(wrong_mask), 422, "is 32x31 but its image is 32x32"
    yield (
        "duplicate image ids",
        make_zip({**good, "images/SYN_00000.jpg": good["images/SYN_00000.png"]}),
        422,
        "duplicate image id",
    )
    yield (
        "metadata without image_id",
        make_zip({**good, "metadata.csv": b"id,sex\nSYN_00000,male\n"}),
        422,
        "no image_id column",
    )
    unknown = good["metadata.csv"] + b"GHOST,LES_9,common,male,30\n"
    yield "metadata naming unknown images", make_zip({**good, "metadata.csv": unknown}), 422, "not in images/"
    yield "no images", make_zip({"metadata.csv": good["metadata.csv"]}), 422, "has no images"
    stored = _stored_zip(good)
    target = stored.index(good["images/SYN_00001.png"][100:140])
    yield (
        "zip member with a bad CRC",
        stored[:target] + bytes([stored[target] ^ 0xFF]) + stored[target + 1 :],
        422,
        "Bad CRC-32",
    )
    local = stored.index(b"images/SYN_00001.png")  # the local header's copy of the name (the central one comes last)
    renamed = stored[:local] + b"images/SYN_00009.png" + stored[local + len(b"images/SYN_00001.png") :]
    yield "zip header and directory disagree", renamed, 422, "is corrupt"
    yield "deflate64 member", _with_method(stored, 9), 422, "compression method"
    tgz = make_targz(good)
    yield "truncated tar.gz", tgz[:-200], 422, "corrupt"
    flipped = bytearray(tgz)
    flipped[len(tgz) - 6] ^= 0x01  # a byte of the gzip trailer (CRC / length): only a full read sees it
    yield "tar.gz with a changed byte", bytes(flipped), 422, "corrupt"
    yield (
        "image id too long for the filesystem",
        make_zip({**good, f"images/{'a' * 250}.png": good["images/SYN_00000.png"]}),
        422,
        "over 200 bytes",
    )


def _stored_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _with_method(data: bytes, method: int) -> bytes:
    """The zip with every member's compression method field (local header and central directory) set to method."""
    out = bytearray(data)
    i = 0
    while (i := out.find(b"PK\x03\x04", i)) != -1:
        out[i + 8 : i + 10] = method.to_bytes(2, "little")
        i += 4
    i = 0
    while (i := out.find(b"PK\x01\x02", i)) != -1:
        out[i + 10 : i + 12] = method.to_bytes(2, "little")
        i += 4
    return bytes(out)


@pytest.mark.parametrize("case", range(21))
def test_each_bad_archive_is_rejected_and_leaves_nothing(client, alice, session_factory, tmp_path, case):
    cases = list(_bad_archives(tmp_path))
    assert len(cases) == 21  # the parametrization covers every case
    name, data, status, message = cases[case]
    r = upload(client, alice, data)
    assert r.status_code == status, (name, r.text)
    assert message in r.json()["detail"], (name, r.json())
    assert str(client.app.state.settings.data_dir) not in r.text and "/tmp" not in r.text, (
        name,
        r.text,
    )  # no server paths
    assert_nothing_left(client.app, session_factory)


def test_limits_on_size_count_and_ratio(app, settings, alice, session_factory, tmp_path):
    from fastapi.testclient import TestClient

    good = dataset_files(tmp_path, n=4)
    zero_bomb = io.BytesIO()
    with zipfile.ZipFile(zero_bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/x.txt", b"\0" * (40 * 1024 * 1024))
    many_small = io.BytesIO()  # each member under the per-member grace size, the whole far over the ratio
    with zipfile.ZipFile(many_small, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(40):
            zf.writestr(f"images/z{k}.png", b"\0" * (1024 * 1024 - 1))
    bzip = io.BytesIO()
    with zipfile.ZipFile(bzip, "w", zipfile.ZIP_BZIP2) as zf:
        for name, data in good.items():
            zf.writestr(name, data)
    cases = [
        ({}, many_small.getvalue(), 413, "compression ratio"),
        ({}, bzip.getvalue(), 422, "use plain deflate"),
        ({"max_upload_bytes": 2000}, make_zip(good), 413, "over the limit of 2000 bytes"),
        ({"max_archive_files": 5}, make_zip(good), 413, "over the limit of 5"),
        ({"max_archive_files": 5}, make_targz(good), 413, "more than 5 entries"),
        ({"max_uncompressed_bytes": 4000}, make_zip(good), 413, "over the limit of 4000"),
        ({"max_uncompressed_bytes": 4000}, make_targz(good), 413, "more than 4000 bytes"),
        ({}, zero_bomb.getvalue(), 413, "compression ratio"),
        ({}, make_targz({**good, "images/zeros.png": b"\0" * (40 * 1024 * 1024)}), 413, "compression ratio"),
    ]
    for overrides, data, status, message in cases:
        for key, value in overrides.items():
            setattr(settings, key, value)
        with TestClient(app) as client:
            r = upload(client, alice, data)
        assert r.status_code == status, (overrides, r.text)
        assert message in r.json()["detail"], (overrides, r.json())
        assert str(settings.data_dir) not in r.text, r.text  # no server paths
        assert_nothing_left(app, session_factory)
        for key in overrides:
            setattr(settings, key, type(settings).model_fields[key].default)


def test_upload_needs_a_file_field(client, alice, session_factory):
    r = client.post("/v1/datasets", headers=alice, data={"name": "x"}, files={"other": ("a", b"b")})
    assert r.status_code == 422 and "'file' field" in r.json()["detail"]
    r = client.post("/v1/datasets", headers=alice, json={"name": "x"})
    assert r.status_code == 415
    assert_nothing_left(client.app, session_factory)


def test_masks_in_other_encodings_count_and_an_empty_one_is_warned_about(client, alice, tmp_path):
    from PIL import Image as PILImage

    files = dataset_files(tmp_path, n=6)
    lesion = np.zeros((32, 32), dtype=np.uint8)
    lesion[8:20, 10:22] = 1

    def png(array, mode=None) -> bytes:
        buf = io.BytesIO()
        PILImage.fromarray(array, mode=mode).save(buf, format="PNG")
        return buf.getvalue()

    alpha = np.zeros((32, 32, 4), dtype=np.uint8)
    alpha[..., 3] = lesion * 255
    files["masks/SYN_00000_segmentation.png"] = png(lesion)  # 0/1 label mask, 8-bit
    files["masks/SYN_00001_segmentation.png"] = png(lesion.astype(np.uint16))  # 0/1, 16-bit
    files["masks/SYN_00002_segmentation.png"] = png(alpha)  # the shape in the alpha channel
    files["masks/SYN_00003_segmentation.png"] = png(np.zeros((32, 32), dtype=np.uint8))  # truly empty
    r = upload(client, alice, make_zip(files))
    assert r.status_code == 201, r.text
    empty = [w for w in r.json()["warnings"] if "holds no lesion pixel" in w]
    assert len(empty) == 1 and "SYN_00003" in empty[0]
