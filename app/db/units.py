"""The lifecycle of a job's units (contract.units) in the database: planned at submission, claimed
by one worker at a time, heartbeated, completed (which releases the units that waited on it), given
back, swept. A unit is taken over only when its heartbeat is stale; the job row aggregates them
(status, stage, progress, the last worker).

Locks: every transaction that changes a job's units takes the job's row first (lock_job), then the
units: one order, so a cancel, a claim, a progress report and a completion never deadlock. A cancel
request is a state the system finishes: whichever of them holds the lock last with no unit left
running ends the job cancelled (end_if_cancelled)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.base import rows_changed, utcnow
from app.db.models import Job, JobUnit
from contract.jobspec import JobSpec
from contract.reuse import REUSED_KINDS
from contract.status import OPEN, UNIT_OPEN, JobStatus, UnitStatus, should_stop
from contract.units import plan_units

CANCELLED_ON_REQUEST = "cancelled on request"


def create_units(
    *, session: Session, job_id: uuid.UUID, spec: dict, reused_from: uuid.UUID | None = None
) -> list[JobUnit]:
    """The job's plan as rows. reused_from: the job whose dense, label-check and score units this
    one copied (contract.reuse): those start succeeded, and what they unblock queued."""
    now = utcnow()
    plan = plan_units(JobSpec.model_validate(spec))
    reused = {p.name for p in plan if reused_from is not None and p.kind in REUSED_KINDS}

    units = []
    for p in plan:
        done = p.name in reused
        status = UnitStatus.SUCCEEDED if done else (UnitStatus.QUEUED if set(p.deps) <= reused else UnitStatus.WAITING)
        units.append(
            JobUnit(
                job_id=job_id,
                name=p.name,
                kind=p.kind,
                seed=p.seed,
                position=p.position,
                deps=list(p.deps),
                weight=p.weight,
                status=status,
                progress=1.0 if done else 0.0,
                attempt=0,
                queued_at=now if status == UnitStatus.QUEUED else None,
                finished_at=now if done else None,
                reused_from=reused_from if done else None,
            )
        )
    session.add_all(units)
    session.flush()
    return units


def count_queued(*, session: Session, job_id: uuid.UUID) -> int:
    return session.scalars(
        select(func.count()).select_from(JobUnit).where(JobUnit.job_id == job_id, JobUnit.status == UnitStatus.QUEUED)
    ).one()


def ensure_units(*, session: Session, job_id: uuid.UUID) -> None:
    """A job queued before units existed gets its plan now."""
    if session.scalar(select(func.count()).select_from(JobUnit).where(JobUnit.job_id == job_id)) == 0:
        job = session.get(Job, job_id)
        if job is not None and job.status == JobStatus.QUEUED:
            create_units(session=session, job_id=job_id, spec=job.spec)


def _greatest(session: Session, a, b):
    return func.max(a, b) if session.get_bind().dialect.name == "sqlite" else func.greatest(a, b)


def _least(session: Session, a, b):
    return func.min(a, b) if session.get_bind().dialect.name == "sqlite" else func.least(a, b)


def lock_job(*, session: Session, job_id: uuid.UUID):
    """Locks the job's row (before any of its units' rows) and answers its (status, cancel_requested),
    or None for no such job. SQLite has no row locks: its writers take turns on the whole file."""
    return session.execute(
        select(Job.status, Job.cancel_requested).where(Job.id == job_id).with_for_update()
    ).one_or_none()


def end_if_cancelled(*, session: Session, job_id: uuid.UUID, alive_since: datetime | None = None) -> bool:
    """With the job's row locked: a job with a cancel request and no unit running (none heartbeating
    since alive_since, when given: a silent worker's unit no longer counts) ends cancelled now, its
    open units with it. Answers whether it ended."""
    running = (
        select(func.count()).select_from(JobUnit).where(JobUnit.job_id == job_id, JobUnit.status == UnitStatus.RUNNING)
    )
    if alive_since is not None:
        running = running.where(JobUnit.heartbeat_at >= alive_since)
    if session.scalar(running):
        return False
    now = utcnow()
    ended = (
        rows_changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status.in_(OPEN), Job.cancel_requested.is_(True))
            .values(status=JobStatus.CANCELLED, error=CANCELLED_ON_REQUEST, finished_at=now, updated_at=now),
        )
        == 1
    )
    if ended:
        end_units(session=session, job_id=job_id)
    return ended


def stop_unit(*, session: Session, job_id: uuid.UUID, name: str, worker: str) -> None:
    """A worker's unit stopped on a cancel request: the unit is cancelled, and the job with it once
    nothing of it runs (a job another unit failed stays failed)."""
    lock_job(session=session, job_id=job_id)
    session.execute(
        update(JobUnit).where(_held_by(job_id, name, worker)).values(status=UnitStatus.CANCELLED, finished_at=utcnow())
    )
    end_if_cancelled(session=session, job_id=job_id)


def end_stranded_cancels(*, session: Session, stale_before: datetime) -> list[uuid.UUID]:
    """The sweep's part: every job with a cancel request whose units are all idle or on silent
    workers ends cancelled (nothing else would end it). Answers those jobs."""
    ids = session.scalars(
        select(Job.id).where(Job.status.in_(OPEN), Job.cancel_requested.is_(True)).order_by(Job.id)
    ).all()
    ended = []
    for job_id in ids:
        row = lock_job(session=session, job_id=job_id)
        if row is not None and end_if_cancelled(session=session, job_id=job_id, alive_since=stale_before):
            ended.append(job_id)
    return ended


def _stale(stale_before: datetime):
    return and_(JobUnit.status == UnitStatus.RUNNING, JobUnit.heartbeat_at < stale_before)


# a worker that went silent while its unit held this share of the memory it could use was most likely
# killed by the out-of-memory killer: another attempt would meet the same limit
OOM_SUSPECT_SHARE = (4, 5)


def _held_by(job_id: uuid.UUID, name: str, worker: str) -> ColumnElement[bool]:
    """The unit is running on this worker: what every write a worker makes to its unit requires."""
    return and_(
        JobUnit.job_id == job_id, JobUnit.name == name, JobUnit.status == UnitStatus.RUNNING, JobUnit.worker == worker
    )


def _near_memory_limit() -> ColumnElement[bool]:
    num, den = OOM_SUSPECT_SHARE
    return and_(
        JobUnit.memory_limit_bytes.is_not(None),
        JobUnit.memory_bytes.is_not(None),
        JobUnit.memory_bytes * den >= JobUnit.memory_limit_bytes * num,
    )


def _retryable(stale_before: datetime, max_attempts: int):
    """A running unit another worker may take over: silent, with attempts left, and not silent near
    its memory limit."""
    return and_(_stale(stale_before), JobUnit.attempt < max_attempts, ~_near_memory_limit())


def claim_unit(
    *, session: Session, job_id: uuid.UUID, worker: str, stale_before: datetime, max_attempts: int
) -> JobUnit | None:
    """Atomically takes the first unit of the job that is queued, or running on a silent worker with
    attempts left; None when there is none (or the job is finished or being cancelled: a cancelled
    job with nothing running on a live worker ends here)."""
    job = lock_job(session=session, job_id=job_id)
    if job is None or job.status not in OPEN:
        return None
    if job.cancel_requested:
        end_if_cancelled(session=session, job_id=job_id, alive_since=stale_before)
        return None
    claimable = or_(
        and_(JobUnit.status == UnitStatus.QUEUED, JobUnit.attempt < max_attempts),
        _retryable(stale_before, max_attempts),
    )
    candidates = session.scalars(
        select(JobUnit.name).where(JobUnit.job_id == job_id, claimable).order_by(JobUnit.position)
    ).all()
    now = utcnow()
    for name in candidates:
        taken = (
            rows_changed(
                session,
                update(JobUnit)
                .where(JobUnit.job_id == job_id, JobUnit.name == name, claimable)
                .values(
                    status=UnitStatus.RUNNING,
                    worker=worker,
                    attempt=JobUnit.attempt + 1,
                    progress=0.0,
                    error=None,
                    heartbeat_at=now,
                    started_at=now,
                    finished_at=None,
                    memory_bytes=None,
                    memory_limit_bytes=None,
                ),
            )
            == 1
        )
        if taken:
            unit = session.get_one(JobUnit, (job_id, name), populate_existing=True)
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(OPEN))
                .values(
                    status=JobStatus.RUNNING,
                    worker=worker,
                    stage=unit.kind,
                    started_at=func.coalesce(Job.started_at, now),
                    attempt=_greatest(session, Job.attempt, unit.attempt),
                    heartbeat_at=now,
                    updated_at=now,
                    error=None,
                )
            )
            return unit
    return None


def unit_heartbeat(
    *,
    session: Session,
    job_id: uuid.UUID,
    name: str,
    worker: str,
    memory_bytes: int | None = None,
    memory_limit_bytes: int | None = None,
) -> tuple[bool, bool]:
    """Stamps the unit (and its job) alive, with the attempt's peak memory and its worker's limit
    where known; answers (still this worker's unit, the job wants it stopped)."""
    now = utcnow()
    job = lock_job(session=session, job_id=job_id)
    memory = (
        {"memory_bytes": memory_bytes, "memory_limit_bytes": memory_limit_bytes} if memory_bytes is not None else {}
    )
    mine = (
        rows_changed(
            session,
            update(JobUnit).where(_held_by(job_id, name, worker)).values(heartbeat_at=now, **memory),
        )
        == 1
    )
    stop = job is None or should_stop(job.status, job.cancel_requested)
    if mine and not stop:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=now))
    return mine, stop


def report_unit_progress(
    *, session: Session, job_id: uuid.UUID, name: str, worker: str, stage: str, progress: float
) -> tuple[bool, bool]:
    """The unit's progress and heartbeat; the job's progress becomes the weighted sum over its units
    and its stage the one just reported. Answers (still mine, stop)."""
    now = utcnow()
    job = lock_job(session=session, job_id=job_id)
    mine = (
        rows_changed(
            session,
            update(JobUnit).where(_held_by(job_id, name, worker)).values(progress=progress, heartbeat_at=now),
        )
        == 1
    )
    if mine:
        total = (
            select(func.coalesce(func.sum(JobUnit.weight * JobUnit.progress), 0.0))
            .where(JobUnit.job_id == job_id)
            .scalar_subquery()
        )
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(progress=_least(session, total, 1.0), stage=stage, heartbeat_at=now, updated_at=now)
        )
    return mine, job is None or should_stop(job.status, job.cancel_requested)


def complete_unit(*, session: Session, job_id: uuid.UUID, name: str, worker: str) -> list[str] | None:
    """Marks the unit succeeded and queues every unit whose deps have now all succeeded; answers
    their names, or None when the unit was no longer this worker's. The job row is locked first, so
    two units finishing at once cannot both miss (or both release) what they unblock. A job with a
    cancel request releases nothing: it ends cancelled once no other unit runs (answering [])."""
    job = lock_job(session=session, job_id=job_id)
    now = utcnow()
    done = (
        rows_changed(
            session,
            update(JobUnit)
            .where(_held_by(job_id, name, worker))
            .values(status=UnitStatus.SUCCEEDED, progress=1.0, finished_at=now, heartbeat_at=now),
        )
        == 1
    )
    if not done:
        return None
    if job is not None and job.cancel_requested:
        end_if_cancelled(session=session, job_id=job_id)
        return []
    return release_ready(session=session, job_id=job_id)


def release_ready(*, session: Session, job_id: uuid.UUID) -> list[str]:
    """With the job's row locked: queues the waiting units whose deps have all succeeded."""
    units = session.scalars(select(JobUnit).where(JobUnit.job_id == job_id)).all()
    finished = {u.name for u in units if u.status == UnitStatus.SUCCEEDED}
    ready = [u.name for u in units if u.status == UnitStatus.WAITING and set(u.deps) <= finished]
    if ready:
        session.execute(
            update(JobUnit)
            .where(JobUnit.job_id == job_id, JobUnit.name.in_(ready), JobUnit.status == UnitStatus.WAITING)
            .values(status=UnitStatus.QUEUED, queued_at=utcnow())
        )
    return ready


def release_unit(*, session: Session, job_id: uuid.UUID, name: str, worker: str) -> bool:
    """A stopping worker gives its unit back, queued for another; the attempt does not count (a job
    with a cancel request ends cancelled instead, once nothing of it runs)."""
    job = lock_job(session=session, job_id=job_id)
    released = (
        rows_changed(
            session,
            update(JobUnit)
            .where(_held_by(job_id, name, worker))
            .values(
                status=UnitStatus.QUEUED,
                worker=None,
                heartbeat_at=None,
                attempt=JobUnit.attempt - 1,
                queued_at=utcnow(),
                progress=0.0,
            ),
        )
        == 1
    )
    if released:
        running = session.scalar(
            select(func.count())
            .select_from(JobUnit)
            .where(JobUnit.job_id == job_id, JobUnit.status == UnitStatus.RUNNING)
        )
        if running == 0:  # nothing of the job runs any more: it waits for a worker again
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                .values(
                    status=JobStatus.QUEUED,
                    worker=None,
                    heartbeat_at=None,
                    attempt=Job.attempt - 1,
                    updated_at=utcnow(),
                )
            )
        if job is not None and job.cancel_requested:
            end_if_cancelled(session=session, job_id=job_id)
    return released


def end_units(*, session: Session, job_id: uuid.UUID, failed_unit: str | None = None, error: str | None = None) -> None:
    """The job ended (failed, cancelled): units not finished are cancelled; the failed one says why."""
    now = utcnow()
    if failed_unit is not None:
        session.execute(
            update(JobUnit)
            .where(JobUnit.job_id == job_id, JobUnit.name == failed_unit)
            .values(status=UnitStatus.FAILED, error=error, finished_at=now)
        )
    session.execute(
        update(JobUnit)
        .where(JobUnit.job_id == job_id, JobUnit.status.in_(UNIT_OPEN))
        .values(status=UnitStatus.CANCELLED, finished_at=now)
    )


def resend_candidates(
    *, session: Session, stale_before: datetime, queued_before: datetime, max_attempts: int
) -> list[uuid.UUID]:
    """A job per unit to send again: one queued and untouched since queued_before (its message may
    be lost; re-sending stamps it), one running on a silent worker with attempts left, or one waiting
    whose deps have all succeeded (a release lost to a crash). Each job's row is locked before its
    units are touched, jobs in id order."""
    live_jobs = select(Job.id).where(Job.status.in_(OPEN), Job.cancel_requested.is_(False))
    waiting = set(
        session.scalars(
            select(JobUnit.job_id).where(JobUnit.status == UnitStatus.WAITING, JobUnit.job_id.in_(live_jobs)).distinct()
        )
    )
    lost = session.scalars(
        select(JobUnit.job_id)
        .where(
            JobUnit.job_id.in_(live_jobs),
            or_(
                and_(
                    JobUnit.status == UnitStatus.QUEUED,
                    or_(JobUnit.queued_at.is_(None), JobUnit.queued_at < queued_before),
                ),
                _retryable(stale_before, max_attempts),
            ),
        )
        .order_by(JobUnit.job_id, JobUnit.position)
    ).all()
    ids: list[uuid.UUID] = []
    for job_id in sorted(waiting | set(lost)):
        job = lock_job(session=session, job_id=job_id)
        if job is None or should_stop(job.status, job.cancel_requested):
            continue  # ended or cancelled since the look above
        released = release_ready(session=session, job_id=job_id) if job_id in waiting else []
        here = [job_id] * (len(released) + sum(1 for j in lost if j == job_id))
        if here:
            session.execute(
                update(JobUnit)
                .where(JobUnit.job_id == job_id, JobUnit.status == UnitStatus.QUEUED)
                .values(queued_at=utcnow())
            )
        ids += here
    return ids  # a job once per unit to send, so that as many workers can take them


def exhausted(*, session: Session, stale_before: datetime, max_attempts: int) -> list[tuple[uuid.UUID, str, str]]:
    """(job, unit, why) of every silent unit no worker may take over: its worker went silent on each
    of its attempts, or went silent while the unit held most of the memory it could use."""
    near_limit = _near_memory_limit()
    rows = session.execute(
        select(
            JobUnit.job_id, JobUnit.name, JobUnit.attempt, JobUnit.memory_bytes, JobUnit.memory_limit_bytes, near_limit
        )
        .where(_stale(stale_before), or_(JobUnit.attempt >= max_attempts, near_limit))
        .order_by(JobUnit.job_id, JobUnit.position)
    ).all()
    out: list[tuple[uuid.UUID, str, str]] = []
    for job_id, name, attempt, used, limit, oom in rows:
        if oom and used is not None and limit is not None:  # oom holds only where both are known
            why = (
                f"{name}: worker lost while the unit held {used / 2**30:.1f} GiB of the {limit / 2**30:.1f} GiB its worker "
                f"could use (attempt {attempt}): most likely killed by the out-of-memory killer, so it is not retried (another "
                "attempt would meet the same limit). Lower image_size, train.batch_size or sample.max_images, or run it "
                "on a worker with more memory"
            )
        else:
            why = (
                f"{name}: worker lost: the worker running it went silent on each of {max_attempts} attempts "
                "(HTL_MAX_ATTEMPTS); giving up"
            )
        out.append((job_id, name, why))
    return out


def unit_durations(*, session: Session) -> list[tuple[str, float]]:
    """(kind, seconds) of every unit of every succeeded job."""
    rows = session.execute(
        select(JobUnit.kind, JobUnit.started_at, JobUnit.finished_at)
        .join(Job, Job.id == JobUnit.job_id)
        .where(
            Job.status == JobStatus.SUCCEEDED,
            JobUnit.status == UnitStatus.SUCCEEDED,
            JobUnit.started_at.is_not(None),
            JobUnit.finished_at.is_not(None),
        )
    )
    return [(kind, (end - start).total_seconds()) for kind, start, end in rows if start is not None and end is not None]
