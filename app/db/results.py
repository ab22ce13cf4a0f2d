"""The one mapping from a job's typed results (contract.results) to its rows: scores, per-image
evaluations, metrics, checkpoints and the two reports."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.db import queries
from contract.results import CheckpointFile, ImageScore, JobResults


def fields_of(value) -> dict:
    """A result's fields, shallow (rows are written at once and never changed)."""
    return dict(vars(value))


def score_row(score: ImageScore) -> dict:
    row = fields_of(score)
    row["other_scores"] = row.pop("scores")
    return row


def checkpoint_row(checkpoint: CheckpointFile, run_prefix: str) -> dict:
    """run_prefix: where the run folder lies in the store (the checkpoint's path is relative to it)."""
    return {
        "name": checkpoint.name,
        "storage_key": f"{run_prefix}/{checkpoint.path}",
        "sha256": checkpoint.sha256,
        "size_bytes": checkpoint.size_bytes,
        "seed": checkpoint.seed,
        "sparsity": checkpoint.sparsity,
        "format": checkpoint.format,
    }


def persist_results(*, session: Session, job_id: uuid.UUID, results: JobResults, run_prefix: str) -> None:
    """Writes the job's results, replacing any earlier attempt's (queries.replace_results)."""
    evaluation = results.evaluation
    queries.replace_results(
        session=session,
        job_id=job_id,
        scores=[score_row(s) for s in results.scores],
        evaluations=[fields_of(e) for e in evaluation.evaluations],
        metrics=[fields_of(m) for m in evaluation.metrics],
        checkpoints=[checkpoint_row(c, run_prefix) for c in results.checkpoints],
        reports={"subgroups": evaluation.subgroups, "summary": evaluation.summary},
    )
