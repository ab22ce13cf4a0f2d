"""The select unit: from the score unit's ranking, the images attention boosts and the control's
random draws (state/attention.json), and the job's scores with each image's `attended` flag
(scores.json). It is the first unit that reads the spec's attention, so a job differing from
another only in attention re-uses everything before it (contract.reuse)."""

from __future__ import annotations

import dataclasses

import numpy as np

from contract.results import ImageScore, decode, encode
from ml import remedies
from ml.job_context import JobContext
from ml.run_folder import read_json, write_json
from ml.setting import SEMI
from ml.stages import Ranking, attention_sets


def run_select_unit(job: JobContext) -> None:
    job.folder.require("score")
    if job.folder.finished("select"):
        job.report("select", 1.0, None)
        return
    job.stage = "select"
    job.report("select", 0.0, None)
    ranking = ranking_of(job)
    flagged = {s.image_id for s in ranking.scores if s.label_issue}
    sets = attention_sets(
        job.inputs(),
        ranking,
        job.seeds,
        excluded=_excluded_from_attention(job, ranking, flagged),
        **_strategy_inputs(job),
    )
    write_json(job.folder.state("attention.json"), encode(sets))
    attended = set(sets.attended)
    scores = [dataclasses.replace(s, attended=s.image_id in attended) for s in ranking.scores]
    write_json(job.out / "scores.json", encode(scores))
    write_json(job.folder.marker("select"), {"attended": len(sets.attended)})
    job.report("select", 1.0, None)


def _strategy_inputs(job: JobContext) -> dict:
    """What a strategy other than boosting the ranking's top reads: jtt the dense models' Dice on the
    training images, group_balance and group_dro the enrichment of the training subgroups."""
    strategy = job.spec.attention.strategy
    if strategy == "jtt":
        dense = [job.load(job.name("dense", seed)) for seed in job.seeds]
        return {"train_dice": remedies.training_dice(job.inputs(), dense)}
    if strategy in ("group_balance", "group_dro"):
        return {"enrichment": read_json(job.folder.state("enrichment.json"))}
    return {}


def ranking_of(job: JobContext) -> Ranking:
    """The score unit's ranking back from state/ranked.json: the scores (hardest first) and, in
    train_idx order, the HTL flags and the other scorers' values (NaN where undefined)."""
    saved = read_json(job.folder.state("ranked.json"))
    scores = decode(list[ImageScore], saved["scores"])
    by_id = {s.image_id: s for s in scores}
    ordered = [by_id[job.image_id(i)] for i in job.train_idx]
    is_htl = np.array([s.is_htl for s in ordered], dtype=bool)
    others = {
        name: np.array([np.nan if s.scores.get(name) is None else s.scores[name] for s in ordered])
        for name in saved["others"]
    }
    return Ranking(scores, is_htl, others, ranked_by=[], agreement=[])


def _excluded_from_attention(job: JobContext, ranking: Ranking, flagged: set[str]) -> set[str]:
    """The training images neither attention nor its control may boost (the control draws from the
    same pool): label issues (attention.exclude_label_issues), images that may not be HTL, and in
    the semi-supervised setting (attention.unlabeled leave_out) the images without a mask."""
    ids = [job.image_id(i) for i in job.train_idx]
    excluded = set(flagged) if job.spec.attention.exclude_label_issues else set()
    excluded |= {image_id for image_id, ok in zip(ids, job.targets.train_rankable) if not ok}
    if job.spec.setting == SEMI and job.spec.attention.unlabeled == "leave_out":
        # the teacher's pseudo-labels are least reliable on exactly these images: boosting them amplifies its errors
        excluded |= {s.image_id for s in ranking.scores if not s.labeled}
    return excluded
