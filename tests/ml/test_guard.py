"""The guard around attention: an attended model that sank below dense on validation is never the
recommended model, and the job says so."""

from contract.roster import model_name
from ml import guard


def _models(dense: list[float], attended: list[float]) -> dict:
    seeds = list(range(len(dense)))
    out = {}
    for base, values in (("dense", dense), ("attended", attended)):
        for s, v in zip(seeds, values):
            out[model_name(base, s, seeds)] = {"overall": {"dice": v}}
        if len(seeds) > 1:
            out[base] = {"overall": {"dice": sum(values) / len(values)}}
    return out


def _recommend(dense, attended, margin=0.02):
    seeds = list(range(len(dense)))
    return guard.recommend(
        _models(dense, attended), margin=margin, seeds=seeds, name=lambda b, s: model_name(b, s, seeds)
    )


def test_a_sunk_attended_model_makes_dense_the_recommendation_with_its_best_seed():
    rec = _recommend([0.80, 0.86, 0.83], [0.30, 0.20, 0.25])
    assert rec["attention_sank"] is True
    assert rec["model"] == "dense"
    assert rec["download"] == "dense-s1"  # the dense seed with the best validation Dice
    line = guard.warning(rec)
    assert line is not None and "use the dense model" in line and "dense-s1" in line
    verdict = guard.with_guard("On the focus set, attention beat the random control.", rec)
    assert verdict.startswith("On the focus set") and "use the dense model" in verdict


def test_an_attended_model_within_the_margin_is_recommended_and_nothing_is_added():
    rec = _recommend([0.80], [0.79])
    assert rec["attention_sank"] is False
    assert rec["model"] == "attended" and rec["download"] == "attended"
    assert guard.warning(rec) is None
    assert guard.with_guard("the verdict.", rec) == "the verdict."


def test_the_margin_is_the_line():
    assert _recommend([0.80], [0.77], margin=0.05)["model"] == "attended"
    assert _recommend([0.80], [0.77], margin=0.02)["model"] == "dense"


def test_without_masks_on_validation_dense_is_recommended_and_unjudged():
    seeds = [0]
    rec = guard.recommend(
        {"dense": {"overall": {}}, "attended": {"overall": {}}}, margin=0.02, seeds=seeds, name=lambda b, s: b
    )
    assert rec["model"] == "dense" and rec["attention_sank"] is None
    assert guard.warning(rec) is None


def test_a_weak_job_without_a_verdict_gets_the_guard_sentence_as_its_verdict():
    rec = _recommend([0.35], [0.08])
    verdict = guard.with_guard(None, rec)
    assert verdict is not None and verdict.startswith("The attended model's validation Dice (0.0800)")


def test_a_job_whose_attended_model_sank_warns_and_recommends_dense(tmp_path):
    """Through the units: the attended model is replaced, after its unit, by one that predicts no
    lesion anywhere; the evaluate unit must then recommend dense, warn and say so in its verdict."""
    import torch

    from contract.jobspec import JobSpec
    from ml.pipeline import Run
    from ml.synthetic import make_dataset

    data = make_dataset(tmp_path / "data", n=60, size=32, hard_fraction=0.15, seed=0)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 2},
            "prune": {"sparsities": [0.5]},
            "label_check": {"enabled": False},
        }
    )
    run = Run(data, spec, tmp_path / "out", device="cpu")
    run.run(until="attend")
    sunk = run.job.load("attended")
    with torch.no_grad():
        sunk.head.bias.fill_(-100.0)  # every pixel background: Dice 0 wherever there is a lesion
    run.job.save(sunk, "attended", 0)
    metrics = run.run()
    rec = metrics["recommended_model"]
    assert rec["attention_sank"] is True and rec["model"] == "dense" and rec["download"] == "dense"
    assert rec["attended_dice"] < rec["dense_dice"] - spec.attention.guard_margin
    assert any("use the dense model" in w for w in metrics["warnings"])
    assert "use the dense model" in metrics["verdict"]
