"""Query functions. Keyword-only arguments; the caller owns the transaction (nothing here commits)."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ApiKey, Checkpoint, Dataset, Image, Job, JobReport, Metric, Owner, Score

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


def owner_for_key(*, session: Session, key: str) -> Owner | None:
    return session.scalar(
        select(Owner).join(ApiKey, ApiKey.owner_id == Owner.id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
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
    *, session: Session, dataset_id: uuid.UUID, owner_id: uuid.UUID, name: str, storage_key: str,
    size_bytes: int, columns: list[str], warnings: list[str], images: Iterable[dict[str, Any]],
) -> Dataset:
    rows = [dict(image, dataset_id=dataset_id) for image in images]
    dataset = Dataset(
        id=dataset_id, owner_id=owner_id, name=name, storage_key=storage_key, size_bytes=size_bytes,
        n_images=len(rows), n_masks=sum(r["has_mask"] for r in rows), attributes=columns, warnings=warnings,
    )
    session.add(dataset)
    session.flush()
    if rows:
        session.execute(Image.__table__.insert(), rows)
    return dataset


def get_dataset(*, session: Session, owner_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id))


def list_datasets(*, session: Session, owner_id: uuid.UUID, limit: int, after: dict | None) -> tuple[list[Dataset], dict | None]:
    stmt = _newest_first(select(Dataset).where(Dataset.owner_id == owner_id), Dataset, after, limit)
    return page_cursor(list(session.scalars(stmt)), limit)


# --- jobs ----------------------------------------------------------------------------------------
def create_job(*, session: Session, owner_id: uuid.UUID, dataset_id: uuid.UUID, spec: dict, warnings: list[str] | None = None) -> Job:
    job = Job(owner_id=owner_id, dataset_id=dataset_id, spec=spec, status="queued", progress=0.0, updated_at=utcnow(),
              warnings=list(warnings or []))
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))


def list_jobs(
    *, session: Session, owner_id: uuid.UUID, limit: int, after: dict | None,
    status: str | None = None, dataset_id: uuid.UUID | None = None,
) -> tuple[list[Job], dict | None]:
    stmt = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    return page_cursor(list(session.scalars(_newest_first(stmt, Job, after, limit))), limit)


def request_cancel(*, session: Session, job: Job) -> None:
    """A queued job is cancelled at once; a running one is flagged, and its worker stops at its next
    progress report."""
    now = utcnow()
    if job.status == "queued":
        session.execute(
            update(Job).where(Job.id == job.id, Job.status == "queued")
            .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now)
        )
    elif job.status == "running":
        session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True, updated_at=now))


def _orphaned(worker: str, stale_before: datetime):
    """A running job whose worker went silent, or that names this very worker (which, running one job
    at a time and asking for another, has restarted since)."""
    return and_(Job.status == "running", or_(Job.heartbeat_at < stale_before, Job.worker == worker))


def claim_job(*, session: Session, job_id: uuid.UUID, worker: str, stale_before: datetime) -> bool:
    """Atomically move a queued or orphaned job to running. False when the job is finished,
    cancelled, or running on a live worker: that delivery does nothing."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(Job.status == "queued", _orphaned(worker, stale_before)),
        )
        .values(
            status="running", attempt=Job.attempt + 1, worker=worker, error=None,
            started_at=func.coalesce(Job.started_at, now), heartbeat_at=now, updated_at=now,
        )
    )
    return result.rowcount == 1


def requeue_candidates(*, session: Session, worker: str, stale_before: datetime) -> list[uuid.UUID]:
    """Queued jobs (their message may have been lost) and orphaned running ones. Sending a job twice
    is harmless: only one delivery can claim it."""
    return list(session.scalars(
        select(Job.id).where(or_(Job.status == "queued", _orphaned(worker, stale_before)), Job.cancel_requested.is_(False))
        .order_by(Job.created_at)
    ))


def report_progress(*, session: Session, job_id: uuid.UUID, stage: str, progress: float) -> bool:
    """Writes stage, progress and a heartbeat; answers whether a cancel was requested."""
    now = utcnow()
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "running")
        .values(stage=stage, progress=progress, heartbeat_at=now, updated_at=now)
    )
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_job(
    *, session: Session, job_id: uuid.UUID, status: str, error: str | None = None, from_status: str = "running",
    warnings: list[str] | None = None,
) -> None:
    now = utcnow()
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": now, "updated_at": now}
    if warnings is not None:
        values["warnings"] = warnings
    if status == "succeeded":
        values["progress"] = 1.0
    session.execute(update(Job).where(Job.id == job_id, Job.status == from_status).values(**values))


# --- results ---------------------------------------------------------------------------------------
def replace_results(
    *, session: Session, job_id: uuid.UUID, scores: list[dict], metrics: list[dict], checkpoints: list[dict],
    reports: dict[str, dict] | None = None,
) -> None:
    """Results of a job, replacing any earlier attempt's, so a rerun never duplicates a row."""
    for model in (Score, Metric, Checkpoint, JobReport):
        session.execute(delete(model).where(model.job_id == job_id))
    for kind, body in (reports or {}).items():
        session.add(JobReport(job_id=job_id, kind=kind, body=body))
    if scores:
        session.execute(Score.__table__.insert(), [dict(s, job_id=job_id) for s in scores])
    if metrics:
        session.execute(Metric.__table__.insert(), [dict(m, job_id=job_id) for m in metrics])
    for c in checkpoints:
        session.add(Checkpoint(job_id=job_id, **c))
    session.flush()


def list_scores(*, session: Session, job_id: uuid.UUID, htl_only: bool, limit: int, after_rank: int | None) -> list[Score]:
    stmt = select(Score).where(Score.job_id == job_id)
    if htl_only:
        stmt = stmt.where(Score.is_htl.is_(True))
    if after_rank is not None:
        stmt = stmt.where(Score.rank > after_rank)
    return list(session.scalars(stmt.order_by(Score.rank).limit(limit + 1)))


def job_report(*, session: Session, job_id: uuid.UUID, kind: str) -> dict | None:
    return session.scalar(select(JobReport.body).where(JobReport.job_id == job_id, JobReport.kind == kind))


def job_metrics(*, session: Session, job_id: uuid.UUID, split: str = "validation") -> list[Metric]:
    return list(session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.split == split).order_by(Metric.id)))


def list_checkpoints(*, session: Session, job_id: uuid.UUID, limit: int, after_name: str | None) -> list[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if after_name is not None:
        stmt = stmt.where(Checkpoint.name > after_name)
    return list(session.scalars(stmt.order_by(Checkpoint.name).limit(limit + 1)))


def get_checkpoint(*, session: Session, job_id: uuid.UUID, name: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))
