"""The parts of a job's report that read beyond one model's metrics: the guesses that read no
pixel, the focus endpoint and its verdict, the label check's summary, and subgroups.json."""

from __future__ import annotations

import numpy as np

from ml import focus, subgroups
from ml.evaluation import SplitEvaluation, blank_guesses
from ml.job_context import JobContext
from ml.run_folder import read_json, write_json
from ml.subgroups import LABEL_CHECK_ATTRIBUTE

BOOTSTRAP_RESAMPLES = 2000
BLANK_GUESSES = {"all_foreground": "an all-foreground mask", "centred_disc": "a centred disc of the mean lesion size"}


def blank_guesses_report(job: JobContext, report: dict, results: dict[str, SplitEvaluation]) -> dict:
    """Per held-out split, what guesses that read no pixel score on the images the models were
    scored on (weakly supervised: the positive ones), beside each base model's Dice (its mean over
    seeds); a warning for each model that does not beat them."""
    images = "positive images" if job.targets.weak else "images with a mask"
    out = {}
    for split, result in results.items():
        guesses = blank_guesses(job.index.records, result.scored)
        models = report["models"]
        dice = {
            base: (models[base] if split == "validation" else models[base]["test"])["overall"].get("dice")
            for base in job.bases()
        }
        # (a degenerate pruned model is the pruning report's to name)
        warnings = [
            f"{split}: the {base} model's localization Dice {d:.3f} does not beat {BLANK_GUESSES[guess]} "
            f"({guesses[guess]:.3f}) on the same {guesses['n']} {images}: it localizes no better "
            "than a guess that reads no pixel"
            for base, d in dice.items()
            if d is not None and not base.startswith("pruned@")
            for guess in BLANK_GUESSES
            if guesses[guess] is not None and d <= guesses[guess]
        ]
        out[split] = {**guesses, "models": dice, "warnings": warnings}
    return out


def focus_endpoint(job: JobContext, report: dict, split: str, evaluation: SplitEvaluation) -> dict:
    """ml.focus on a held-out split: the focus set, attended vs control and vs dense on it, the
    worst-decile Dice of each model, and the verdict."""
    indices = job.eval_splits[split]
    pairs = job.disagreement_pairs()
    apart = np.mean([evaluation.disagreement[p] for p in pairs], axis=0) if pairs else np.zeros(len(indices))
    at = {i: j for j, i in enumerate(indices)}
    scored = evaluation.scored
    bases = ["dense", "attended", *(["control"] if job.has_control() else [])]
    issues = job.label_issues()
    ids = [job.image_id(i) for i in scored]
    return focus.focus_report(
        split=split,
        image_ids=ids,
        dice={b: job.per_image_dice(report["models"], b, split) for b in bases},
        disagreement=apart[[at[i] for i in scored]],
        groups=job.groups_of(scored),
        enrichment=read_json(job.folder.state("enrichment.json")),
        label_issue=np.array([issues.get(i, False) for i in ids]),
        clusters=job.clusters(scored),
        top_fraction=job.spec.htl.top_fraction or 0.1,
        seed=job.spec.split.seed,
        cluster_name=job.spec.split.group_column,
    )


def label_check_summary(job: JobContext) -> dict:
    """metrics.json 'label_check': what was checked, how, and the images flagged, worst first."""
    results = job.label_check_results()
    if results is None:
        reason = "weakly supervised: no mask is trained on" if job.targets.weak else "label_check.enabled is false"
        return {"enabled": False, "reason": reason}
    return {k: v for k, v in results.items() if k != "images"} | {
        "n_issues": {split: sum(e["split"] == split for e in results["issues"]) for split in results["checked"]},
        "rule": f"label_quality < {results['max_quality']:g}, where label_quality = 1 - the share of the mask-or-prediction "
        f"region whose out-of-sample probability contradicts the mask beyond {results['confident']:g}",
        "metrics_without_issues": f"every model's figures on the images the check did not flag are its subgroup "
        f"{LABEL_CHECK_ATTRIBUTE}=ok",
    }


def write_subgroups(job: JobContext, report: dict, scored_by_split: dict[str, list[int]]) -> dict:
    """subgroups.json: HTL enrichment per training subgroup, and per split and subgroup whether
    attention closed the gap: paired per-image Dice differences, bootstrapped over seeds and
    clusters of split.group_column, Benjamini-Hochberg across subgroups."""
    models = report["models"]
    gap = {}
    for split, scored in scored_by_split.items():
        if not scored:
            continue
        gap[split] = subgroups.gap_closing(
            job.per_image_dice(models, "dense", split),
            job.per_image_dice(models, "attended", split),
            job.groups_of(scored),
            control=job.per_image_dice(models, "control", split) if job.has_control() else None,
            clusters=job.clusters(scored),
            cluster_name=job.spec.split.group_column,
            resamples=BOOTSTRAP_RESAMPLES,
            seed=job.spec.split.seed,
        )
    body = {
        "seeds": job.seeds,
        "single_seed": len(job.seeds) == 1,
        "enrichment": read_json(job.folder.state("enrichment.json")),
        "gap_closing": gap or None,
    }
    write_json(job.out / "subgroups.json", body)
    return body
