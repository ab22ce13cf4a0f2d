import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from contract.jobspec import JobSpec
from ml.checkpoints import load_checkpoint
from ml.pipeline import Run, RunDirError, run_pipeline
from ml.synthetic import make_dataset

SPEC = {
    "image_size": 32,
    "model": {"width": 8},
    # 10 epochs: at 6 the dense model's quality (and so the ranking) swung with the thread count
    "train": {"epochs": 10, "batch_size": 16},
    "split": {"group_column": "lesion_id", "val_fraction": 0.2},
    "prune": {"sparsities": [0.3, 0.5, 0.7, 0.9]},
    "htl": {"top_fraction": 0.1},
}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One uninterrupted run on data with a planted hard minority (site=rare, 15%)."""
    root = tmp_path_factory.mktemp("planted")
    data = make_dataset(root / "data", n=240, size=32, hard_fraction=0.15, seed=0)
    out = root / "out"
    metrics = run_pipeline(data, JobSpec.model_validate(SPEC), out, device="cpu")
    return data, out, metrics


def _scores(out):
    return json.loads((out / "scores.json").read_text())


def test_htl_set_is_enriched_for_the_planted_hard_minority(planted):
    _, out, _ = planted
    items = _scores(out)
    base = np.mean([i["attributes"]["site"] == "rare" for i in items])
    htl = [i for i in items if i["is_htl"]]
    rate = np.mean([i["attributes"]["site"] == "rare" for i in htl])
    assert len(htl) == round(0.1 * len(items))
    assert rate >= 3 * base, (rate, base)


def test_scores_json_lists_every_training_image_by_rank(planted):
    _, out, _ = planted
    items = _scores(out)
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert all(a["htl_score"] >= b["htl_score"] for a, b in zip(items, items[1:]))
    first = items[0]
    assert set(first) == {
        "image_id",
        "htl_score",
        "is_htl",
        "rank",
        "labeled",
        "per_sparsity",
        "scores",
        "attributes",
        "subgroups",
        "label_quality",
        "label_issue",
        "attended",
    }
    assert all(i["labeled"] for i in items)
    # the label check (on by default) read every training mask; the attended set is the HTL set less its label issues
    assert all(0.0 <= i["label_quality"] <= 1.0 and i["label_issue"] == (i["label_quality"] < 0.5) for i in items)
    assert sum(i["attended"] for i in items) == sum(i["is_htl"] for i in items)
    assert not any(i["attended"] and i["label_issue"] for i in items)
    assert first["scores"] == {}  # no other scorer asked for
    assert set(first["per_sparsity"]) == {"0.3", "0.5", "0.7", "0.9"}
    assert first["htl_score"] == pytest.approx(np.mean(list(first["per_sparsity"].values())))
    assert set(first["attributes"]) == {"lesion_id", "site", "sex", "age", "dx"}


def test_metrics_cover_every_model_overall_and_per_subgroup(planted):
    _, out, metrics = planted
    assert set(metrics["models"]) == {"dense", "attended", "pruned@0.3", "pruned@0.5", "pruned@0.7", "pruned@0.9"}
    dense = metrics["models"]["dense"]
    assert dense["n"] == metrics["scored_images"] == len(dense["per_image"]) == metrics["validation_images"]
    assert dense["overall"]["dice"] > 0.8
    assert set(dense["subgroups"]) == {"site", "sex", "age", "dx", "label_check"}  # lesion_id is the group column
    check = metrics["label_check"]
    assert check["enabled"] and check["checked"] == {
        "train": len(_scores(out)),
        "validation": metrics["validation_images"],
    }
    assert sum(dense["subgroups"]["label_check"][g]["n"] for g in dense["subgroups"]["label_check"]) == dense["n"]
    assert set(dense["subgroups"]["site"]) == {"common", "rare"}
    assert dense["subgroups"]["site"]["rare"]["dice"] < dense["subgroups"]["site"]["common"]["dice"]
    assert metrics["pruning"]["0.9"]["achieved"] == pytest.approx(0.9, abs=1e-3)
    guesses = metrics["blank_guesses"]["validation"]  # what reading no pixel scores on the same images
    assert guesses["n"] == dense["n"] and guesses["all_foreground"] < guesses["centred_disc"] < dense["overall"]["dice"]
    assert guesses["warnings"] == [] and guesses["models"]["dense"] == dense["overall"]["dice"]
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_predictions_are_written_at_original_size_and_rescore_to_the_reported_metrics(planted):
    data, out, metrics = planted
    from ml.boundary import boundary_metrics
    from ml.data import read_mask
    from ml.metrics import image_metrics

    first = metrics["models"]["attended"]["per_image"][0]
    pred_path = out / "predictions" / "attended" / f"{first['image_id']}.png"
    with Image.open(pred_path) as img:
        pred = np.asarray(img)
    assert set(np.unique(pred)) <= {0, 255}
    truth = read_mask(data / "masks" / f"{first['image_id']}_segmentation.png")
    assert pred.shape == truth.shape
    rescored = image_metrics(truth, pred > 127) | boundary_metrics(truth, pred > 127)
    assert rescored == {k: v for k, v in first.items() if k != "image_id"}


def test_checkpoints_rebuild_from_the_file_alone(planted):
    _, out, _ = planted
    model, meta = load_checkpoint(out / "checkpoints" / "pruned@0.5.safetensors")
    assert meta["architecture"] == {
        "arch": "unet",
        "width": 8,
        "cam_threshold": 0.2,
        "cam_poolings": 2,
        "encoder": None,
    }
    assert meta["spec"]["prune"]["sparsities"] == [0.3, 0.5, 0.7, 0.9]
    assert meta["sparsity"] == 0.5 and abs(meta["achieved_sparsity"] - 0.5) < 1e-3
    assert {p.name for p in (out / "checkpoints").iterdir()} == {
        "dense.safetensors",
        "attended.safetensors",
        *(f"pruned@{s}.safetensors" for s in ("0.3", "0.5", "0.7", "0.9")),
    }


def test_spec_json_has_every_default_filled_in(planted):
    _, out, _ = planted
    spec = json.loads((out / "spec.json").read_text())
    assert spec["attention"] == {
        "strategy": "oversample",
        "factor": 6.0,
        "scorer": "pruning",
        "control": "none",
        "mode": "from_scratch",
        "finetune_epochs": 2,
        "finetune_lr_factor": 0.1,
        "guard_margin": 0.02,
        "topk_fraction": 0.5,
        "exclude_label_issues": True,
        "unlabeled": "leave_out",
    }
    assert spec["label_check"] == {"enabled": True, "folds": 3, "epochs": None, "max_quality": 0.3}
    assert spec["prune"]["scope"] == "global" and spec["prune"]["bn_recalibration"] is False
    assert spec["train"]["lr"] == JobSpec().train.lr and spec["image_size"] == 32
    assert spec["train"]["precision"] == "auto"


def test_resume_after_an_interrupted_stage_gives_the_same_results(planted, tmp_path):
    data, out, metrics = planted

    def interrupt_while_scoring(p):
        if p.stage == "score" and p.stage_fraction >= 0.5:
            raise Interrupt()

    spec = JobSpec.model_validate(SPEC)
    with pytest.raises(Interrupt):
        Run(data, spec, tmp_path / "run", device="cpu", progress=interrupt_while_scoring).run()
    assert (tmp_path / "run" / "state" / "prune.json").is_file()
    assert not (tmp_path / "run" / "scores.json").exists()
    reports = []
    resumed = Run(data, spec, tmp_path / "run", device="cpu", progress=reports.append).run()
    # what finished before the interruption is skipped, each reported once as done: the dense and
    # label-check units, and the score unit's prune stage
    before_scoring = reports[: next(i for i, p in enumerate(reports) if p.stage == "score")]
    assert [(p.unit, p.stage, p.stage_fraction) for p in before_scoring] == [
        ("dense[0]", "dense", 1.0),
        *((f"label_check[{f}]", "label_check", 1.0) for f in range(3)),
        ("score", "prune", 1.0),
    ]
    assert _scores(tmp_path / "run") == _scores(out)
    assert resumed == metrics


def test_an_output_folder_of_another_spec_is_refused(planted, tmp_path):
    data, out, _ = planted
    other = JobSpec.model_validate({**SPEC, "train": {"epochs": 1}})
    with pytest.raises(RunDirError, match="another spec"):
        Run(data, other, out, device="cpu")


def test_subgroups_json_finds_the_planted_minority_enriched_and_not_sex(planted):
    _, out, _ = planted
    report = json.loads((out / "subgroups.json").read_text())
    rows = {(r["attribute"], r["value"]): r for r in report["enrichment"]["groups"]}
    rare = rows[("site", "rare")]
    assert rare["significant"] and rare["enrichment"] >= 3 and rare["enrichment_ci95"][0] > 1
    assert not any(r["significant"] for (a, _), r in rows.items() if a == "sex")
    assert {a for a, _ in rows} >= {
        "site",
        "sex",
        "age",
        "dx",
        "image:lesion_area",
        "image:lesion_contrast",
        "image:brightness",
    }
    assert len({v for a, v in rows if a == "image:lesion_contrast"}) == 4  # quartile bands
    low_contrast = min((v for a, v in rows if a == "image:lesion_contrast"), key=lambda v: float(v[1:].split(",")[0]))
    assert rows[("image:lesion_contrast", low_contrast)]["significant"]  # the planted minority is the faint lesions
    assert report["single_seed"] is True
    assert set(report["gap_closing"]) == {"validation"}  # no test split asked for
    validation = report["gap_closing"]["validation"]
    gap = {(g["attribute"], g["value"]): g for g in validation["subgroups"]}
    assert gap[("site", "rare")]["n"] + gap[("site", "common")]["n"] == validation["overall"]["n"]
    assert "lesion_id" in validation["method"] and "Benjamini-Hochberg" in validation["method"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["attended_vs_dense"]["single_seed"] is True and "not evidence" in metrics["attended_vs_dense"]["note"]
    )


def test_several_seeds_and_scorers(tmp_path):
    data = make_dataset(tmp_path / "data", n=60, size=32, seed=4)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 2, "batch_size": 8, "seeds": [3, 5]},
            "prune": {"sparsities": [0.5]},
            "scorers": ["loss", "forgetting", "el2n", "dynamic_dice", "mc_dropout"],
        }
    )
    metrics = run_pipeline(data, spec, tmp_path / "out", device="cpu")
    names = {p.name for p in (tmp_path / "out" / "checkpoints").iterdir()}
    assert names == {f"{m}-s{s}.safetensors" for m in ("dense", "pruned@0.5", "attended") for s in (3, 5)}
    dense = metrics["models"]["dense"]
    per_seed = [metrics["models"][f"dense-s{s}"]["overall"]["dice"] for s in (3, 5)]
    assert dense["seeds"] == 2 and dense["overall"]["dice"] == pytest.approx(np.mean(per_seed))
    # the 95% t-interval over the two seeds: mean +- t(0.975, 1) * sd / sqrt(2), t = 12.706
    half = 12.7062 * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert dense["overall_ci95"]["dice"] == pytest.approx(
        [np.mean(per_seed) - half, np.mean(per_seed) + half], rel=1e-4
    )
    cmp = metrics["attended_vs_dense"]
    assert cmp["single_seed"] is False and len(cmp["per_seed"]) == 2 and cmp["overall_ci95"]["dice"] is not None
    items = _scores(tmp_path / "out")
    assert set(items[0]["scores"]) == {"loss", "forgetting", "el2n", "dynamic_dice", "mc_dropout"}
    pairs = {(r["a"], r["b"]) for r in metrics["scorer_agreement"]}
    assert ("pruning", "loss") in pairs and len(pairs) == 15


def test_identical_runs_write_byte_identical_checkpoints(tmp_path):
    data = make_dataset(tmp_path / "data", n=40, size=32, seed=1)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1, "batch_size": 8},
            "prune": {"sparsities": [0.5]},
        }
    )
    for run in ("a", "b"):
        run_pipeline(data, spec, tmp_path / run, device="cpu")
    for name in ("dense", "pruned@0.5", "attended"):
        a, b = ((tmp_path / run / "checkpoints" / f"{name}.safetensors").read_bytes() for run in ("a", "b"))
        assert a == b, name  # the same sha256 and ETag for the same model


def test_the_units_in_order_make_the_same_run_as_the_whole_pipeline(tmp_path):
    from contract.units import parse_unit, plan_units

    data = make_dataset(tmp_path / "data", n=40, size=32, seed=4)
    spec = JobSpec.model_validate(
        {
            "image_size": 32,
            "model": {"width": 4},
            "train": {"epochs": 1, "batch_size": 8, "seeds": [0, 1]},
            "prune": {"sparsities": [0.5]},
            "attention": {"control": "random"},
        }
    )
    whole = run_pipeline(data, spec, tmp_path / "whole", device="cpu")
    plan = [p.name for p in plan_units(spec)]
    assert plan == [
        "dense[0]",
        "dense[1]",
        "label_check[0]",
        "label_check[1]",
        "label_check[2]",
        "score",
        "select",
        "attend[0]",
        "control[0]",
        "attend[1]",
        "control[1]",
        "evaluate",
    ]
    with pytest.raises(RunDirError, match="dense-s1"):  # score needs every dense seed: it never trains one itself
        run = Run(data, spec, tmp_path / "units", device="cpu")
        run.run_unit("dense", 0)
        run.run_unit("score")
    with pytest.raises(RunDirError, match=r"label-check folds .*\[2\]"):  # nor a label-check fold
        run = Run(data, spec, tmp_path / "units", device="cpu")
        for name in plan[:4]:
            run.run_unit(*parse_unit(name))
        run.run_unit("score")
    for name in plan:  # each unit in a fresh Run, as on a worker that has only the store's files
        answered = Run(data, spec, tmp_path / "units", device="cpu").run_unit(*parse_unit(name))
        assert (answered is None) == (name != "evaluate")
    # the last unit answers the job's results, typed; a worker resuming after it reads the same back
    assert answered == Run(data, spec, tmp_path / "units", device="cpu").results()
    by_name = {c.name: c for c in answered.checkpoints}
    assert sorted(by_name) == sorted(
        f"{base}-s{seed}" for seed in (0, 1) for base in ("dense", "pruned@0.5", "attended", "control")
    )
    for c in answered.checkpoints:
        assert c.sha256 == hashlib.sha256((tmp_path / "units" / c.path).read_bytes()).hexdigest()
        assert c.size_bytes == (tmp_path / "units" / c.path).stat().st_size
        assert (c.seed, c.sparsity) == (int(c.name[-1]), 0.5 if c.base == "pruned@0.5" else None)
    assert [s.rank for s in answered.scores] == list(range(1, 33)) and answered.evaluation.evaluations
    per_image = {(e.model, e.image_id): e.metrics for e in answered.evaluation.evaluations}
    for model in by_name:  # each seed's model: every validation image's metrics, as metrics.json lists them
        listed = whole["models"][model]["per_image"]
        assert len(listed) == len([k for k in per_image if k[0] == model]) > 0
    overall = {
        (m.model, m.metric): m.value
        for m in answered.evaluation.metrics
        if m.split == "validation" and m.attribute is None
    }
    assert overall[("attended", "dice")] == pytest.approx(
        np.mean([overall[(f"attended-s{s}", "dice")] for s in (0, 1)])
    )
    assert json.loads((tmp_path / "units" / "scores.json").read_text()) == json.loads(
        (tmp_path / "whole" / "scores.json").read_text()
    )
    assert json.loads((tmp_path / "units" / "metrics.json").read_text())["models"].keys() == whole["models"].keys()
