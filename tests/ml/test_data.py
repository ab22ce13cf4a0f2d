import numpy as np
import pytest
import torch
from PIL import Image

from ml import data as data_mod
from ml.data import (
    LayoutError,
    PairedAugment,
    decode_dataset,
    read_mask,
    sample_records,
    scan_dataset,
    split_indices,
)
from ml.synthetic import make_dataset


def test_palette_mask_is_read_by_displayed_grey_level(tmp_path):
    # index 0 maps to white, index 1 to black: raw indices would invert the lesion
    indices = np.ones((10, 12), dtype=np.uint8)
    indices[2:5, 3:7] = 0
    img = Image.fromarray(indices, mode="P")
    img.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    img.save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    expected = np.zeros((10, 12), dtype=bool)
    expected[2:5, 3:7] = True
    assert np.array_equal(mask, expected)


def test_real_palette_masks_in_ham10000_are_not_inverted(shared_data):
    masks = sorted((shared_data / "ham10000" / "masks").glob("*.png"))
    palette = []
    for path in masks:
        with Image.open(path) as img:
            if img.mode == "P":
                palette.append(path)
        if len(palette) == 5:
            break
    assert palette, "SOURCE.md promises palette masks in ham10000"
    for path in palette:
        mask = read_mask(path)
        # a lesion fills the middle of a dermoscopy frame, never the border
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert mask.mean() < 0.9 and border.mean() < 0.5, path.name


def test_grouped_split_never_puts_a_group_on_both_sides(tmp_path):
    index = scan_dataset(make_dataset(tmp_path / "d", n=60, size=32, seed=1))
    for seed in range(5):
        train, val, test = split_indices(index, val_fraction=0.3, group_column="lesion_id", seed=seed)
        assert sorted(train + val) == list(range(60)) and test == []
        lesion = lambda i: index.records[i].attributes["lesion_id"]  # noqa: E731
        assert not {lesion(i) for i in train} & {lesion(i) for i in val}
        assert abs(len(val) - 18) <= 1
    a = split_indices(index, val_fraction=0.3, group_column="lesion_id", seed=0)
    assert a == split_indices(index, val_fraction=0.3, group_column="lesion_id", seed=0)
    assert a != split_indices(index, val_fraction=0.3, group_column="lesion_id", seed=1)


def test_a_test_split_holds_out_whole_groups_and_leaves_validation_as_it_was(tmp_path):
    index = scan_dataset(make_dataset(tmp_path / "d", n=80, size=32, seed=2))
    lesion = lambda i: index.records[i].attributes["lesion_id"]  # noqa: E731
    for seed in range(3):
        train, val, test = split_indices(
            index, val_fraction=0.2, test_fraction=0.25, group_column="lesion_id", seed=seed
        )
        assert sorted(train + val + test) == list(range(80))
        sides = [{lesion(i) for i in part} for part in (train, val, test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert abs(len(test) - 20) <= 2 and abs(len(val) - 16) <= 2
        # adding a test split takes its images from training, never from validation
        assert val == split_indices(index, val_fraction=0.2, group_column="lesion_id", seed=seed)[1]


def test_decode_resizes_and_reuses_its_cache_without_decoding_again(tmp_path, monkeypatch):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(root / "images" / "a.jpg")
    m = np.zeros((90, 140), dtype=np.uint8)
    m[20:70, 30:110] = 255
    Image.fromarray(m).save(root / "masks" / "a_segmentation.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "images" / "b.png")
    index = scan_dataset(root)
    decoded = decode_dataset(index, 32, cache_dir=tmp_path / "cache")
    assert decoded.images.shape == (2, 3, 32, 32) and decoded.images.dtype == np.uint8
    assert decoded.original_sizes == [(90, 140), (40, 30)]
    assert decoded.has_mask.tolist() == [True, False]
    assert 0.3 < decoded.masks[0].mean() < 0.45  # 50*80 / (90*140) = 0.317 of the frame

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_mod, "_decode_record", fail)
    again = decode_dataset(index, 32, cache_dir=tmp_path / "cache")
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, decoded.images) and np.array_equal(again.masks, decoded.masks)


def test_mask_of_another_size_is_rejected(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((21, 20), dtype=np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(LayoutError, match="mask of a is 20x21"):
        decode_dataset(scan_dataset(root), 32)


def test_metadata_needs_an_image_id_column(tmp_path):
    root = make_dataset(tmp_path / "d", n=4, size=32)
    (root / "metadata.csv").write_text("id,sex\nSYN_00000,male\n")
    with pytest.raises(LayoutError, match="no image_id column"):
        scan_dataset(root)


def test_metadata_rows_without_images_are_ignored_with_a_warning(tmp_path):
    root = make_dataset(tmp_path / "d", n=4, size=32)
    with (root / "metadata.csv").open("a") as f:
        f.write("GHOST,LES_9,common,male,30\n")
    index = scan_dataset(root)
    assert len(index.records) == 4
    assert any("GHOST" in w for w in index.warnings)


def test_paired_augment_moves_image_and_mask_together():
    torch.manual_seed(0)
    masks = (torch.rand(8, 1, 32, 32) > 0.7).to(torch.uint8)
    images = (masks * 255).expand(8, 3, 32, 32).contiguous()
    aug = PairedAugment(colour=False)
    for _ in range(5):
        out_images, out_masks = aug(images, masks)
        assert not torch.equal(out_masks, masks)
        assert torch.equal(out_images[:, 0:1] > 127, out_masks.bool())
    out_images, out_masks = PairedAugment()(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_masks.unique().tolist() in ([0, 1], [0], [1])


def test_sample_records_is_a_seeded_subset(tmp_path):
    index = scan_dataset(make_dataset(tmp_path / "d", n=30, size=32))
    a = sample_records(index, 10, seed=0)
    assert len(a.records) == 10 and a.ids() == sorted(a.ids())
    assert a.ids() == sample_records(index, 10, seed=0).ids() != sample_records(index, 10, seed=1).ids()
    assert sample_records(index, None, seed=0) is index and sample_records(index, 99, seed=0) is index


def test_full_resolution_isic_images_are_resized_with_their_masks(shared_data):
    from ml.data import DatasetIndex, ImageRecord

    root = shared_data / "isic2017-val"
    ids = ["ISIC_0014217"] + sorted(p.stem for p in (root / "images").glob("*.jpg"))[:2]  # the 4288x2848 one first
    records = [ImageRecord(i, root / "images" / f"{i}.jpg", root / "masks" / f"{i}_segmentation.png", {}) for i in ids]
    decoded = decode_dataset(DatasetIndex(root, records, []), 64)
    assert decoded.original_sizes[0] == (2848, 4288)
    for k, record in enumerate(records):
        full = read_mask(record.mask_path)
        assert decoded.original_sizes[k] == full.shape
        assert abs(decoded.masks[k].mean() - full.mean()) < 0.03  # the lesion keeps its share of the frame


def test_paired_augment_keeps_a_non_square_batch_aligned_and_in_frame():
    torch.manual_seed(1)
    masks = torch.zeros(6, 1, 24, 40, dtype=torch.uint8)
    masks[:, :, 8:16, 14:26] = 1  # a centred box: small rotations and flips keep it inside the frame
    images = (masks * 200).expand(6, 3, 24, 40).contiguous()
    out_images, out_masks = PairedAugment(colour=False)(images, masks)
    assert out_images.shape == images.shape and out_images.dtype == torch.uint8
    assert torch.equal(out_images[:, 0:1] > 100, out_masks.bool())
    area = masks.flatten(1).sum(1).float()
    assert ((out_masks.flatten(1).sum(1).float() - area).abs() / area < 0.2).all()  # rotated, not squashed
