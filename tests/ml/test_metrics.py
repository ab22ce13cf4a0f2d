import numpy as np
import pytest
from PIL import Image

from ml.data import read_mask
from ml.metrics import aggregate, box_iou, image_metrics, subgroup_labels, usable_attributes


def _mask(shape, box):
    m = np.zeros(shape, dtype=bool)
    m[box[0] : box[2], box[1] : box[3]] = True
    return m


def test_hand_computed_values():
    truth = _mask((10, 10), (0, 0, 4, 5))  # 20 px
    pred = _mask((10, 10), (2, 0, 6, 5))  # 20 px, 10 shared
    m = image_metrics(truth, pred)
    assert m["dice"] == pytest.approx(20 / 40)
    assert m["jaccard"] == pytest.approx(10 / 30)
    assert m["threshold_jaccard"] == 0.0  # below 0.65 counts as 0
    assert m["box_iou"] == pytest.approx(10 / 30)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(70 / 80)
    good = image_metrics(truth, _mask((10, 10), (0, 0, 4, 4)))
    assert good["threshold_jaccard"] == good["jaccard"] == pytest.approx(16 / 20)


def test_empty_against_empty_scores_one_and_empty_against_lesion_zero():
    empty = np.zeros((6, 6), dtype=bool)
    assert all(v == 1.0 for v in image_metrics(empty, empty).values())
    m = image_metrics(_mask((6, 6), (1, 1, 3, 3)), empty)
    assert m["dice"] == m["jaccard"] == m["box_iou"] == m["sensitivity"] == 0.0


def test_box_iou_uses_bounding_boxes_not_pixels():
    ring = _mask((20, 20), (2, 2, 18, 18)) & ~_mask((20, 20), (4, 4, 16, 16))
    assert box_iou(_mask((20, 20), (2, 2, 18, 18)), ring) == 1.0


def _real_pairs(shared_data, tmp_path):
    """Truth masks from both real data sets (palette ones included) and imperfect predictions."""
    ham = sorted((shared_data / "ham10000" / "masks").glob("*.png"))
    palette = [p for p in ham[:400] if Image.open(p).mode == "P"][:3]
    paths = ham[:5] + palette + sorted((shared_data / "isic2017-val" / "masks").glob("*.png"))[:4]
    rng = np.random.default_rng(0)
    pairs = []
    for k, path in enumerate(paths):
        truth = read_mask(path)
        h, w = truth.shape
        kind = k % 4
        if kind == 0:
            pred = np.roll(truth, (h // 10, -w // 12), axis=(0, 1))
        elif kind == 1:
            other = read_mask(paths[(k + 1) % len(paths)])
            pred = np.asarray(Image.fromarray(other).resize((w, h)))
        elif kind == 2:
            pred = truth & (rng.random(truth.shape) > 0.2)
        else:
            pred = np.zeros_like(truth)
        image_id = f"ISIC_{9000000 + k}"
        pairs.append((image_id, truth, pred.astype(bool)))
    return pairs


def test_per_image_metrics_match_the_isic_challenge_scorer(shared_data, tmp_path):
    from isic_challenge_scoring import metrics as isic
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.segmentation import SegmentationScore

    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    ours = []
    for image_id, truth, pred in _real_pairs(shared_data, tmp_path):
        Image.fromarray(truth.astype(np.uint8) * 255).save(truth_dir / f"{image_id}_segmentation.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"{image_id}.png")
        m = image_metrics(truth, pred)
        ours.append(m)
        cm = create_binary_confusion_matrix(truth_binary_values=truth, prediction_binary_values=pred)
        theirs = {
            "dice": isic.binary_dice(cm),
            "jaccard": isic.binary_jaccard(cm),
            "threshold_jaccard": isic.binary_threshold_jaccard(cm, threshold=0.65),
            "sensitivity": isic.binary_sensitivity(cm),
            "specificity": isic.binary_specificity(cm),
        }
        for name, value in theirs.items():
            assert m[name] == pytest.approx(value, abs=1e-6), (image_id, name)
    assert any(0 < m["threshold_jaccard"] for m in ours) and any(
        m["threshold_jaccard"] == 0 < m["jaccard"] for m in ours
    )
    macro = SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for name in ("dice", "jaccard", "threshold_jaccard", "sensitivity", "specificity"):
        assert np.mean([m[name] for m in ours]) == pytest.approx(macro[name], abs=1e-6), name


def test_subgroup_labels_band_ages_and_keep_missing_as_unknown():
    ages = ["5", "25", "45.0", "", "unknown", "80", "85", "39", "61", "12"]
    assert subgroup_labels("age", ages) == [
        "[0, 20)",
        "[20, 40)",
        "[40, 60)",
        "unknown",
        "unknown",
        "[80, 100]",
        "[80, 100]",
        "[20, 40)",
        "[60, 80)",
        "[0, 20)",
    ]
    assert subgroup_labels("sex", ["male", "", "female", "unknown"]) == ["male", "unknown", "female", "unknown"]
    sizes = [str(x) for x in range(1, 101)]
    for column in ("lesion_area", "image:brightness"):  # "image" holds the letters a-g-e: no age bands
        labels = subgroup_labels(column, sizes)
        assert len(set(labels)) == 4 and labels[0].startswith("[1, ") and labels[-1].endswith("100]")
    assert subgroup_labels("age_approximate", ages) == subgroup_labels("age", ages)


def test_id_like_columns_are_not_default_attributes():
    rows = [{"lesion_id": f"L{i}", "sex": "male" if i % 2 else "female", "site": "x"} for i in range(50)]
    assert usable_attributes(["lesion_id", "sex", "site"], rows, exclude=set()) == ["sex", "site"]
    assert usable_attributes(["lesion_id", "sex", "site"], rows, exclude={"sex"}) == ["site"]


def test_aggregate_per_subgroup():
    per_image = [
        {m: v for m in ("dice", "jaccard", "threshold_jaccard", "box_iou", "sensitivity", "specificity")}
        for v in (1.0, 0.5, 0.0)
    ]
    out = aggregate(per_image, {"sex": ["male", "female", "male"]})
    assert out["n"] == 3 and out["overall"]["dice"] == pytest.approx(0.5)
    assert out["subgroups"]["sex"]["male"] == {"n": 2, **{m: 0.5 for m in per_image[0]}}
    assert out["subgroups"]["sex"]["female"]["dice"] == 0.5


def test_stack_metrics_score_each_prediction_of_the_stack():
    from ml.metrics import stack_metrics

    rng = np.random.default_rng(3)
    truth = np.zeros((30, 40), bool)
    truth[5:20, 10:30] = True
    preds = np.stack([truth, ~truth, np.zeros_like(truth), rng.random((30, 40)) > 0.5, np.roll(truth, 7, axis=1)])
    for p, m in zip(preds, stack_metrics(truth, preds)):
        inter, union = (truth & p).sum(), (truth | p).sum()
        assert m["dice"] == pytest.approx(2 * inter / (truth.sum() + p.sum()) if p.any() else 0.0)
        assert m["jaccard"] == pytest.approx(inter / union)
    shifted = stack_metrics(truth, preds)[4]  # the box moved 7 columns right: overlap 13 of 27 columns
    assert shifted["box_iou"] == pytest.approx(13 / 27)
    empty = np.zeros_like(truth)
    both_empty = stack_metrics(empty, empty[None])[0]
    assert both_empty["dice"] == 1.0 and both_empty["box_iou"] == 1.0
    assert stack_metrics(empty, truth[None])[0]["box_iou"] == 0.0
