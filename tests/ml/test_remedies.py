"""The remedies beside oversampling (attention.strategy jtt and group_balance): each picks what its
source says, hands its weights to training, and draws its control the same way at random."""

import json

import numpy as np
import pytest
import torch

import ml.unit_training
from contract.jobspec import JobSpec
from ml import remedies
from ml.pipeline import Run
from ml.synthetic import make_dataset

SPEC = {
    "image_size": 32,
    "model": {"width": 4},
    "train": {"epochs": 3, "batch_size": 8},
    "prune": {"sparsities": [0.3, 0.5]},
    "label_check": {"enabled": False},
    "attention": {"control": "random", "factor": 4.0},
}


def test_the_error_set_is_the_worst_eligible_images_by_dice():
    dice = np.array([0.9, 0.1, np.nan, 0.5, 0.05, 0.2])
    eligible = np.array([True, True, True, True, False, True])
    assert remedies.error_set(dice, eligible, 3).tolist() == [1, 3, 5]  # 4 is not eligible, 2 has no mask


def test_balanced_groups_each_draw_as_much_as_the_rest():
    members = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    weights = remedies.balance_weights(members, 10)  # 4 images in no group
    assert weights[[0, 1]].sum() == pytest.approx(weights[6:].sum()) == pytest.approx(weights[2:6].sum())
    assert (weights[6:] == 1).all()
    assert (remedies.balance_weights([np.arange(4)], 4) == 1).all()  # nothing outside to balance against


def test_random_groups_keep_the_sizes_and_overlap_and_come_from_the_pool():
    pool = np.arange(10, 30)
    members = [np.array([0, 1, 2]), np.array([2, 3, 4, 5, 6])]  # image 2 in both
    groups = remedies.random_groups_like(members, pool, np.random.default_rng(0))
    assert [len(g) for g in groups] == [3, 5]
    assert len(set(groups[0].tolist()) & set(groups[1].tolist())) == 1
    assert set(np.concatenate(groups).tolist()) <= set(pool.tolist())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Generated data with a planted hard minority (site=rare, 20%) and a dense run of it, up to its
    ranking: every strategy below selects from the same run."""
    root = tmp_path_factory.mktemp("remedies")
    data = make_dataset(root / "data", n=120, size=32, hard_fraction=0.2, seed=3)
    Run(data, JobSpec.model_validate(SPEC), root / "base", device="cpu").run(until="score")
    return data, root


def _run_with(planted, tmp_path, strategy: str, monkeypatch) -> tuple[Run, dict, dict]:
    """The planted run's dense units re-used, then select and attend with this strategy, the sampling
    weights each attended or control model trained with recorded."""
    data, root = planted
    spec = JobSpec.model_validate({**SPEC, "attention": {**SPEC["attention"], "strategy": strategy}})
    run = Run(data, spec, tmp_path / strategy, device="cpu")
    run.job.folder.reuse(root / "base")
    seen = {}
    real = ml.unit_training.train_model

    def spy(inputs, seed, *, sampling_weights=None, **kwargs):
        seen[len(seen)] = dict(zip(inputs.image_ids(inputs.train_idx), sampling_weights.tolist()))
        return real(inputs, seed, sampling_weights=sampling_weights, **kwargs)

    monkeypatch.setattr(ml.unit_training, "train_model", spy)
    run.run(until="control")
    sets = json.loads((run.job.out / "state" / "attention.json").read_text())
    return run, sets, {"attended": seen[0], "control": seen[1]}


def test_jtt_up_samples_the_images_the_dense_model_localizes_worst(planted, tmp_path, monkeypatch):
    run, sets, weights = _run_with(planted, tmp_path, "jtt", monkeypatch)
    job = run.job
    dice = remedies.training_dice(job.inputs(), [job.load("dense")])
    ids = job.inputs().image_ids(job.train_idx)
    k = sum(s["is_htl"] for s in json.loads((job.out / "scores.json").read_text()))
    worst = sorted(np.array(ids)[np.argsort(dice, kind="stable")[:k]].tolist())
    assert sets["scorer"] == "dense_training_dice" and sorted(sets["attended"]) == worst
    assert sorted(i for i, w in weights["attended"].items() if w == 4.0) == worst
    assert sorted(i for i, w in weights["control"].items() if w == 4.0) == sorted(sets["control"]["0"])
    assert set(sets["control"]["0"]) != set(worst)


def test_group_balance_weighs_each_flagged_group_as_much_as_the_rest(planted, tmp_path, monkeypatch):
    run, sets, weights = _run_with(planted, tmp_path, "group_balance", monkeypatch)
    scores = json.loads((run.job.out / "scores.json").read_text())
    assert ["site", "rare"] in sets["groups"]  # the planted hard minority is the HTL set's
    rare = {s["image_id"] for s in scores if s["attributes"]["site"] == "rare"}
    grouped = {i for a, v in sets["groups"] for i in (s["image_id"] for s in scores if s["subgroups"].get(a) == v)}
    assert set(sets["attended"]) == grouped and rare <= grouped
    w = weights["attended"]
    rest = [i for i in w if i not in grouped]
    assert all(w[i] == 1.0 for i in rest) and len(rest) > len(rare)
    for attribute, value in sets["groups"]:  # each group draws at least as much as the rest together
        members = [s["image_id"] for s in scores if s["subgroups"].get(attribute) == value]
        assert sum(w[i] for i in members) >= len(rest) - 1e-6, (attribute, value)
    assert w == {**{i: 1.0 for i in w}, **sets["weights"]}
    control = set(sets["control"]["0"])
    assert len(control) == len(grouped) and control != grouped
    assert weights["control"] == {**{i: 1.0 for i in w}, **sets["control_weights"]["0"]}


def test_jtt_is_refused_where_there_is_no_mask_to_err_on():
    with pytest.raises(ValueError, match="jtt"):
        JobSpec.model_validate(
            {
                "setting": "weakly_supervised",
                "weak": {"label_column": "dx", "positive": ["mel"]},
                "attention": {"strategy": "jtt"},
            }
        )


def test_topk_loss_keeps_the_hardest_share_of_each_batch_and_its_control_a_random_one():
    loss = torch.tensor([0.1, 0.9, 0.5, 0.7])
    top = remedies.TopKLoss(0.5, random=False, seed=0)(np.arange(4), loss)
    assert top.tolist() == [0.0, 1.0, 0.0, 1.0]
    drawn = [remedies.TopKLoss(0.5, random=True, seed=s)(np.arange(4), loss) for s in range(8)]
    assert all(d.sum() == 2 for d in drawn) and any(d.tolist() != top.tolist() for d in drawn)


def test_group_dro_moves_weight_to_the_group_that_loses_more():
    dro = remedies.GroupDRO(np.array([0, 0, 1, 1]), step=0.5)
    for _ in range(20):
        weights = dro(np.arange(4), torch.tensor([0.1, 0.1, 1.0, 1.0]))
    assert dro.q[1] > 0.9 and dro.q.sum().item() == pytest.approx(1.0)
    assert weights[2] == pytest.approx(dro.q[1].item() / 2) and weights[0] == pytest.approx(dro.q[0].item() / 2)
    assert remedies.group_index([np.array([1, 2]), np.array([2, 3])], 5).tolist() == [0, 1, 1, 2, 0]


def _weighting_seen(planted, tmp_path, strategy, monkeypatch) -> tuple[Run, list]:
    """The run's attend and control units, the batch weighting each model trained with recorded."""
    data, root = planted
    spec = JobSpec.model_validate({**SPEC, "attention": {**SPEC["attention"], "strategy": strategy}})
    run = Run(data, spec, tmp_path / strategy, device="cpu")
    run.job.folder.reuse(root / "base")
    seen = []
    real = ml.unit_training.train_model

    def spy(inputs, seed, *, batch_weighting=None, **kwargs):
        seen.append(batch_weighting)
        return real(inputs, seed, batch_weighting=batch_weighting, **kwargs)

    monkeypatch.setattr(ml.unit_training, "train_model", spy)
    run.run(until="control")
    return run, seen


def test_topk_loss_trains_with_the_hard_share_and_the_control_with_a_random_one(planted, tmp_path, monkeypatch):
    _, (attended, control) = _weighting_seen(planted, tmp_path, "topk_loss", monkeypatch)
    assert isinstance(attended, remedies.TopKLoss) and not attended.random and attended.top_fraction == 0.5
    assert isinstance(control, remedies.TopKLoss) and control.random


def test_group_dro_trains_over_the_flagged_groups_and_the_control_over_random_ones(planted, tmp_path, monkeypatch):
    run, (attended, control) = _weighting_seen(planted, tmp_path, "group_dro", monkeypatch)
    sets = json.loads((run.job.out / "state" / "attention.json").read_text())
    ids = run.job.inputs().image_ids(run.job.train_idx)
    scores = {s["image_id"]: s for s in json.loads((run.job.out / "scores.json").read_text())}
    first = sets["groups"][0]
    in_first = [scores[i]["subgroups"].get(first[0]) == first[1] for i in ids]
    assert ["site", "rare"] in sets["groups"]
    assert all(g == 1 for g, inside in zip(attended.group_of.tolist(), in_first) if inside)
    assert (attended.group_of > 0).sum() == len(sets["attended"])
    assert (control.group_of > 0).sum() == len(sets["control"]["0"]) and not torch.equal(
        attended.group_of, control.group_of
    )
    assert float(attended.q.sum()) == pytest.approx(1.0) and not torch.allclose(attended.q, attended.q[0])


def test_batch_weighting_changes_what_is_learned(planted):
    """fit uses the weighting it is given: training with topk_loss ends elsewhere than without it."""
    from ml.data import decode_dataset, scan_dataset
    from ml.models import build_model
    from ml.train import FitConfig, fit, prepare_for_device

    data, _ = planted
    decoded = decode_dataset(scan_dataset(data), 32)
    ends = []
    for weighting in (None, remedies.TopKLoss(0.25, random=False, seed=0)):
        torch.manual_seed(0)
        model = prepare_for_device(build_model("unet", width=4), "cpu", precision="fp32")
        fit(model, decoded, list(range(64)), FitConfig(epochs=1, batch_size=16, seed=0), batch_weighting=weighting)
        ends.append(next(iter(model.parameters())).detach().clone())
    assert not torch.equal(ends[0], ends[1])
