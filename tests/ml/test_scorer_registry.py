"""A scorer is one ScorerInfo line in contract.scorers and one function in ml.scorers: shown with a
toy scorer that a job computes, stores and attends by, and the import-time check that the two
registries agree."""

import json

import numpy as np
import pytest

import ml.scorers
from contract.jobspec import JobSpec
from contract.scorers import SCORERS, ScorerInfo
from ml.pipeline import run_pipeline
from ml.scorers import DenseSeed, check_registry, scorer
from ml.synthetic import make_dataset

pytestmark = pytest.mark.torch


@pytest.fixture
def toy_registries(monkeypatch):
    """The registries as they are, each with room for a scorer this test adds (undone after it)."""
    monkeypatch.setitem(SCORERS, "toy", ScorerInfo("toy", False, "model", 0, "the image's place in training order"))
    monkeypatch.setattr(ml.scorers, "SCORE_FUNCTIONS", dict(ml.scorers.SCORE_FUNCTIONS))


def test_a_new_scorer_is_one_registry_line_and_one_function(toy_registries, tmp_path):
    seen = {}

    @scorer("toy")
    def toy(d: DenseSeed) -> np.ndarray:
        seen["ids"] = d.inputs.image_ids(d.inputs.train_idx)
        return np.linspace(0.0, 1.0, len(d.inputs.train_idx))  # the last training image is the "hardest"

    data = make_dataset(tmp_path / "data", n=60, size=32, seed=0)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 8},
            "train": {"epochs": 1, "batch_size": 16},
            "prune": {"sparsities": [0.5]},
            "label_check": {"enabled": False},
            "htl": {"top_fraction": 0.1},
            "scorers": ["pruning", "toy"],
            "attention": {"scorer": "toy"},
        }
    )
    metrics = run_pipeline(data, spec, tmp_path / "out", device="cpu")
    items = {i["image_id"]: i for i in json.loads((tmp_path / "out" / "scores.json").read_text())}
    ids = seen["ids"]
    assert [items[i]["scores"]["toy"] for i in ids] == pytest.approx(np.linspace(0.0, 1.0, len(ids)))
    k = metrics["attention"]["size"]
    assert metrics["attention"]["scorer"] == "toy" and k == sum(i["is_htl"] for i in items.values()) > 0
    assert sorted(i for i in ids if items[i]["attended"]) == sorted(ids[-k:])  # the top of the toy scorer
    assert {a["a"] for a in metrics["scorer_agreement"]} | {a["b"] for a in metrics["scorer_agreement"]} >= {"toy"}


def test_a_scorer_without_its_function_is_refused(toy_registries):
    with pytest.raises(RuntimeError, match="disagree"):
        check_registry()
    scorer("toy")(lambda d: np.zeros(0))
    check_registry()


def test_an_unknown_scorer_is_refused_by_the_spec():
    with pytest.raises(ValueError, match="unknown scorer 'toy'"):
        JobSpec.model_validate({"scorers": ["toy"]})
