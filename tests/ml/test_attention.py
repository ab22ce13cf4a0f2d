"""Attention: where the weakness is a rare look the model can learn, attending to it lifts that group
far above a random control attended the same way; fine-tuning starts from the dense model."""

import csv

import numpy as np
import pytest
import torch

from contract.jobspec import JobSpec
from ml.data import decode_dataset, scan_dataset, split_indices
from ml.models import ModelConfig
from ml.setting import make_targets
from ml.stage_inputs import StageInputs
from ml.stages import boost, train_model
from ml.synthetic import make_dataset
from ml.train import binary_dice, predict_logits


def _inputs(root, spec: dict) -> StageInputs:
    index = scan_dataset(root)
    parsed = JobSpec.model_validate(spec)
    train, val, _ = split_indices(index, val_fraction=0.2, group_column="lesion_id", seed=0)
    return StageInputs(
        spec=parsed,
        index=index,
        data=decode_dataset(index, 32),
        val_idx=val,
        targets=make_targets(index, parsed, train),
        model_config=ModelConfig("unet", 16),
        device=torch.device("cpu"),
        precision="fp32",
    )


def _dice(model, data) -> float:
    images, masks = data.batch(range(len(data)))
    return binary_dice(predict_logits(model, images) > 0, masks.bool()).mean().item()


@pytest.fixture(scope="module")
def pale(tmp_path_factory):
    """600 training-pool images of which 5% have the pale look (lighter than the skin, every other
    lesion darker), and 60 test images that all have it, from the same generator."""
    root = tmp_path_factory.mktemp("pale")
    train = make_dataset(root / "train", n=600, size=32, seed=5, hard_fraction=0.0, rare_look_fraction=0.05)
    test = make_dataset(root / "test", n=60, size=32, seed=99, hard_fraction=0.0, rare_look_fraction=1.0)
    truth = {r["image_id"]: r["look"] for r in csv.DictReader(open(train / "truth.csv"))}
    return train, decode_dataset(scan_dataset(test), 32), truth


def test_attending_the_rare_look_beats_a_random_control_on_it_for_each_seed(pale):
    root, pale_test, truth = pale
    spec = {
        "image_size": 32,
        "train": {"epochs": 4, "batch_size": 16},
        "label_check": {"enabled": False},
        "attention": {"mode": "from_scratch", "factor": 8.0},
    }
    inputs = _inputs(root, spec)
    ids = inputs.image_ids(inputs.train_idx)
    attended = [i for i in ids if truth[i] == "pale"]
    assert len(attended) >= 15
    for seed in (0, 1, 2):
        control = list(np.random.default_rng(seed).choice(ids, len(attended), replace=False))
        models = {}
        for name, chosen in (("attended", attended), ("control", control)):
            loss_weights, sampling_weights = boost(inputs, chosen)
            models[name] = train_model(inputs, seed, loss_weights=loss_weights, sampling_weights=sampling_weights).model
        a, c = _dice(models["attended"], pale_test), _dice(models["control"], pale_test)
        assert a - c > 0.05, (seed, a, c)


def test_fine_tuning_starts_from_the_dense_model_and_costs_its_own_epochs(pale):
    root, _, _ = pale
    spec = {
        "image_size": 32,
        "train": {"epochs": 2, "batch_size": 16},
        "label_check": {"enabled": False},
        "attention": {"mode": "fine_tune", "finetune_epochs": 1, "finetune_lr_factor": 1e-6},
    }
    inputs = _inputs(root, spec)
    dense = train_model(inputs, 0).model
    before = [p.detach().clone() for p in dense.parameters()]
    still = train_model(inputs, 0, start=dense)
    assert len(still.epoch_losses) == 1  # finetune_epochs, not train.epochs
    moved = max((p - q).abs().max().item() for p, q in zip(still.model.parameters(), before))
    assert moved < 1e-3  # at a learning rate near zero it stays at the dense weights: it started there
    assert all(torch.equal(p, q) for p, q in zip(dense.parameters(), before))  # a copy was tuned, not the dense model
    faster = _inputs(root, {**spec, "attention": {**spec["attention"], "finetune_lr_factor": 1.0}})
    tuned = train_model(faster, 0, start=dense).model
    assert max((p - q).abs().max().item() for p, q in zip(tuned.parameters(), before)) > 1e-2
