"""The states of a job and of its units, and the one rule for when a unit's work should stop. The API
schemas, the client, the CLI, the database queries and the worker all read them from here."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UnitStatus(StrEnum):
    WAITING = "waiting"  # for the units it needs
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# a job that may still change: a worker can take it up or is running it
OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
UNIT_OPEN = (UnitStatus.WAITING, UnitStatus.QUEUED, UnitStatus.RUNNING)


def should_stop(job_status: str, cancel_requested: bool) -> bool:
    """Whether a unit's work should stop: a cancel was asked for, or the job ended (another of its
    units failed). A job that is gone is the caller's to check: it has no status to read."""
    return cancel_requested or job_status not in OPEN
