"""The score unit: once every dense seed and label-check fold is done, it prunes each dense model,
combines the label check, scores and ranks every training image and writes the HTL gallery. Nothing
here depends on the spec's attention: the select unit picks the attended sets from this ranking."""

from __future__ import annotations

import dataclasses

import numpy as np

from contract.results import ImageScore, encode
from contract.roster import pruned_base
from contract.scorers import SCORERS
from ml import label_check, subgroups
from ml.job_context import JobContext
from ml.run_folder import RunDirError, write_json
from ml.stages import Ranking, SeedScores, prune_dense, rank_images, score_seed
from ml.unit_gallery import gallery_masks, write_gallery
from ml.unit_training import training_records


def run_score_unit(job: JobContext) -> None:
    job.folder.require_trained("dense", [job.name("dense", s) for s in job.seeds])
    lc = job.spec.label_check
    missing = [f for f in range(lc.folds) if lc.enabled and not job.folder.fold_file(f).is_file()]
    if missing:
        raise RunDirError(f"label-check folds not checked yet in {job.out}: {missing} (their units must succeed first)")
    if not job.folder.finished("dense"):
        write_json(job.folder.marker("dense"), {"training": training_records(job, "dense", ["dense"])})
    if not job.folder.finished("label_check"):
        write_json(job.folder.marker("label_check"), {"enabled": lc.enabled, "folds": lc.folds if lc.enabled else 0})
    for stage, work in (("prune", prune_all), ("score", score_all)):
        if job.folder.finished(stage):  # a resumed unit: done before it was interrupted
            job.report(stage, 1.0, None)
            continue
        job.stage = stage
        job.report(stage, 0.0, None)
        work(job)


def prune_all(job: JobContext) -> None:
    p = job.spec.prune
    reports = {}
    for j, seed in enumerate(job.seeds):
        pruned = prune_dense(
            job.inputs(),
            job.load(job.name("dense", seed)),
            seed,
            progress=lambda f, loss, j=j: job.report("prune", (j + f) / len(job.seeds), loss),
        )
        for each in pruned:
            saved = job.save(
                each.model,
                pruned_base(each.sparsity),
                seed,
                sparsity=each.sparsity,
                achieved_sparsity=each.health["achieved"],
                degenerate=each.health["degenerate"],
            )
            reports[saved.name.removeprefix("pruned@")] = {
                "sparsity": each.sparsity,
                "seed": seed,
                "scope": p.scope,
                "bn_recalibrated": p.bn_recalibration,
                **each.health,
            }
    write_json(job.folder.marker("prune"), {"reports": reports})


def combine_label_check(job: JobContext) -> tuple[dict, dict[int, np.ndarray]]:
    """Every checked image's label quality: training images from their fold's model, held-out ones
    from the dense models (every seed's, averaged), which never saw them. Writes
    state/label_check-results.json; answers it with each training image's out-of-sample prediction
    (packed), for the gallery."""
    lc = job.spec.label_check
    images: dict[str, dict] = {}

    def add(split: str, indices, quality: label_check.LabelQuality) -> None:
        issues = label_check.flag_label_issues(quality.quality, max_quality=lc.max_quality)
        for j, i in enumerate(indices):
            images[job.image_id(int(i))] = {
                "split": split,
                "quality": float(quality.quality[j]),
                "contradicted": float(quality.contradicted[j]),
                "oos_dice": float(quality.oos_dice[j]),
                "issue": bool(issues[j]),
            }

    predicted = {}
    for fold in range(lc.folds):
        saved = np.load(job.folder.fold_file(fold))
        quality = label_check.LabelQuality(saved["quality"], saved["contradicted"], saved["oos_dice"])
        add("train", saved["indices"], quality)
        predicted.update(zip(saved["indices"].tolist(), saved["predicted"]))
    dense = [job.load(job.name("dense", seed)) for seed in job.seeds]
    for split, indices in job.eval_splits.items():
        with_mask = [i for i in indices if job.targets.mask_known[i]]
        if with_mask:
            add(split, with_mask, label_check.check_with(dense, job.decoded(), with_mask).quality)
    order = sorted(images, key=lambda i: (images[i]["quality"], i))
    body = {
        "enabled": True,
        "folds": lc.folds,
        "max_quality": lc.max_quality,
        "confident": label_check.CONFIDENT,
        "checked": {split: sum(v["split"] == split for v in images.values()) for split in ("train", *job.eval_splits)},
        "issues": [{"image_id": i, **images[i]} for i in order if images[i]["issue"]],
        "images": images,
    }
    write_json(job.folder.state("label_check-results.json"), body)
    job.remember_label_check(body)
    return body, predicted


def _scores_of_seed(job: JobContext, k: int, seed: int, masks_out: np.ndarray | None) -> SeedScores:
    dense_name = job.name("dense", seed)
    dynamics = None
    if any(SCORERS[name].source == "dynamics" for name in job.spec.scorers):
        dynamics = dict(np.load(job.folder.state(f"dynamics-{dense_name}.npz")))
    return score_seed(
        job.inputs(),
        job.load(dense_name),
        {s: job.load(job.name(pruned_base(s), seed)) for s in job.spec.prune.sparsities},
        seed,
        dynamics=dynamics,
        masks_out=masks_out,
        progress=lambda f: job.report("score", (k + f) / len(job.seeds), None),
    )


def _write_enrichment(job: JobContext, ranking: Ranking, groups: dict[str, list[str]]) -> None:
    # enrichment among the images that may be HTL (weakly supervised: the positives, or the label would be "enriched")
    kept = np.flatnonzero(job.targets.train_rankable)
    clusters = job.clusters(job.train_idx)
    write_json(
        job.folder.state("enrichment.json"),
        subgroups.enrichment(
            {a: [labels[j] for j in kept] for a, labels in groups.items()},
            ranking.is_htl[kept],
            clusters=[clusters[j] for j in kept] if clusters else None,
            cluster_name=job.spec.split.group_column,
        ),
    )


def score_all(job: JobContext) -> list[ImageScore]:
    checked, oos_predicted = combine_label_check(job) if job.spec.label_check.enabled else ({"images": {}}, {})
    checked_images = checked["images"]
    masks = gallery_masks(job)
    per_seed = [_scores_of_seed(job, k, seed, masks if k == 0 else None) for k, seed in enumerate(job.seeds)]
    degenerate = set(job.degenerate_sparsities())
    groups = job.groups_of(job.train_idx)
    ranking = rank_images(job.inputs(), per_seed, degenerate=degenerate, groups=groups)
    _write_enrichment(job, ranking, groups)
    flagged = {i for i in (job.image_id(i) for i in job.train_idx) if checked_images.get(i, {}).get("issue")}
    scores = [
        dataclasses.replace(
            s,
            label_quality=checked_images[s.image_id]["quality"] if s.image_id in checked_images else None,
            label_issue=checked_images[s.image_id]["issue"] if s.image_id in checked_images else None,
        )
        for s in ranking.scores
    ]
    write_gallery(job, ranking.is_htl, masks, flagged=flagged, oos=oos_predicted)
    # the ranking, before attention picks from it (the select unit): what a job differing only in attention re-uses
    write_json(job.folder.state("ranked.json"), {"scores": encode(scores), "others": list(ranking.others)})
    write_json(
        job.folder.marker("score"),
        {
            "n_scored": len(scores),
            "n_htl": int(ranking.is_htl.sum()),
            "scorer_agreement": ranking.agreement,
            "ranked_by_sparsities": ranking.ranked_by,
            "degenerate_sparsities": sorted(degenerate),
        },
    )
    return scores
