"""Scores that measure capacity: pruning scope and BatchNorm re-estimation, degenerate sparsities left
out of the score, a random control, a held-out test split, and the model config kept in checkpoints."""

import json

import numpy as np
import pytest
import torch

from contract.jobspec import JobSpec
from ml.checkpoints import load_checkpoint
from ml.models import build_model, prunable_layers
from ml.pipeline import run_pipeline
from ml.prune import Prediction, SparsityReport, health, prune_model, recalibrate_batchnorm, validation_prediction
from ml.synthetic import make_dataset
from ml.train import FitConfig, fit, prepare_for_device

from .helpers import synthetic_decoded

CONTROLLED = {
    "image_size": 32,
    "model": {"width": 8},
    "train": {"epochs": 6, "batch_size": 16},
    "split": {"val_fraction": 0.2, "test_fraction": 0.2},  # group_column: auto -> lesion_id
    "prune": {"sparsities": [0.3, 0.5, 0.995], "scope": "layerwise", "bn_recalibration": True},
    "htl": {"top_fraction": 0.1},
    "attention": {"control": "random"},
}


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlled")
    data = make_dataset(root / "data", n=200, size=32, hard_fraction=0.15, seed=3)
    out = root / "out"
    return out, run_pipeline(data, JobSpec.model_validate(CONTROLLED), out, device="cpu")


def test_layerwise_pruning_gives_every_layer_but_the_stem_and_the_head_the_sparsity():
    from ml.prune import kept_dense

    torch.manual_seed(0)
    pruned, report = prune_model(build_model("unet", width=8), 0.7, scope="layerwise")
    layers = prunable_layers(pruned)
    keep = kept_dense(pruned)
    assert (
        keep == {layers[0][0], layers[-1][0]} and layers[-1][1].out_channels == 1
    )  # the first convolution, the output head
    for name, fraction in report.layers.items():
        numel = dict(layers)[name].weight.numel()
        if name in keep:
            assert fraction == 0.0, name
        else:
            assert abs(fraction - 0.7) <= 1 / numel + 1e-9, name
    _, global_report = prune_model(build_model("unet", width=8), 0.7, scope="global")
    spread = np.ptp(list(global_report.layers.values()))
    assert spread > 0.2  # one global threshold prunes layers unevenly; layerwise does not


def test_batchnorm_recalibration_recovers_a_pruned_model(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=64, size=32)
    torch.manual_seed(0)
    dense = prepare_for_device(build_model("unet", width=8), "cpu", precision="fp32")
    fit(dense, decoded, list(range(48)), FitConfig(epochs=6, batch_size=16))
    has_target = np.ones(16, dtype=bool)
    val = list(range(48, 64))
    pruned, _ = prune_model(dense, 0.8)
    stale = validation_prediction(pruned, decoded, val, has_target).dice
    before = [m.running_mean.clone() for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    recalibrate_batchnorm(pruned, decoded, list(range(48)))
    after = [m.running_mean for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(m.momentum == 0.1 for m in pruned.modules() if isinstance(m, torch.nn.BatchNorm2d))  # restored
    assert not pruned.training
    assert validation_prediction(pruned, decoded, val, has_target).dice > stale


def test_health_flags_a_model_that_predicts_nothing_or_far_worse():
    report = SparsityReport(requested=0.9, achieved=0.9, layers={"a": 1.0, "b": 0.8})
    dense = Prediction(dice=0.9, foreground=0.3)
    empty = health(report, Prediction(dice=0.0, foreground=0.0), dense, degenerate_fraction=0.5)
    assert empty["degenerate"] and len(empty["degenerate_reasons"]) == 2 and empty["zeroed_layers"] == 1
    worse = health(report, Prediction(dice=0.4, foreground=0.25), dense, degenerate_fraction=0.5)
    assert worse["degenerate"] and "Dice" in worse["degenerate_reasons"][0]
    fine = health(report, Prediction(dice=0.8, foreground=0.28), dense, degenerate_fraction=0.5)
    assert not fine["degenerate"] and fine["validation_dice"] == 0.8 and fine["dense_validation_dice"] == 0.9
    # the other side: an all-foreground mask can keep a Dice above half the dense model's (0.46 on HAM10000)
    everything = health(report, Prediction(dice=0.47, foreground=0.97), dense, degenerate_fraction=0.5)
    assert everything["degenerate"] and everything["degenerate_reasons"] == [everything["degenerate_reasons"][0]]
    assert "everything" in everything["degenerate_reasons"][0]
    wide = health(
        report, Prediction(dice=0.7, foreground=0.6), dense, degenerate_fraction=0.5
    )  # 0.3 + 0.5 * 0.7 = 0.65
    assert not wide["degenerate"]


def test_health_flags_a_classifier_whose_auroc_collapses_towards_chance():
    report = SparsityReport(requested=0.7, achieved=0.7, layers={"a": 0.7})
    dense = Prediction(dice=0.6, foreground=0.1, auroc=0.9)
    collapsed = health(
        report, Prediction(dice=0.55, foreground=0.1, auroc=0.65), dense, degenerate_fraction=0.5
    )  # 0.15 < 0.5 x 0.4
    assert collapsed["degenerate"] and collapsed["degenerate_reasons"] == [collapsed["degenerate_reasons"][0]]
    assert "AUROC 0.6500" in collapsed["degenerate_reasons"][0] and collapsed["dense_auroc"] == 0.9
    assert not health(report, Prediction(dice=0.55, foreground=0.1, auroc=0.75), dense, degenerate_fraction=0.5)[
        "degenerate"
    ]
    # a dense classifier at chance has no margin to lose: its pruned models are judged by their maps alone
    chance = Prediction(dice=0.6, foreground=0.1, auroc=0.45)
    assert not health(report, Prediction(dice=0.55, foreground=0.1, auroc=0.3), chance, degenerate_fraction=0.5)[
        "degenerate"
    ]


def test_a_collapsed_sparsity_is_reported_and_left_out_of_the_score(controlled):
    out, metrics = controlled
    pruning = metrics["pruning"]
    assert set(pruning) == {"0.3", "0.5", "0.995"}
    for entry in pruning.values():
        assert {
            "achieved",
            "layers",
            "zeroed_layers",
            "validation_dice",
            "degenerate",
            "scope",
            "bn_recalibrated",
        } <= set(entry)
        assert entry["scope"] == "layerwise" and entry["bn_recalibrated"] is True
    assert pruning["0.995"]["degenerate"] and not pruning["0.3"]["degenerate"]
    assert metrics["degenerate_sparsities"] == [0.995] and 0.995 not in metrics["ranked_by_sparsities"]
    assert any("0.995" in w and "degenerate" in w for w in metrics["warnings"])
    items = json.loads((out / "scores.json").read_text())
    for item in items[:20]:
        kept = [item["per_sparsity"][s] for s in ("0.3", "0.5")]
        assert item["htl_score"] == pytest.approx(np.mean(kept))
        assert "0.995" in item["per_sparsity"]  # still shown


def test_attended_is_compared_with_a_random_control_on_validation_and_test(controlled):
    out, metrics = controlled
    assert {"dense", "attended", "control"} <= set(metrics["models"])
    assert metrics["splits"] == ["validation", "test"] and metrics["test_images"] > 0
    assert metrics["group_column"] == "lesion_id"  # resolved from 'auto'
    spec = json.loads((out / "spec.json").read_text())
    assert spec["split"]["group_column"] == "lesion_id"
    for name in ("dense", "attended", "control"):
        test = metrics["models"][name]["test"]
        assert test["n"] == metrics["test_images"] and set(test) >= {"overall", "subgroups", "per_image"}
    versus = metrics["attended_vs_control"]
    assert set(versus) >= {"overall", "per_seed", "subgroups", "test"}
    control, attended = metrics["models"]["control"], metrics["models"]["attended"]
    assert versus["overall"]["dice"] == pytest.approx(attended["overall"]["dice"] - control["overall"]["dice"])
    assert versus["test"]["overall"]["dice"] == pytest.approx(
        attended["test"]["overall"]["dice"] - control["test"]["overall"]["dice"]
    )
    gap = json.loads((out / "subgroups.json").read_text())["gap_closing"]
    assert set(gap) == {"validation", "test"}
    row = gap["test"]["subgroups"][0]
    assert {"control_dice", "attended_vs_control", "p_adjusted", "significant"} <= set(row)
    # the control attended as many images as the HTL set, and not the same ones
    sets = json.loads((out / "state" / "attention.json").read_text())
    assert (
        len(sets["control"]["0"])
        == len(sets["attended"])
        == sum(i["is_htl"] for i in json.loads((out / "scores.json").read_text()))
    )
    assert set(sets["control"]["0"]) != set(sets["attended"])
    # the pre-registered endpoint: the focus set on test, attended - control on it, and the verdict
    chosen = metrics["focus"]
    dice = {
        b: {p["image_id"]: p["dice"] for p in metrics["models"][b]["test"]["per_image"]}
        for b in ("attended", "control")
    }
    assert (
        chosen["split"] == "test"
        and 0 < chosen["n"] == len(chosen["images"])
        and set(chosen["images"]) <= set(dice["attended"])
    )
    on_focus = versus["focus"]
    assert on_focus["n"] == chosen["n"] and on_focus["difference"] == pytest.approx(
        np.mean([dice["attended"][i] - dice["control"][i] for i in chosen["images"]])
    )
    assert on_focus["seeds"] == 1 and "random control" in metrics["verdict"] and "One seed" in metrics["verdict"]
    assert set(metrics["worst_decile"]) == {"dense", "attended", "control"}
    # the same endpoint on validation, where variants are chosen without reading test
    beside = metrics["validation_endpoint"]
    val_dice = {
        b: {p["image_id"]: p["dice"] for p in metrics["models"][b]["per_image"]} for b in ("attended", "control")
    }
    assert beside["focus"]["split"] == "validation" and set(beside["focus"]["images"]) <= set(val_dice["attended"])
    assert not set(beside["focus"]["images"]) & set(chosen["images"])
    assert beside["attended_vs_control"]["difference"] == pytest.approx(
        np.mean([val_dice["attended"][i] - val_dice["control"][i] for i in beside["focus"]["images"]])
    )


def test_dense_validation_curve_has_one_point_per_epoch(controlled):
    _, metrics = controlled
    curve = metrics["validation_curve"]["dense"]
    assert len(curve) == 6 and curve[-1] > curve[0]


def test_attention_can_follow_another_scorer(tmp_path):
    data = make_dataset(tmp_path / "data", n=60, size=32, seed=4)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 2, "batch_size": 8},
            "prune": {"sparsities": [0.5]},
            "scorers": ["loss"],
            "attention": {"scorer": "loss"},
        }
    )
    run_pipeline(data, spec, tmp_path / "out", device="cpu")
    items = json.loads((tmp_path / "out" / "scores.json").read_text())
    sets = json.loads((tmp_path / "out" / "state" / "attention.json").read_text())
    k = sum(i["is_htl"] for i in items)
    top_loss = {i["image_id"] for i in sorted(items, key=lambda i: -i["scores"]["loss"])[:k]}
    htl = {i["image_id"] for i in items if i["is_htl"]}
    assert sets["scorer"] == "loss" and set(sets["attended"]) == top_loss and top_loss != htl


def test_cam_threshold_is_kept_through_checkpoints(tmp_path):
    data = make_dataset(tmp_path / "data", n=80, size=32, seed=5)
    base = {
        "setting": "weakly_supervised",
        "image_size": 32,
        "model": {"width": 4},
        "train": {"epochs": 2, "batch_size": 8},
        "prune": {"sparsities": [0.3]},
        "weak": {"label_column": "dx", "positive": ["mel"]},
    }
    results = {}
    for threshold in (0.3, 0.6):
        spec = JobSpec.model_validate({**base, "weak": {**base["weak"], "cam_threshold": threshold}})
        results[threshold] = run_pipeline(data, spec, tmp_path / f"out-{threshold}", device="cpu")
        model, meta = load_checkpoint(tmp_path / f"out-{threshold}" / "checkpoints" / "attended.safetensors")
        assert meta["architecture"]["cam_threshold"] == threshold and model.cam_threshold == threshold
    low, high = (results[t]["models"]["dense"]["overall"] for t in (0.3, 0.6))
    assert low["dice"] != high["dice"] and low["box_iou"] != high["box_iou"]


def test_the_gallery_keeps_small_masks_of_every_htl_image_and_a_sample(controlled):
    out, _ = controlled
    gallery = json.loads((out / "gallery.json").read_text())
    items = json.loads((out / "scores.json").read_text())
    htl = {i["image_id"] for i in items if i["is_htl"]}
    flagged = {i["image_id"] for i in items if i["label_issue"]}
    assert htl | flagged <= set(gallery["images"]) and len(gallery["images"]) <= len(htl | flagged) + gallery["sample"]
    assert gallery["layers"] == ["dense", "pruned@0.3", "pruned@0.5", "pruned@0.995", "oos"]  # oos: the label check's
    assert gallery["oos_images"] == gallery["images"]  # every image has a mask: the check predicted each one
    from PIL import Image as PILImage

    for layer in gallery["layers"]:
        with PILImage.open(out / "gallery" / layer / f"{gallery['images'][0]}.png") as mask:
            assert mask.size == (32, 32) and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_the_control_model_trains_on_its_random_set_and_the_attended_one_on_the_htl_set(tmp_path, monkeypatch):
    """What each model of the attend stage was boosted with, caught at the training call."""
    import ml.unit_training

    data = make_dataset(tmp_path / "data", n=60, size=32, seed=4)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1, "batch_size": 8},
            "prune": {"sparsities": [0.5]},
            "label_check": {"enabled": False},
            "attention": {"control": "random", "factor": 5.0},
        }
    )
    boosted = {}
    real = ml.unit_training.train_model

    def spy(inputs, seed, *, sampling_weights=None, **kwargs):
        boosted.setdefault("runs", []).append(
            None
            if sampling_weights is None
            else sorted(np.array(inputs.image_ids(inputs.train_idx))[sampling_weights == 5.0])
        )
        return real(inputs, seed, sampling_weights=sampling_weights, **kwargs)

    monkeypatch.setattr(ml.unit_training, "train_model", spy)
    run_pipeline(data, spec, tmp_path / "out", device="cpu")
    dense, attended, control = boosted["runs"]
    sets = json.loads((tmp_path / "out" / "state" / "attention.json").read_text())
    htl = sorted(i["image_id"] for i in json.loads((tmp_path / "out" / "scores.json").read_text()) if i["is_htl"])
    assert dense is None and attended == htl == sets["attended"] and control == sets["control"]["0"]
    assert control != attended


def test_an_empty_htl_set_is_warned_about_and_attends_nothing(tmp_path, monkeypatch):
    import ml.stages

    monkeypatch.setattr(
        ml.stages, "select_htl", lambda scores, **_: np.zeros(len(scores), dtype=bool)
    )  # as a threshold above every score
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=1)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1, "batch_size": 8},
            "prune": {"sparsities": [0.5]},
            "htl": {"threshold": 0.99},
            "label_check": {"enabled": False},
            "attention": {"control": "random"},
        }
    )
    metrics = run_pipeline(data, spec, tmp_path / "out", device="cpu")
    assert any("HTL set is empty" in w for w in metrics["warnings"])
    dense, _ = load_checkpoint(tmp_path / "out" / "checkpoints" / "dense.safetensors")
    for name in ("attended", "control"):
        model, _ = load_checkpoint(tmp_path / "out" / "checkpoints" / f"{name}.safetensors")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values())), name
