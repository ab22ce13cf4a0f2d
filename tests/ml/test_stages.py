"""ml.stages and ml.evaluation: the stages are plain functions over inputs, models and typed results; they run without a
run folder and write nothing but what they are told to."""

import numpy as np
import pytest
import torch

from contract.jobspec import JobSpec
from contract.results import ImageScore
from ml.data import decode_dataset, scan_dataset, split_indices
from ml.evaluation import evaluate_split
from ml.models import ModelConfig
from ml.setting import make_targets
from ml.stages import (
    DegenerateError,
    SeedScores,
    StageInputs,
    attention_sets,
    boost,
    prune_dense,
    rank_images,
    score_seed,
    train_model,
)
from ml.synthetic import make_dataset

SPEC = {
    "image_size": 32,
    "model": {"width": 4},
    "train": {"epochs": 1, "batch_size": 8},
    "prune": {"sparsities": [0.5, 0.9]},
    "htl": {"top_fraction": 0.25},
    "scorers": ["loss", "forgetting"],
    "attention": {"control": "random", "factor": 3.0},
}


def inputs_for(tmp_path, spec: dict) -> StageInputs:
    index = scan_dataset(make_dataset(tmp_path / "data", n=40, size=32, seed=2))
    parsed = JobSpec.model_validate(spec)
    train, val, _ = split_indices(index, val_fraction=0.25, group_column=None, seed=0)
    return StageInputs(
        spec=parsed,
        index=index,
        data=decode_dataset(index, 32),
        val_idx=val,
        targets=make_targets(index, parsed, train),
        model_config=ModelConfig("unet", 4),
        device=torch.device("cpu"),
        precision="fp32",
    )


def test_the_stages_chain_as_plain_functions_and_write_only_predictions(tmp_path):
    inputs = inputs_for(tmp_path, SPEC)
    before = {p for p in tmp_path.rglob("*")}
    trained = train_model(inputs, 0, record_dynamics=True)
    assert len(trained.epoch_losses) == 1 and len(trained.validation_dice) == 1
    assert trained.dynamics["dice"].shape == (len(inputs.train_idx), 1)
    pruned = prune_dense(inputs, trained.model, 0)
    assert [p.sparsity for p in pruned] == [0.5, 0.9] and all("degenerate" in p.health for p in pruned)
    seed_scores = score_seed(inputs, trained.model, {p.sparsity: p.model for p in pruned}, 0, dynamics=trained.dynamics)
    assert set(seed_scores.others) == {"loss", "forgetting"}
    groups = {"site": [inputs.index.records[i].attributes["site"] for i in inputs.train_idx]}
    ranking = rank_images(inputs, [seed_scores], degenerate=set(), groups=groups)
    n = len(inputs.train_idx)
    assert all(isinstance(s, ImageScore) for s in ranking.scores)
    assert [s.rank for s in ranking.scores] == list(range(1, n + 1))
    assert sum(s.is_htl for s in ranking.scores) == int(ranking.is_htl.sum()) == round(0.25 * n)
    assert {s.image_id for s in ranking.scores} == set(inputs.image_ids(inputs.train_idx))
    sets = attention_sets(inputs, ranking, [0, 1])
    assert len(sets.attended) == sets.size == len(sets.control["1"]) == int(ranking.is_htl.sum())
    written = {}

    def prediction_path(model, image_id):
        path = tmp_path / "predictions" / model / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        written[(model, image_id)] = path
        return path

    result = evaluate_split(inputs, {"dense": trained.model}, inputs.val_idx, prediction_path=prediction_path)
    assert (
        len(result.per_image["dense"]) == len(result.scored) == len(inputs.val_idx)
    )  # every synthetic image has a mask
    assert set(written) == {("dense", image_id) for image_id in inputs.image_ids(inputs.val_idx)}
    new_files = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert new_files == set(written.values())  # no run folder, no state: only what prediction_path named


def test_a_ranking_with_every_sparsity_degenerate_is_refused(tmp_path):
    inputs = inputs_for(tmp_path, SPEC)
    n = len(inputs.train_idx)
    fake = SeedScores({0.5: np.zeros(n), 0.9: np.ones(n)}, {})
    assert rank_images(inputs, [fake], degenerate={0.9}, groups={}).ranked_by == [0.5]
    with pytest.raises(DegenerateError, match="every pruned model is degenerate"):
        rank_images(inputs, [fake], degenerate={0.5, 0.9}, groups={})


@pytest.mark.parametrize(
    "strategy, weighted, sampled", [("reweight", True, False), ("oversample", False, True), ("both", True, True)]
)
def test_boost_weights_the_chosen_images_as_the_strategy_says(tmp_path, strategy, weighted, sampled):
    inputs = inputs_for(tmp_path, {**SPEC, "attention": {"strategy": strategy, "factor": 4.0}})
    chosen = inputs.image_ids(inputs.train_idx)[:3]
    loss_weights, sampling_weights = boost(inputs, chosen)
    expected = np.array([4.0] * 3 + [1.0] * (len(inputs.train_idx) - 3))
    for got, wanted in ((loss_weights, weighted), (sampling_weights, sampled)):
        assert (got is not None) == wanted
        if wanted:
            np.testing.assert_array_equal(got, expected)


def test_evaluation_answers_the_same_with_a_helper_thread_as_at_once(tmp_path, monkeypatch):
    """The CPU scores each image at once; a GPU hands that to a helper thread (ml.evaluation._helper)."""
    from concurrent.futures import ThreadPoolExecutor

    import ml.evaluation

    inputs = inputs_for(tmp_path, SPEC)
    model = train_model(inputs, 0).model

    def evaluate(folder):
        def path(model_name, image_id):
            (tmp_path / folder).mkdir(exist_ok=True)
            return tmp_path / folder / f"{image_id}.png"

        return evaluate_split(inputs, {"dense": model}, inputs.val_idx, prediction_path=path)

    at_once = evaluate("at-once")
    monkeypatch.setattr(ml.evaluation, "_helper", lambda device: ThreadPoolExecutor(max_workers=1))
    threaded = evaluate("threaded")
    assert threaded.per_image == at_once.per_image and threaded.scored == at_once.scored
    for png in (tmp_path / "at-once").iterdir():
        assert png.read_bytes() == (tmp_path / "threaded" / png.name).read_bytes()


def test_attention_leaves_label_issues_out_and_refills_by_rank_and_the_control_draws_from_the_same_pool(tmp_path):
    inputs = inputs_for(tmp_path, {**SPEC, "attention": {"control": "random"}})
    n = len(inputs.train_idx)
    ids = inputs.image_ids(inputs.train_idx)
    fake = SeedScores(
        {0.5: np.linspace(1, 0, n), 0.9: np.linspace(1, 0, n)}, {"loss": np.zeros(n), "forgetting": np.zeros(n)}
    )
    ranking = rank_images(inputs, [fake], degenerate=set(), groups={})
    k = int(ranking.is_htl.sum())
    plain = attention_sets(inputs, ranking, [0, 1])
    assert plain.attended == sorted(ids[:k]) and plain.excluded == []
    excluded = set(ids[:2]) | set(ids[-5:])  # two of the hardest images, five others
    sets = attention_sets(inputs, ranking, [0, 1], excluded=excluded)
    assert sets.size == k and sets.attended == sorted(ids[2 : k + 2])  # the next-ranked take their places
    for seed in ("0", "1"):
        assert len(sets.control[seed]) == k and not set(sets.control[seed]) & excluded
    assert sets.control["0"] != sets.control["1"]
    assert sets.excluded == sorted(excluded)
