"""A job's lifecycle: submit, cancel, fail, succeed with its results, delete; and where a dataset's
and a job's files live in the store. The routes and the worker both call these, so a rule (a failed
job ends its open units; a job's results land with its success, in one transaction) is written once."""

from __future__ import annotations

import logging
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
from contract.reuse import is_shared_file, reuse_key
from contract.status import FINISHED, JobStatus

QUEUE_RETRY_AFTER_S = 5
log = logging.getLogger("htl.jobs")


def dataset_key(dataset_id: uuid.UUID) -> str:
    return f"datasets/{dataset_id}"


def job_key(job_id: uuid.UUID) -> str:
    """Everything of the job in the store (its run folder and checkpoints)."""
    return f"jobs/{job_id}"


def run_key(job_id: uuid.UUID) -> str:
    """The job's run folder, which its units share (ml.run_folder)."""
    return f"{job_key(job_id)}/run"


def admit(spec: JobSpec, dataset: Dataset, settings: Settings) -> tuple[JobSpec, list[str]]:
    """The spec as it will run on this dataset (split.group_column resolved) and the warnings that
    come with it; a SpecError (the app factory's to answer: 422, naming the field) when the spec
    does not fit the dataset or this service's limits."""
    check_spec_fits_dataset(spec, columns=dataset.attributes, n_images=dataset.n_images, n_masks=dataset.n_masks)
    check_admission(
        spec,
        n_images=dataset.n_images,
        max_memory_bytes=settings.job_memory_limit,
        max_disk_bytes=settings.max_job_disk_bytes,
    )
    return resolve_group_column(spec, dataset.attributes)


def record(
    session: Session,
    *,
    owner_id: uuid.UUID,
    dataset: Dataset,
    spec: JobSpec,
    warnings: list[str],
    store: Store,
    reuse: bool = True,
    sweep_id: uuid.UUID | None = None,
) -> Job:
    """The job's rows, uncommitted. With reuse, the newest job of this owner whose dense,
    label-check and score units computed what this one's would (contract.reuse) lends them: their
    files are copied into this job's run folder (copies, not references: deleting either job
    leaves the other whole) and this job's units of those kinds start succeeded."""
    spec_json = spec.model_dump(mode="json")
    key = reuse_key(spec_json, str(dataset.id))
    source = None
    if reuse:
        source = queries.find_reusable(session=session, owner_id=owner_id, dataset_id=dataset.id, reuse_key=key)
        if source is not None and not store.exists(f"{run_key(source.id)}/state/score.json"):
            warnings = [
                *warnings,
                f"job {source.id} matched for re-use, but its files are gone from the store: computed again",
            ]
            source = None
    job = queries.create_job(
        session=session,
        owner_id=owner_id,
        dataset_id=dataset.id,
        spec=spec_json,
        warnings=warnings,
        reuse_key=key,
        reused_from=source.id if source is not None else None,
        sweep_id=sweep_id,
    )
    if source is not None:
        try:
            store.copy_tree(run_key(source.id), run_key(job.id), only=is_shared_file)
        except BaseException:
            store.delete(job_key(job.id))  # nothing half-written: the rows roll back with the caller's transaction
            raise
    return job


def commit_or_forget(session: Session, jobs: list[Job], store: Store) -> None:
    """Commits the recorded jobs; should the commit fail, the files copied for them go too."""
    try:
        session.commit()
    except BaseException:
        for job in jobs:
            store.delete(job_key(job.id))
        raise


def send(session: Session, jobs: list[Job], *, celery, store: Store, take_back: bool = True) -> None:
    """One message per unit that can start, for each of these committed jobs. A queue that refuses
    takes them all back (rows and files); with take_back False they stay queued instead, for the
    workers' sweep to send again."""
    try:
        for job in jobs:
            for _ in range(units.count_queued(session=session, job_id=job.id)):
                enqueue_job(celery, job.id)
    except Unavailable as e:
        if not take_back:
            log.warning("the queue refused a message (%s); the workers' sweep sends the job again", e.detail)
            return
        # refused: the jobs are taken back (a message that did go out finds no job and is ignored)
        for job in jobs:
            queries.delete_job_rows(session=session, job_id=job.id)
        session.commit()
        for job in jobs:
            store.delete(job_key(job.id))
        raise Unavailable(
            f"{e.detail}; the job was not submitted, try again shortly",
            headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)},
        ) from e


def submit(
    session: Session,
    *,
    owner_id: uuid.UUID,
    dataset: Dataset,
    spec: JobSpec,
    settings: Settings,
    celery,
    store: Store,
    reuse: bool = True,
) -> Job:
    """Admits the spec for this dataset and this service's limits, records the job (re-using what it
    can, committed, so a worker finds it) and sends one message per unit that can start."""
    spec, warnings = admit(spec, dataset, settings)
    job = record(session, owner_id=owner_id, dataset=dataset, spec=spec, warnings=warnings, store=store, reuse=reuse)
    commit_or_forget(session, [job], store)
    send(session, [job], celery=celery, store=store)
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
