"""The evaluate unit: every model of every seed on the held-out splits, and the job's report
(metrics.json, subgroups.json, the typed EvaluationResult) from what it measured and what the
units before it left."""

from __future__ import annotations

from contract.results import EvaluationResult, decode, encode
from ml import guard
from ml.evaluation import (
    SplitEvaluation,
    compare_models,
    evaluate_split,
    image_evaluations,
    model_reports,
    split_reports,
)
from ml.job_context import JobContext
from ml.metrics import metric_values
from ml.report_parts import blank_guesses_report, focus_endpoint, label_check_summary, write_subgroups
from ml.run_folder import read_json, write_json
from ml.unit_training import training_records


def run_evaluate_unit(job: JobContext) -> EvaluationResult:
    attended = ["attended", *(["control"] if job.has_control() else [])]
    job.folder.require("select")
    job.folder.require_trained("attend", [job.name(b, s) for b in attended for s in job.seeds])
    if not job.folder.finished("attend"):
        write_json(job.folder.marker("attend"), {"training": training_records(job, "attend", attended)})
    if job.folder.finished("evaluate"):
        job.report("evaluate", 1.0, None)
        return evaluation_of(job)
    job.stage = "evaluate"
    results = _evaluate_splits(job)
    report = _report(job, results)
    write_json(job.out / "metrics.json", report)
    result = EvaluationResult(
        evaluations=[e for split, r in results.items() for e in image_evaluations(split, r)],
        metrics=metric_values(report["models"]),
        summary={k: v for k, v in report.items() if k != "models"},
        subgroups=write_subgroups(job, report, {split: r.scored for split, r in results.items()}),
    )
    write_json(job.folder.state("evaluation.json"), encode(result))
    write_json(job.folder.marker("evaluate"), {"models": job.model_names()})
    return result


def evaluation_of(job: JobContext) -> EvaluationResult:
    job.folder.require("evaluate")
    return decode(EvaluationResult, read_json(job.folder.state("evaluation.json")))


def _evaluate_splits(job: JobContext) -> dict[str, SplitEvaluation]:
    names = job.model_names()
    models = {name: job.load(name) for name in names}
    inputs = job.inputs()
    for name in names:
        (job.out / "predictions" / name).mkdir(parents=True, exist_ok=True)
    done, to_evaluate = 0, sum(map(len, job.eval_splits.values()))

    def advance(n: int) -> None:
        nonlocal done
        done += n
        job.report("evaluate", done / to_evaluate, None)

    dense_vs_pruned = job.disagreement_pairs()  # on every held-out split: each has its focus endpoint
    return {
        split: evaluate_split(
            inputs,
            models,
            indices,
            progress=advance,
            pairs=dense_vs_pruned,
            prediction_path=lambda model, image_id: job.out / "predictions" / model / f"{image_id}.png",
        )
        for split, indices in job.eval_splits.items()
    }


def _report(job: JobContext, results: dict[str, SplitEvaluation]) -> dict:
    """metrics.json: every model's report per split, the comparisons, the baselines and the focus endpoint."""
    labels = {**job.labels, **job.label_check_labels()}
    by_split = {
        split: split_reports(results[split], indices, labels, job.targets) for split, indices in job.eval_splits.items()
    }
    training = {**job.folder.read_marker("dense")["training"], **job.folder.read_marker("attend")["training"]}
    score_marker = job.folder.read_marker("score")
    attention = job.attention()
    report = {
        "validation_images": len(job.val_idx),
        "test_images": len(job.test_idx),
        "scored_images": len(results["validation"].scored),
        "splits": list(job.eval_splits),
        "group_column": job.spec.split.group_column,
        "attributes": job.attributes,
        "seeds": job.seeds,
        "models": model_reports(by_split, bases=job.bases(), seeds=job.seeds, name=job.name),
        "pruning": job.folder.read_marker("prune")["reports"],
        "ranked_by_sparsities": score_marker["ranked_by_sparsities"],
        "degenerate_sparsities": score_marker["degenerate_sparsities"],
        "attention": {"scorer": attention.scorer, "size": attention.size},
        "training_loss": {name: t["epoch_losses"] for name, t in training.items()},
        # what each model trained in (None: recorded before train.precision existed), and what this
        # evaluation's forward passes ran in
        "precision": {
            "training": {name: t.get("precision") for name, t in training.items()},
            "inference": job.precision,
        },
        "validation_curve": {name: t["validation_dice"] for name, t in training.items() if "validation_dice" in t},
        "scorer_agreement": score_marker["scorer_agreement"],
        "label_check": label_check_summary(job),
        "warnings": job.warnings(),
    }
    pairs = [("attended_vs_dense", "dense", "attended")]
    if job.has_control():
        pairs += [("attended_vs_control", "control", "attended"), ("control_vs_dense", "dense", "control")]
    for key, a, b in pairs:
        report[key] = compare_models(report["models"], a, b, seeds=job.seeds, name=job.name)
    report["blank_guesses"] = blank_guesses_report(job, report, results)
    report["warnings"] += [line for b in report["blank_guesses"].values() for line in b["warnings"]]
    if not job.targets.weak:
        _add_focus(job, report, results)
    _add_guard(job, report)
    return report


def _add_guard(job: JobContext, report: dict) -> None:
    """Which model to use, from validation; when attention sank the attended model, the warnings and
    the verdict say so."""
    recommended = guard.recommend(
        report["models"], margin=job.spec.attention.guard_margin, seeds=job.seeds, name=job.name
    )
    report["recommended_model"] = recommended
    if (line := guard.warning(recommended)) is not None:
        report["warnings"].append(line)
    report["verdict"] = guard.with_guard(report.get("verdict"), recommended)


def _add_focus(job: JobContext, report: dict, results: dict[str, SplitEvaluation]) -> None:
    """The focus endpoint on the focus split (test when there is one), and on validation too: where
    defaults and variants are chosen."""
    focus_split = "test" if "test" in job.eval_splits else "validation"
    endpoint = focus_endpoint(job, report, focus_split, results[focus_split])
    report["focus"], report["worst_decile"], report["verdict"] = (
        endpoint["focus"],
        endpoint["worst_decile"],
        endpoint["verdict"],
    )
    for key in ("attended_vs_dense", "attended_vs_control"):
        if key in report:
            report[key]["focus"] = endpoint[key]
    if focus_split != "validation":
        report["validation_endpoint"] = focus_endpoint(job, report, "validation", results["validation"])
