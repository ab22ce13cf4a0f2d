"""Semi- and weakly-supervised HTL mining on generated data with a planted hard minority (site=rare)."""

import json

import numpy as np
import pytest
import torch

from contract.jobspec import JobSpec, SpecError
from ml.metrics import auroc
from ml.models import build_model
from ml.pipeline import Run, run_pipeline
from ml.semi import ema_decay_at, fit_semi, ramp_up
from ml.synthetic import make_dataset
from ml.train import FitConfig, prepare_for_device

from .helpers import synthetic_decoded

BASE = {"image_size": 32, "model": {"width": 8}, "split": {"group_column": "lesion_id"}, "htl": {"top_fraction": 0.1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("settings") / "data", n=240, size=32, hard_fraction=0.15, seed=0)


def _enrichment(items):
    base = np.mean([i["attributes"]["site"] == "rare" for i in items])
    htl = [i for i in items if i["is_htl"]]
    return np.mean([i["attributes"]["site"] == "rare" for i in htl]) / base, htl


def test_semi_supervised_mining_scores_unlabeled_images_and_finds_the_minority(data, tmp_path):
    spec = JobSpec.model_validate(
        {
            **BASE,
            "setting": "semi_supervised",
            "semi": {"labeled_fraction": 0.3},
            "train": {"epochs": 8, "batch_size": 16},
        }
    )
    metrics = run_pipeline(data, spec, tmp_path / "out", device="cpu")
    items = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert len(items) == 192 and sum(i["labeled"] for i in items) == round(0.3 * 192)
    enrichment, htl = _enrichment(items)
    assert enrichment >= 2, enrichment
    assert any(not i["labeled"] for i in htl)  # unlabeled images are among the HTL images
    # ... and attention leaves them out by default (attention.unlabeled leave_out): it boosts real masks only
    attended = [i for i in items if i["attended"]]
    assert len(attended) == len(htl) and all(i["labeled"] for i in attended)
    assert metrics["models"]["dense"]["overall"]["dice"] > 0.8  # validation uses every real mask
    assert metrics["scored_images"] == metrics["validation_images"]


def test_weakly_supervised_mining_with_class_activation_maps(data, tmp_path):
    spec = JobSpec.model_validate(
        {
            **BASE,
            "setting": "weakly_supervised",
            "weak": {"label_column": "dx", "positive": ["mel"]},
            "train": {"epochs": 20, "batch_size": 16},
        }
    )
    assert spec.model.arch == "cnn"
    metrics = run_pipeline(data, spec, tmp_path / "out", device="cpu")
    items = json.loads((tmp_path / "out" / "scores.json").read_text())
    enrichment, htl = _enrichment(items)
    assert enrichment >= 2, enrichment
    # the maps are the positive class's: only positives can be HTL, and attention boosts them alone
    assert all(i["attributes"]["dx"] == "mel" for i in htl) and all(
        i["attributes"]["dx"] == "mel" for i in items if i["attended"]
    )
    negatives = [i["rank"] for i in items if i["attributes"]["dx"] != "mel"]
    assert min(negatives) == len(items) - len(negatives) + 1
    dense = metrics["models"]["dense"]
    assert dense["classification"]["auroc"] > 0.9 and dense["classification"]["n"] == 48
    # the positive class's map, relative to the image's background, localizes: far above a mask of the
    # whole image (lesions cover about a tenth of these images), scored on the same positive images
    guesses = metrics["blank_guesses"]["validation"]
    assert guesses["mean_lesion_share"] < 1 / 3 and guesses["n"] == len(dense["per_image"]) > 0
    assert dense["overall"]["dice"] >= guesses["all_foreground"] + 0.15, (dense["overall"]["dice"], guesses)
    assert guesses["models"]["dense"] == dense["overall"]["dice"]
    # a centred disc of the mean lesion size is the harder guess; whether the map beats it, the job says
    beats_disc = dense["overall"]["dice"] > guesses["centred_disc"]
    assert beats_disc == (not any("dense model" in w and "centred disc" in w for w in guesses["warnings"]))
    # the map's peak lands in the lesion far more often than a point drawn at random would (the lesion's
    # share of the image)
    from ml.data import decode_dataset, scan_dataset

    decoded = decode_dataset(scan_dataset(data), 32)
    val_ids = {p["image_id"] for p in dense["per_image"]}
    chance = np.mean([decoded.masks[i].mean() for i, image_id in enumerate(decoded.image_ids) if image_id in val_ids])
    assert dense["overall"]["pointing"] > chance + 0.3, (dense["overall"]["pointing"], chance)
    assert set(dense["per_image"][0]) >= {"dice", "pointing", "box_iou"}


def test_semi_supervised_training_learns_from_few_masks(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=48, hard_fraction=0.0)
    torch.manual_seed(0)
    model = prepare_for_device(build_model("unet", width=8), "cpu", precision="fp32")
    losses = fit_semi(
        model, decoded, list(range(8)), list(range(8, 48)), FitConfig(epochs=6, batch_size=16, augment=False)
    )
    assert len(losses) == 6 and losses[-1] < losses[0]
    from ml.scoring import binary_dice
    from ml.train import predict_logits

    images, masks = decoded.batch(range(8, 48))
    assert binary_dice(predict_logits(model, images) > 0, masks.bool()).mean() > 0.7


def test_schedules_of_the_teacher():
    assert ramp_up(0, 100) < 0.01 and ramp_up(30, 100) == 1.0 and ramp_up(99, 100) == 1.0
    assert ema_decay_at(0, 0.99) == 0.1 and ema_decay_at(10_000, 0.99) == 0.99


def test_auroc_against_hand_values():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def test_setting_specific_rejections(data, tmp_path):
    with pytest.raises(ValueError, match="weak.label_column"):
        JobSpec.model_validate({"setting": "weakly_supervised"})
    with pytest.raises(ValueError, match="model.arch 'unet' is a segmentation model"):
        JobSpec.model_validate(
            {
                "setting": "weakly_supervised",
                "model": {"arch": "unet"},
                "weak": {"label_column": "dx", "positive": ["mel"]},
            }
        )
    with pytest.raises(ValueError, match="model.arch 'cnn' is a classifier"):
        JobSpec.model_validate({"model": {"arch": "cnn"}})
    with pytest.raises(SpecError, match="weak.positive"):
        Run(
            data,
            JobSpec.model_validate(
                {**BASE, "setting": "weakly_supervised", "weak": {"label_column": "dx", "positive": ["bcc"]}}
            ),
            tmp_path / "a",
        )
    with pytest.raises(SpecError, match="semi.labeled_fraction"):
        Run(data, JobSpec.model_validate({**BASE, "setting": "semi_supervised"}), tmp_path / "b")  # every mask present
