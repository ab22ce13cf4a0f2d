"""The owner's job a route is about: 404 when it is not theirs (or does not exist), 409 when its
results are asked for before it has succeeded."""

from __future__ import annotations

import uuid

from app.core.errors import Conflict, NotFound
from app.db import queries
from app.db.models import Job
from contract.status import JobStatus


def job_or_404(session, owner, job_id: uuid.UUID) -> Job:
    job = queries.get_job(session=session, owner_id=owner.id, job_id=job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def succeeded_job(session, owner, job_id: uuid.UUID) -> Job:
    job = job_or_404(session, owner, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"job {job_id} is {job.status}; its results are available once it has succeeded")
    return job
