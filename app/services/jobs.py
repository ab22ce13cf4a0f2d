"""A job's lifecycle: submit, cancel, fail, succeed with its results, delete; and where a dataset's
and a job's files live in the store. The routes and the worker both call these, so a rule (a failed
job ends its open units; a job's results land with its success, in one transaction) is written once."""

from __future__ import annotations

import shutil
import uuid

from sqlalchemy.orm import Session

from app.core.errors import Conflict, Unavailable
from app.core.queue import enqueue_job
from app.core.settings import Settings
from app.core.storage import Store
from app.db import queries, units
from app.db.models import Dataset, Job
from app.db.results import persist_results
from app.services.gallery import overlay_cache
from contract.jobspec import JobSpec, check_admission, check_spec_fits_dataset, resolve_group_column
from contract.results import JobResults
from contract.status import FINISHED, JobStatus
from contract.units import plan_units

QUEUE_RETRY_AFTER_S = 5


def dataset_key(dataset_id: uuid.UUID) -> str:
    return f"datasets/{dataset_id}"


def job_key(job_id: uuid.UUID) -> str:
    """Everything of the job in the store (its run folder and checkpoints)."""
    return f"jobs/{job_id}"


def run_key(job_id: uuid.UUID) -> str:
    """The job's run folder, which its units share (ml.run_folder)."""
    return f"{job_key(job_id)}/run"


def submit(
    session: Session, *, owner_id: uuid.UUID, dataset: Dataset, spec: JobSpec, settings: Settings, celery
) -> Job:
    """Admits the spec for this dataset and this service's limits, records the job (committed, so a
    worker finds it) and sends one message per unit that can start. A queue that refuses takes the
    job back."""
    # a SpecError here is the app factory's to answer (422, naming the field)
    check_spec_fits_dataset(spec, columns=dataset.attributes, n_images=dataset.n_images, n_masks=dataset.n_masks)
    check_admission(
        spec,
        n_images=dataset.n_images,
        max_memory_bytes=settings.job_memory_limit,
        max_disk_bytes=settings.max_job_disk_bytes,
    )
    spec, warnings = resolve_group_column(spec, dataset.attributes)
    job = queries.create_job(
        session=session, owner_id=owner_id, dataset_id=dataset.id, spec=spec.model_dump(mode="json"), warnings=warnings
    )
    session.commit()
    try:
        for _ in [p for p in plan_units(spec) if not p.deps]:  # a message per unit that can start: one per dense seed
            enqueue_job(celery, job.id)
    except Unavailable as e:
        # refused: the job is taken back (a message that did go out finds no job and is ignored)
        queries.delete_job_rows(session=session, job_id=job.id)
        session.commit()
        raise Unavailable(
            f"{e.detail}; the job was not submitted, try again shortly",
            headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)},
        ) from e
    session.refresh(job)
    return job


def cancel(session: Session, job: Job) -> None:
    """Asks the job to stop (its workers stop at their next progress report); 409 when it has ended."""
    before = queries.request_cancel(session=session, job_id=job.id)
    session.commit()
    if before in FINISHED:
        raise Conflict(f"job {job.id} is already {before}")
    session.refresh(job)


def fail(session: Session, *, job_id: uuid.UUID, error: str, unit: str | None = None) -> bool:
    """The job fails with error (unit: the one that failed), and its open units end with it.
    Answers whether it did (False: it had ended already)."""
    if not queries.finish_job(session=session, job_id=job_id, status=JobStatus.FAILED, error=error):
        return False
    units.end_units(session=session, job_id=job_id, failed_unit=unit, error=error)
    return True


def succeed(
    session: Session, *, job_id: uuid.UUID, unit: str, worker: str, results: JobResults, warnings: list[str]
) -> str:
    """The last unit completed on this worker: the job succeeds with its results, in this one
    transaction (committed here). Answers succeeded, cancelled (a cancel came first: nothing is
    written but the unit's end) or lost (another worker holds the unit: nothing is written)."""
    if units.complete_unit(session=session, job_id=job_id, name=unit, worker=worker) is None:
        session.rollback()
        return "lost"
    if queries.cancel_requested(session=session, job_id=job_id):  # complete_unit ended it cancelled
        session.commit()
        return "cancelled"
    if not queries.finish_job(session=session, job_id=job_id, status=JobStatus.SUCCEEDED, warnings=warnings):
        session.rollback()
        return "lost"
    persist_results(session=session, job_id=job_id, results=results, run_prefix=run_key(job_id))
    session.commit()
    return "succeeded"


def delete(session: Session, job: Job, *, store: Store, settings: Settings) -> None:
    """A finished job with its results and files; 409 while it is queued or running."""
    if job.status not in FINISHED:
        raise Conflict(f"job {job.id} is {job.status}; cancel it and wait for it to stop before deleting it")
    queries.delete_job_rows(session=session, job_id=job.id)
    session.commit()  # rows first: a crash between leaves files no row names, never rows without files
    delete_files(store, settings, [job.id])


def delete_files(store: Store, settings: Settings, job_ids: list[uuid.UUID]) -> None:
    for job_id in job_ids:
        store.delete(job_key(job_id))
        shutil.rmtree(overlay_cache(settings, job_id), ignore_errors=True)
