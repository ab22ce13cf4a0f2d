"""The label check: K-fold out-of-sample predictions tell a wrong mask from a hard image."""

import csv

import numpy as np
import pytest
import torch

from contract.jobspec import JobSpec
from ml import label_check
from ml.data import decode_dataset, scan_dataset, split_indices
from ml.models import ModelConfig
from ml.setting import make_targets
from ml.stage_inputs import StageInputs
from ml.synthetic import make_dataset


def test_folds_keep_each_group_together_and_stay_balanced():
    train = list(range(100))
    groups = [f"L{i // 3}" for i in train]  # lesions of three images each
    folds = label_check.cross_fitting_folds(train, groups, 3, seed=0)
    assert sorted(i for f in folds for i in f) == train
    assert max(map(len, folds)) - min(map(len, folds)) <= 3
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    assert all(len({fold_of[i] for i in train if groups[i] == g}) == 1 for g in set(groups))
    assert folds == label_check.cross_fitting_folds(train, groups, 3, seed=0)
    assert folds != label_check.cross_fitting_folds(train, groups, 3, seed=1)


def test_quality_counts_only_confident_contradiction():
    mask = np.zeros((3, 8, 8), dtype=np.uint8)
    mask[:, 2:6, 2:6] = 1  # 16 lesion pixels
    probs = np.full((3, 8, 8), 0.02, dtype=np.float32)
    probs[0, 2:6, 2:6] = 0.98  # confirms the mask
    probs[1, 2:6, 2:6] = 0.5  # unsure inside the lesion: a hard image, not a wrong mask
    probs[2, 0:2, 0:8] = 0.97  # sure the lesion is elsewhere (16 pixels) and not where the mask is
    q = label_check.label_quality(mask, probs)
    assert q.quality[0] == 1.0 and q.quality[1] == 1.0
    assert q.quality[2] == pytest.approx(0.0)  # region 32 pixels, all 32 contradicted
    assert q.oos_dice[0] == 1.0 and q.oos_dice[2] == 0.0
    assert list(label_check.flag_label_issues(q.quality, max_quality=0.5)) == [False, False, True]


def test_the_check_finds_the_wrong_masks_and_leaves_hard_images_alone(tmp_path):
    """400 images at 32 px: 6% wrong masks (beside the lesion, or far too loose), 6% a rare pale
    look, 15% faint lesions. Flagging must be precise and find most wrong masks, and not take the
    hard (faint, pale) images for wrong ones."""
    root = make_dataset(
        tmp_path / "data",
        n=400,
        size=32,
        seed=11,
        hard_fraction=0.15,
        rare_look_fraction=0.06,
        wrong_mask_fraction=0.06,
    )
    truth = {r["image_id"]: r for r in csv.DictReader(open(root / "truth.csv"))}
    index = scan_dataset(root)
    spec = JobSpec.model_validate(
        {"image_size": 32, "train": {"epochs": 15, "batch_size": 16}, "split": {"group_column": "lesion_id"}}
    )
    train, val, _ = split_indices(index, val_fraction=0.2, group_column="lesion_id", seed=0)
    inputs = StageInputs(
        spec=spec,
        index=index,
        data=decode_dataset(index, 32),
        val_idx=val,
        targets=make_targets(index, spec, train),
        model_config=ModelConfig("unet", 16),
        device=torch.device("cpu"),
        precision="fp32",
    )
    checks = [label_check.check_fold(inputs, k) for k in range(spec.label_check.folds)]
    checked = [i for c in checks for i in c.indices]
    assert sorted(checked) == sorted(train)
    quality = np.concatenate([c.quality.quality for c in checks])
    flagged = label_check.flag_label_issues(quality, max_quality=spec.label_check.max_quality)
    ids = [index.records[i].image_id for i in checked]
    wrong = np.array([bool(truth[i]["wrong_mask"]) for i in ids])
    hard = np.array(
        [
            truth[index.records[i].image_id]["look"] == "pale" or index.records[i].attributes["site"] == "rare"
            for i in checked
        ]
    )
    precision = (flagged & wrong).sum() / max(1, flagged.sum())
    recall = (flagged & wrong).sum() / wrong.sum()
    assert wrong.sum() >= 10
    assert precision >= 0.8 and recall >= 0.7, (precision, recall, flagged.sum())
    assert (flagged & hard).sum() <= 1
