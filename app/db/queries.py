"""Query functions. Keyword-only arguments; the caller owns the transaction (nothing here commits)."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Text, and_, bindparam, cast, delete, or_, select, text, update
from sqlalchemy.orm import Session

from app.db import units
from app.db.base import rows_changed, table, utcnow
from app.db.models import (
    ApiKey,
    Checkpoint,
    Dataset,
    Evaluation,
    Image,
    Job,
    JobReport,
    JobUnit,
    Metric,
    Owner,
    Score,
    Sweep,
    Worker,
)
from contract.reuse import REUSED_KINDS
from contract.status import FINISHED, OPEN, JobStatus, UnitStatus, should_stop

KEY_PREFIX = "htl_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# --- owners and keys --------------------------------------------------------------------------
def create_api_key(*, session: Session, owner_name: str) -> tuple[Owner, str]:
    """A new key for the owner (created when new). The plaintext key is returned once, stored hashed."""
    owner = session.scalar(select(Owner).where(Owner.name == owner_name))
    if owner is None:
        owner = Owner(name=owner_name)
        session.add(owner)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner_id=owner.id, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return owner, key


def list_api_keys(*, session: Session, owner_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (revoked ones too) with its owner's name, newest first."""
    stmt = select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id)
    if owner_name is not None:
        stmt = stmt.where(Owner.name == owner_name)
    return [(key, name) for key, name in session.execute(stmt.order_by(ApiKey.created_at.desc()))]


def revoke_api_keys(*, session: Session, prefix: str) -> int:
    """Revokes the live keys whose shown prefix starts with prefix; answers how many."""
    return rows_changed(
        session,
        update(ApiKey)
        .where(ApiKey.prefix.startswith(prefix, autoescape=True), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow()),
    )


def owner_for_key(*, session: Session, key: str) -> Owner | None:
    return session.scalar(
        select(Owner)
        .join(ApiKey, ApiKey.owner_id == Owner.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


# --- keyset pagination helpers ---------------------------------------------------------------
def _newest_first(stmt, model, after: dict | None, limit: int):
    if after is not None:
        at = datetime.fromisoformat(after["created_at"])
        after_id = uuid.UUID(after["id"])
        stmt = stmt.where(or_(model.created_at < at, and_(model.created_at == at, model.id < after_id)))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def page_cursor(rows: list, limit: int) -> tuple[list, dict | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, {"created_at": last.created_at.isoformat(), "id": str(last.id)}


# --- datasets ----------------------------------------------------------------------------------
def create_dataset(
    *,
    session: Session,
    dataset_id: uuid.UUID,
    owner_id: uuid.UUID,
    name: str,
    storage_key: str,
    size_bytes: int,
    columns: list[str],
    warnings: list[str],
    images: Iterable[dict[str, Any]],
    layout: str = "htl",
) -> Dataset:
    rows = [dict(image, dataset_id=dataset_id) for image in images]
    dataset = Dataset(
        id=dataset_id,
        owner_id=owner_id,
        name=name,
        storage_key=storage_key,
        size_bytes=size_bytes,
        n_images=len(rows),
        n_masks=sum(r["has_mask"] for r in rows),
        attributes=columns,
        warnings=warnings,
        layout=layout,
    )
    session.add(dataset)
    session.flush()
    if rows:
        session.execute(table(Image).insert(), rows)
    return dataset


def get_dataset(*, session: Session, owner_id: uuid.UUID, dataset_id: uuid.UUID, lock: bool = False) -> Dataset | None:
    """lock: hold the dataset's row until the transaction ends, so that a job submitted for it and
    its deletion take turns (the one after sees the other's outcome: 404, or a job using it)."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalar(stmt)


def list_datasets(
    *, session: Session, owner_id: uuid.UUID, limit: int, after: dict | None
) -> tuple[list[Dataset], dict | None]:
    stmt = _newest_first(select(Dataset).where(Dataset.owner_id == owner_id), Dataset, after, limit)
    return page_cursor(list(session.scalars(stmt)), limit)


# --- jobs ----------------------------------------------------------------------------------------
def create_job(
    *,
    session: Session,
    owner_id: uuid.UUID,
    dataset_id: uuid.UUID,
    spec: dict,
    warnings: list[str] | None = None,
    reuse_key: str | None = None,
    reused_from: uuid.UUID | None = None,
    sweep_id: uuid.UUID | None = None,
) -> Job:
    job = Job(
        owner_id=owner_id,
        dataset_id=dataset_id,
        spec=spec,
        status=JobStatus.QUEUED,
        progress=0.0,
        updated_at=utcnow(),
        warnings=list(warnings or []),
        reuse_key=reuse_key,
        reused_from=reused_from,
        sweep_id=sweep_id,
    )
    session.add(job)
    session.flush()
    created = units.create_units(session=session, job_id=job.id, spec=spec, reused_from=reused_from)
    job.progress = sum(u.weight * u.progress for u in created)
    return job


def _shared_units_done() -> ColumnElement[bool]:
    """The job has dense, label-check and score units (contract.reuse), and all have succeeded."""
    shared = select(JobUnit.job_id).where(JobUnit.kind.in_(REUSED_KINDS))
    return and_(Job.id.in_(shared), Job.id.not_in(shared.where(JobUnit.status != UnitStatus.SUCCEEDED)))


def reusable_units_done(*, session: Session, job_id: uuid.UUID) -> bool:
    return session.scalar(select(Job.id).where(Job.id == job_id, _shared_units_done())) is not None


def find_reusable(*, session: Session, owner_id: uuid.UUID, dataset_id: uuid.UUID, reuse_key: str) -> Job | None:
    """The newest job of this owner and dataset with this reuse key whose dense, label-check and
    score units have all succeeded (it may still be running its later units, or have failed in
    them), one that computed them before one that copied them, its row locked until the
    transaction ends: a delete of it waits until its files are copied."""
    stmt = (
        select(Job)
        .where(Job.owner_id == owner_id, Job.dataset_id == dataset_id, Job.reuse_key == reuse_key, _shared_units_done())
        .order_by(Job.reused_from.is_not(None), Job.created_at.desc(), Job.id)
        .limit(1)
        .with_for_update(of=Job)
    )
    return session.scalar(stmt)


def get_job(*, session: Session, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))


STATUS_COLUMNS = (
    Job.id,
    Job.dataset_id,
    Job.status,
    Job.stage,
    Job.progress,
    Job.error,
    Job.attempt,
    Job.worker,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.updated_at,
    Job.reused_from,
    Job.sweep_id,
)
STATUS_JSON = (Job.spec, Job.warnings)  # read as text and parsed once, not once per unit row
UNIT_COLUMNS = (
    JobUnit.name,
    JobUnit.status,
    JobUnit.worker,
    JobUnit.attempt,
    JobUnit.progress,
    JobUnit.started_at,
    JobUnit.finished_at,
    JobUnit.reused_from,
)

# built once: a poll binds parameters to it rather than building (and matching results to) a new
# statement each time, which cost more than the query itself. One row per unit (at least one).
OWNER_JOB_AND_UNITS = (
    select(
        ApiKey.owner_id,
        *STATUS_COLUMNS,
        *(cast(c, Text) for c in STATUS_JSON),
        *(c.label(f"unit_{c.key}") for c in UNIT_COLUMNS),
    )
    .select_from(ApiKey)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.owner_id == ApiKey.owner_id))
    .outerjoin(JobUnit, JobUnit.job_id == Job.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
    .order_by(JobUnit.position)
)


def status_from_rows(rows) -> tuple[uuid.UUID | None, dict | None]:
    """OWNER_JOB_AND_UNITS's rows (any driver's, by position) as (owner of the live key or None,
    that owner's job with its units or None)."""
    if not rows:
        return None, None
    first = rows[0]
    if first[1] is None:
        return first[0], None
    texts = 1 + len(STATUS_COLUMNS)  # where the JSON texts start, then the unit columns
    unit = texts + len(STATUS_JSON)
    job = dict(zip((c.key for c in STATUS_COLUMNS), first[1:texts]))
    job.update((c.key, json.loads(raw)) for c, raw in zip(STATUS_JSON, first[texts:unit]))
    unit_keys = [c.key for c in UNIT_COLUMNS]
    job["units"] = [dict(zip(unit_keys, row[unit:])) for row in rows if row[unit] is not None]
    return first[0], job


def list_jobs(
    *,
    session: Session,
    owner_id: uuid.UUID,
    limit: int,
    after: dict | None,
    status: str | None = None,
    dataset_id: uuid.UUID | None = None,
) -> tuple[list[Job], dict | None]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    return page_cursor(list(session.scalars(_newest_first(stmt, Job, after, limit))), limit)


def jobs_using_dataset(*, session: Session, dataset_id: uuid.UUID) -> list[uuid.UUID]:
    """Jobs of a dataset that have not finished: while any is queued or running, the dataset stays."""
    return list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(OPEN))))


def delete_dataset(*, session: Session, dataset: Dataset) -> list[uuid.UUID]:
    """Deletes the dataset's rows, its finished jobs' rows with them; answers those jobs' ids."""
    job_ids = list(session.scalars(select(Job.id).where(Job.dataset_id == dataset.id)))
    for job_id in job_ids:
        delete_job_rows(session=session, job_id=job_id)
    session.execute(delete(Image).where(Image.dataset_id == dataset.id))
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))
    return job_ids


RESULT_TABLES = (Score, Metric, Checkpoint, JobReport, Evaluation)


def delete_job_rows(*, session: Session, job_id: uuid.UUID) -> None:
    for model in RESULT_TABLES:
        session.execute(delete(model).where(model.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))


def request_cancel(*, session: Session, job_id: uuid.UUID) -> str | None:
    """Records the cancel request under the job's row lock, whatever the job's state; a job with no
    unit running ends cancelled at once, a running one when its unit next looks (the worker's
    heartbeat, the unit's completion) or, should its worker be dead, at the sweep. Answers the job's
    status before the request (a finished job is left as it is), or None for no such job."""
    job = units.lock_job(session=session, job_id=job_id)
    if job is None or job.status in FINISHED:
        return None if job is None else job.status
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, updated_at=utcnow()))
    units.end_if_cancelled(session=session, job_id=job_id)
    return job.status


def worker_alive(*, session: Session, name: str, hostname: str, pid: int) -> None:
    now = utcnow()
    if rows_changed(session, update(Worker).where(Worker.name == name).values(heartbeat_at=now)) == 0:
        session.add(Worker(name=name, hostname=hostname, pid=pid, started_at=now, heartbeat_at=now))
    # forget workers silent for a day
    session.execute(delete(Worker).where(Worker.heartbeat_at < now - timedelta(days=1)))


def live_workers(*, session: Session, since: datetime) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.name)))


def cancel_requested(*, session: Session, job_id: uuid.UUID) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def job_should_stop(*, session: Session, job_id: uuid.UUID) -> bool:
    """A cancel was requested, or the job ended (another of its units failed)."""
    row = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == job_id)).one_or_none()
    return row is None or should_stop(row.status, row.cancel_requested)


def finish_job(
    *,
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    error: str | None = None,
    from_status: JobStatus = JobStatus.RUNNING,
    warnings: list[str] | None = None,
    worker: str | None = None,
) -> bool:
    """Moves the job to a final status; with worker, only while that worker runs it. Answers whether it did."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": now, "updated_at": now}
    if warnings is not None:
        values["warnings"] = warnings
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    stmt = update(Job).where(Job.id == job_id, Job.status == from_status)
    if worker is not None:
        stmt = stmt.where(Job.worker == worker)
    return rows_changed(session, stmt.values(**values)) == 1


# --- results ---------------------------------------------------------------------------------------
def replace_results(
    *,
    session: Session,
    job_id: uuid.UUID,
    scores: list[dict],
    metrics: list[dict],
    checkpoints: list[dict],
    reports: dict[str, dict] | None = None,
    evaluations: list[dict] | None = None,
) -> None:
    """Results of a job, replacing any earlier attempt's, so a rerun never duplicates a row."""
    for model in RESULT_TABLES:
        session.execute(delete(model).where(model.job_id == job_id))
    if evaluations:
        session.execute(table(Evaluation).insert(), [dict(e, job_id=job_id) for e in evaluations])
    for kind, body in (reports or {}).items():
        session.add(JobReport(job_id=job_id, kind=kind, body=body))
    if scores:
        session.execute(table(Score).insert(), [dict(s, job_id=job_id) for s in scores])
    if metrics:
        session.execute(table(Metric).insert(), [dict(m, job_id=job_id) for m in metrics])
    for c in checkpoints:
        session.add(Checkpoint(job_id=job_id, **c))
    session.flush()
    if session.get_bind().dialect.name == "postgresql" and (scores or evaluations):
        # a bulk load leaves the planner blind to the new job's rows: it then estimated a few dozen rows
        # for a 100,000-score job and sorted all of them for each page (100 ms) instead of walking the
        # (job_id, rank) key (2 ms). Fresh statistics, as PostgreSQL advises after bulk loads.
        session.execute(text("ANALYZE scores, evaluations"))


def get_score(*, session: Session, job_id: uuid.UUID, image_id: str) -> Score | None:
    return session.scalar(select(Score).where(Score.job_id == job_id, Score.image_id == image_id))


def list_scores(
    *, session: Session, job_id: uuid.UUID, htl_only: bool, limit: int, after_rank: int | None
) -> list[Score]:
    stmt = select(Score).where(Score.job_id == job_id)
    if htl_only:
        stmt = stmt.where(Score.is_htl.is_(True))
    if after_rank is not None:
        stmt = stmt.where(Score.rank > after_rank)
    return list(session.scalars(stmt.order_by(Score.rank).limit(limit + 1)))


def score_json_keys(*, session: Session, job_id: uuid.UUID) -> dict[str, list[str]]:
    """Every key any of the job's scores holds in each JSON column (per_sparsity, other_scores,
    attributes, subgroups), sorted: the columns a CSV of them needs, whatever row comes first."""
    out = {}
    postgres = session.get_bind().dialect.name == "postgresql"
    for column in ("per_sparsity", "other_scores", "attributes", "subgroups"):
        if postgres:
            sql = f"SELECT DISTINCT jsonb_object_keys({column}) FROM scores WHERE job_id = :job_id"
        else:
            sql = f"SELECT DISTINCT j.key FROM scores, json_each(scores.{column}) AS j WHERE scores.job_id = :job_id"
        job_key = job_id if postgres else job_id.hex  # SQLite keeps a UUID as its 32 hex digits
        out[column] = sorted(session.scalars(text(sql), {"job_id": job_key}))
    return out


SCORE_FIELDS = (
    Score.rank,
    Score.image_id,
    Score.htl_score,
    Score.is_htl,
    Score.labeled,
    Score.label_quality,
    Score.label_issue,
    Score.attended,
)
SCORE_JSON = (Score.per_sparsity, Score.other_scores, Score.attributes, Score.subgroups)


def _scores_page(htl_only: bool):
    stmt = select(*SCORE_FIELDS, *(cast(c, Text) for c in SCORE_JSON)).where(
        Score.job_id == bindparam("job_id"), Score.rank > bindparam("after")
    )
    if htl_only:
        stmt = stmt.where(Score.is_htl.is_(True))
    return stmt.order_by(Score.rank).limit(bindparam("limit"))


# built once (see OWNER_JOB_AND_UNITS); the JSON columns come back as their text, never parsed
SCORES_PAGE = {False: _scores_page(False), True: _scores_page(True)}


def score_rows(
    *, session: Session, job_id: uuid.UUID, htl_only: bool, limit: int, after_rank: int | None
) -> Sequence[Row[Any]]:
    """Up to limit + 1 scores after after_rank, hardest first, as rows: SCORE_FIELDS, then SCORE_JSON as JSON text."""
    return session.execute(
        SCORES_PAGE[htl_only], {"job_id": job_id, "after": after_rank or 0, "limit": limit + 1}
    ).all()


def unlabeled_scores(*, session: Session, job_id: uuid.UUID) -> list[Score]:
    """The training images that had no target (a semi-supervised job's images without a mask), by rank."""
    stmt = select(Score).where(Score.job_id == job_id, Score.labeled.is_(False)).order_by(Score.rank)
    return list(session.scalars(stmt))


def label_issue_scores(*, session: Session, job_id: uuid.UUID) -> dict[str, Score]:
    """The training images the label check flagged, by id."""
    stmt = select(Score).where(Score.job_id == job_id, Score.label_issue.is_(True))
    return {s.image_id: s for s in session.scalars(stmt)}


def job_report(*, session: Session, job_id: uuid.UUID, kind: str) -> dict | None:
    return session.scalar(select(JobReport.body).where(JobReport.job_id == job_id, JobReport.kind == kind))


def list_evaluations(
    *, session: Session, job_id: uuid.UUID, model: str, split: str, limit: int, after_image: str | None
) -> list[Evaluation]:
    stmt = select(Evaluation).where(Evaluation.job_id == job_id, Evaluation.model == model, Evaluation.split == split)
    if after_image is not None:
        stmt = stmt.where(Evaluation.image_id > after_image)
    return list(session.scalars(stmt.order_by(Evaluation.image_id).limit(limit + 1)))


def evaluated_models(*, session: Session, job_id: uuid.UUID) -> list[tuple[str, str]]:
    return [
        (model, split)
        for model, split in session.execute(
            select(Evaluation.model, Evaluation.split).where(Evaluation.job_id == job_id).distinct()
        )
    ]


def job_metrics(*, session: Session, job_id: uuid.UUID, split: str = "validation") -> list[Metric]:
    return list(
        session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.split == split).order_by(Metric.id))
    )


def list_checkpoints(*, session: Session, job_id: uuid.UUID, limit: int, after_name: str | None) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if after_name is not None:
        stmt = stmt.where(Checkpoint.name > after_name)
    return list(session.scalars(stmt.order_by(Checkpoint.name).limit(limit + 1)))


def get_checkpoint(*, session: Session, job_id: uuid.UUID, name: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))


# --- sweeps --------------------------------------------------------------------------------------
def get_sweep(*, session: Session, owner_id: uuid.UUID, sweep_id: uuid.UUID) -> Sweep | None:
    return session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.owner_id == owner_id))


def list_sweeps(
    *, session: Session, owner_id: uuid.UUID, limit: int, after: dict | None
) -> tuple[list[Sweep], dict | None]:
    stmt = _newest_first(select(Sweep).where(Sweep.owner_id == owner_id), Sweep, after, limit)
    return page_cursor(list(session.scalars(stmt)), limit)


def jobs_by_id(*, session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
