"""run_job(job_id): claim the job, run the pipeline's stages, report progress on the job row, then
persist scores, metrics and checkpoints in one transaction. A second delivery of a claimed or
finished job does nothing; a rerun replaces an earlier attempt's rows, never adds to them."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta

from celery import current_task
from celery.exceptions import Reject
from celery.signals import worker_ready
from sqlalchemy.exc import DBAPIError

from app.core.queue import RUN_JOB, enqueue_job
from app.core.settings import Settings, get_settings
from app.core.storage import Store, files_under, make_store
from app.db import queries, units
from app.db.base import utcnow
from app.db.models import Dataset, Job
from app.db.session import make_engine, make_sessionmaker
from app.services import jobs, sweeps
from contract.results import JobResults
from worker import memory
from worker.celery_app import celery
from worker.lifecycle import SHUTTING_DOWN, STOP_SWEEPING

log = logging.getLogger("htl.worker")


class JobCancelled(Exception):
    pass


_RESOURCES: dict[tuple, tuple] = {}


def _resources(settings: Settings):
    """One engine and one store per configuration, for the process's life."""
    key = (
        settings.resolved_database_url,
        settings.storage_url,
        settings.s3_endpoint_url,
        str(settings.artifacts),
        str(settings.scratch),
    )
    if key not in _RESOURCES:
        _RESOURCES[key] = (make_sessionmaker(make_engine(settings.resolved_database_url)), make_store(settings))
    return _RESOURCES[key]


class RunSync:
    """Keeps a job's run folder in the store: with a store read in place nothing moves; otherwise
    push() uploads what changed in the local (scratch) copy since the last push, so another worker
    resumes after the last finished stage."""

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix = store, prefix
        self.folder = store.local_tree(prefix)
        self.seen = self._snapshot()

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        return {rel: (p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files_under(self.folder).items()}

    def push(self) -> int:
        if self.store.in_place:
            return 0
        now = self._snapshot()
        changed = [rel for rel, stamp in now.items() if self.seen.get(rel) != stamp and not rel.endswith(".partial")]
        self.store.put_tree(self.prefix, self.folder, only=changed)
        self.seen = now
        return len(changed)


def worker_name() -> str:
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or f"htl-{os.getpid()}@{socket.gethostname()}"


class JobLost(Exception):
    """The job is no longer this worker's: another took it over after this one went silent."""


class JobReleased(Exception):
    """This worker is shutting down: the job goes back to the queue for another worker to resume."""


class Heartbeat:
    """From a thread of its own, stamps the running unit every interval, so a stage that reports no
    progress for long (decoding, a slow epoch) still shows a live worker, and looks every second for
    a reason to stop (a cancel request, the job failing in another unit), so the run stops at its
    next step whatever the stage. A database outage is retried at the next round; `lost` is set
    once the unit is no longer this worker's."""

    POLL_S = 1.0

    def __init__(
        self,
        sessionmaker,
        job_id: uuid.UUID,
        unit: str,
        worker: str,
        interval_s: float,
        memory_limit: int | None = None,
    ):
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._args = (sessionmaker, job_id, unit, worker, interval_s)
        self.memory_limit = memory_limit
        self.peak_memory = memory.resident_bytes()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}-{unit}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sessionmaker, job_id, unit, worker, interval_s = self._args
        last_beat, reported = time.monotonic(), None
        while not self._stop.wait(min(self.POLL_S, interval_s)):
            now = memory.resident_bytes()
            if now is not None:
                self.peak_memory = max(self.peak_memory or 0, now)
            # the memory reading is what tells an OOM kill from a lost worker afterwards: it goes out at
            # once, and again whenever it has grown by 1/16 of the limit (an OOM kill gives no warning)
            grown = self.peak_memory is not None and (
                reported is None
                or (self.memory_limit is not None and self.peak_memory - reported >= self.memory_limit / 16)
            )
            try:
                with sessionmaker() as session:
                    if time.monotonic() - last_beat >= interval_s or grown:
                        mine, stop = units.unit_heartbeat(
                            session=session,
                            job_id=job_id,
                            name=unit,
                            worker=worker,
                            memory_bytes=self.peak_memory,
                            memory_limit_bytes=self.memory_limit,
                        )
                        session.commit()
                        last_beat, reported = time.monotonic(), self.peak_memory
                        if not mine:
                            self.lost.set()
                            return
                    else:
                        stop = queries.job_should_stop(session=session, job_id=job_id)
                    if stop:
                        self.cancelled.set()
            except DBAPIError as e:
                log.warning("job %s %s: heartbeat failed (%s); retrying", job_id, unit, type(e).__name__)


def torch_threads_for(settings: Settings, workers_on_host: int) -> int:
    """HTL_TORCH_THREADS, or this worker's share of the host's cores: two workers each spinning all
    cores' OpenMP threads ran a training step 16x slower than at one thread each (FACTS.md)."""
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, (os.cpu_count() or 1) // max(1, workers_on_host))


def _set_torch_threads(settings: Settings, sessionmaker) -> None:
    import torch

    try:
        with sessionmaker() as session:
            here = [
                w
                for w in queries.live_workers(session=session, since=settings.live_workers_since)
                if w.hostname == socket.gethostname()
            ]
    except DBAPIError:
        here = []
    threads = torch_threads_for(settings, len(here))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.info("torch threads: %d (%d live workers on %s)", threads, len(here), socket.gethostname())


def _with_retries(action, *, what: str, attempts: int = 8, first_wait_s: float = 0.5):
    """Runs a short database transaction, retrying across a database restart (about a minute in all)."""
    wait = first_wait_s
    for attempt in range(attempts):
        try:
            return action()
        except DBAPIError as e:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(e).__name__, wait)
            time.sleep(wait)
            wait = min(wait * 2, 15.0)


def execute_job(job_id: uuid.UUID, *, settings: Settings, worker: str) -> str:
    """Runs the job's units that are ready, one after another, until none is left for this worker;
    answers what happened last: skipped (nothing to claim), waiting (other units still run
    elsewhere), succeeded, failed, cancelled, released (this worker is stopping; the unit is queued
    again) or lost (another worker took the unit over). Each unit another worker can take up is sent
    to the queue as it becomes ready, so several workers share a job."""
    ran = False
    while True:
        result = execute_unit(job_id, settings=settings, worker=worker)
        if result == "skipped":
            return "waiting" if ran else "skipped"
        if result != "unit-succeeded":
            return result
        ran = True


class UnitLog(logging.LoggerAdapter):
    """A unit's log lines: each starts "job J: unit U", and carries job, unit and worker as record
    attributes (for a structured handler)."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"job {self.extra['job']}: unit {self.extra['unit']} {msg}", kwargs


@dataclass(frozen=True)
class ClaimedUnit:
    job_id: uuid.UUID
    name: str
    kind: str
    seed: int | None
    attempt: int
    spec: dict
    dataset_key: str
    submit_warnings: list[str]
    n_images: int


def _claim(sessionmaker, job_id: uuid.UUID, *, settings: Settings, worker: str) -> ClaimedUnit | None:
    """The next unit of the job this worker may run, claimed, with what running it needs; None when there is none."""
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_after_s)
    with sessionmaker() as session:
        units.ensure_units(session=session, job_id=job_id)
        claimed = units.claim_unit(
            session=session, job_id=job_id, worker=worker, stale_before=stale_before, max_attempts=settings.max_attempts
        )
        session.commit()
        if claimed is None:
            return None
        job = session.get(Job, job_id)
        dataset = session.get(Dataset, job.dataset_id)
        return ClaimedUnit(
            job_id,
            claimed.name,
            claimed.kind,
            claimed.seed,
            claimed.attempt,
            job.spec,
            dataset.storage_key,
            list(job.warnings),
            dataset.n_images,
        )


def _refusal(claimed: ClaimedUnit, settings: Settings) -> str | None:
    """Why this host cannot run the unit (its memory, which the API's host, where the job was
    admitted, may not share), checked before torch loads; None when it can."""
    from contract.jobspec import JobSpec, SpecError, check_admission

    try:
        check_admission(
            JobSpec.model_validate(claimed.spec),
            n_images=claimed.n_images,
            max_memory_bytes=settings.job_memory_limit,
            max_disk_bytes=settings.max_job_disk_bytes,
        )
    except SpecError as e:
        return e.message
    return None


def execute_unit(job_id: uuid.UUID, *, settings: Settings, worker: str) -> str:
    """Claims the job's next ready unit and runs it here; answers what became of it (see execute_job,
    and unit-succeeded: others of the job may follow)."""
    sessionmaker, store = _resources(settings)
    claimed = _claim(sessionmaker, job_id, settings=settings, worker=worker)
    if claimed is None:
        log.info(
            "job %s: no unit to claim (finished, cancelled, running elsewhere or out of attempts); delivery ignored",
            job_id,
        )
        return "skipped"
    unit = claimed.name
    ulog = UnitLog(log, {"job": job_id, "unit": unit, "worker": worker})
    ulog.info("claimed by %s (attempt %d)", worker, claimed.attempt)

    write = functools.partial(_write, sessionmaker, job_id)

    def fail(error: str) -> str:
        write(lambda s: jobs.fail(s, job_id=job_id, error=error, unit=unit), "recording the failure")
        return "failed"

    if (refused := _refusal(claimed, settings)) is not None:
        ulog.error("refused: this worker cannot run it: %s", refused)
        return fail(f"{unit}: this worker cannot run it: {refused}")
    try:
        return _run_claimed(claimed, settings=settings, worker=worker, sessionmaker=sessionmaker, store=store, log=ulog)
    except JobCancelled:
        write(lambda s: units.stop_unit(session=s, job_id=job_id, name=unit, worker=worker), "recording the cancel")
        return "cancelled"
    except JobLost:
        ulog.warning("taken over by another worker; stopping this run")
        return "lost"
    except JobReleased:
        if write(
            lambda s: units.release_unit(session=s, job_id=job_id, name=unit, worker=worker), f"giving {unit} back"
        ):
            ulog.warning(
                "given back: worker %s is stopping; it is queued again and starts over on another worker", worker
            )
            _send(job_id)
        return "released"
    except Exception as e:  # noqa: BLE001 - any failure is stored on the job, readable
        ulog.error("failed:\n%s", traceback.format_exc())
        return fail(f"{unit}: {type(e).__name__}: {e}")
    finally:
        for entry in store.trim_cache():  # the scratch cache stays within HTL_SCRATCH_MAX_BYTES
            log.info("scratch cache: evicted %s", entry)


class ProgressReporter:
    """The run's progress callback: stops the run (by raising) when the worker is stopping, the unit
    was taken over or the job should stop; writes the unit's progress at most every
    progress_interval_s (and at each new stage)."""

    def __init__(
        self, claimed: ClaimedUnit, heartbeat: Heartbeat, *, sessionmaker, worker: str, interval_s: float, log
    ):
        self.claimed, self.heartbeat, self.sessionmaker = claimed, heartbeat, sessionmaker
        self.worker, self.interval_s, self.log = worker, interval_s, log
        self.last_t, self.last_stage = 0.0, None

    def __call__(self, p) -> None:
        if SHUTTING_DOWN.is_set():
            raise JobReleased()
        if self.heartbeat.lost.is_set():
            raise JobLost()
        if self.heartbeat.cancelled.is_set():
            raise JobCancelled()
        now = time.monotonic()
        if p.stage != self.last_stage:
            self.log.info("stage %s (attempt %d, worker %s)", p.stage, self.claimed.attempt, self.worker)
        elif now - self.last_t < self.interval_s:
            return
        c = self.claimed
        try:
            with self.sessionmaker() as s:
                mine, stop = units.report_unit_progress(
                    session=s,
                    job_id=c.job_id,
                    name=c.name,
                    worker=self.worker,
                    stage=p.stage,
                    progress=round(p.unit_fraction, 4),
                )
                s.commit()
        except DBAPIError as e:  # the heartbeat thread keeps the unit alive; report again next time
            self.log.warning("progress report failed (%s)", type(e).__name__)
            return
        self.last_t, self.last_stage = now, p.stage
        if not mine:
            raise JobLost()
        if stop:
            raise JobCancelled()


def _run_claimed(claimed: ClaimedUnit, *, settings: Settings, worker: str, sessionmaker, store: Store, log) -> str:
    """Runs the unit on this worker's copy of the dataset and the job's run folder, pushes what it
    made, and completes it: the last one with the job's results, any other fanning out to the units
    it made ready."""
    from contract.jobspec import JobSpec
    from ml.pipeline import Run

    _set_torch_threads(settings, sessionmaker)
    job_id, unit = claimed.job_id, claimed.name
    memory_limit = memory.usable_bytes(settings.worker_memory_bytes)
    heartbeat = Heartbeat(sessionmaker, job_id, unit, worker, settings.heartbeat_interval_s, memory_limit=memory_limit)
    reporter = ProgressReporter(
        claimed, heartbeat, sessionmaker=sessionmaker, worker=worker, interval_s=settings.progress_interval_s, log=log
    )
    data_dir = store.local_tree(claimed.dataset_key)
    sync = RunSync(store, jobs.run_key(job_id))
    with heartbeat:
        run = Run(
            data_dir, JobSpec.model_validate(claimed.spec), sync.folder, device=settings.device, progress=reporter
        )
        results = run.run_unit(claimed.kind, claimed.seed)
    sync.push()  # what this unit made, for the units after it (on whatever worker)
    if heartbeat.cancelled.is_set():
        raise JobCancelled()
    if claimed.kind == "evaluate":
        if results is None:
            raise RuntimeError("the evaluate unit answered no results")
        return _finish_job(job_id, unit, results, claimed.submit_warnings, worker=worker, sessionmaker=sessionmaker)
    return _fan_out(claimed, worker=worker, sessionmaker=sessionmaker, settings=settings, log=log)


def _fan_out(claimed: ClaimedUnit, *, worker: str, sessionmaker, settings: Settings, log) -> str:
    """The unit succeeded here: it is completed, and every unit that became ready is sent to the
    queue but one, which this worker takes itself."""
    job_id, unit = claimed.job_id, claimed.name
    write = functools.partial(_write, sessionmaker, job_id)
    ready = write(
        lambda s: units.complete_unit(session=s, job_id=job_id, name=unit, worker=worker), f"completing {unit}"
    )
    if ready is None:
        log.warning("was taken over before it completed here; this run's result is dropped")
        return "lost"
    if not ready and write(lambda s: queries.cancel_requested(session=s, job_id=job_id), "reading the cancel request"):
        log.info("succeeded, but the job was cancelled: nothing more of it runs")
        return "cancelled"
    log.info("succeeded on %s; ready now: %s", worker, ", ".join(ready) or "nothing")
    for _ in ready[1:]:  # this worker takes one itself; others may take the rest
        _send(job_id)
    if claimed.kind == "score":  # the last shared unit (it needs all the others): variants waiting on them may start
        _advance_sweeps(settings)
    return "unit-succeeded"


def _advance_sweeps(settings: Settings) -> None:
    sessionmaker, store = _resources(settings)
    try:
        started = _with_retries(
            lambda: sweeps.advance_and_send(sessionmaker, settings=settings, store=store, celery=celery),
            what="submitting the sweeps' waiting variants",
        )
    except Exception as e:  # noqa: BLE001 - the periodic sweep advances them later
        log.warning("could not submit the sweeps' waiting variants now (%s: %s); the sweep will", type(e).__name__, e)
        return
    for job_id in started:
        log.info("job %s: submitted, a sweep's variant re-using the dense units of the job before it", job_id)


def _write(sessionmaker, job_id: uuid.UUID, action, what: str):
    """One short transaction of the job's (action(session)), retried across a database restart."""
    return _with_retries(lambda: _in_transaction(sessionmaker, action), what=f"job {job_id}: {what}")


def _in_transaction(sessionmaker, action):
    with sessionmaker() as session:
        result = action(session)
        session.commit()
        return result


def _finish_job(
    job_id: uuid.UUID, unit: str, results: JobResults, submit_warnings: list[str], *, worker: str, sessionmaker
) -> str:
    """The last unit: the job's results go to the database with the job's success, in one transaction."""
    warnings = submit_warnings + [w for w in results.warnings if w not in submit_warnings]

    def persist() -> str:
        with sessionmaker() as session:
            return jobs.succeed(session, job_id=job_id, unit=unit, worker=worker, results=results, warnings=warnings)

    outcome = _with_retries(persist, what=f"job {job_id}: writing results")
    if outcome == "lost":
        log.warning(
            "job %s: taken over by another worker before its results were written; this run's are dropped", job_id
        )
    elif outcome == "cancelled":
        log.info("job %s: cancelled before its results were written; they are dropped", job_id)
    return outcome


def _send(job_id: uuid.UUID) -> None:
    try:
        enqueue_job(celery, job_id)
    except Exception as e:  # noqa: BLE001 - the sweep of any live worker sends it again
        log.warning("job %s: could not send it to the queue now (%s); the next sweep will", job_id, e)


@celery.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    if SHUTTING_DOWN.is_set():  # a message taken while stopping goes back to the queue, unclaimed
        raise Reject("this worker is stopping", requeue=True)
    try:
        parsed = uuid.UUID(str(job_id))
    except ValueError:
        log.error("run_job got %r, not a job id; ignored", job_id)
        return "invalid"
    return execute_job(parsed, settings=get_settings(), worker=worker_name())


def sweep(settings: Settings | None = None) -> list[uuid.UUID]:
    """Send again what no worker will otherwise take: jobs with a queued unit whose message may be
    lost (a broker restart without persistence), a running unit whose worker went silent (while it
    has attempts left) or a waiting unit whose deps have all succeeded; fail jobs with a unit out of
    attempts. Any worker may sweep: a job sent twice has each unit claimed once."""
    settings = settings or get_settings()
    sessionmaker, _ = _resources(settings)
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.job_stale_after_s)
    with sessionmaker() as session:
        cancelled = units.end_stranded_cancels(session=session, stale_before=stale_before)
        lost = units.exhausted(session=session, stale_before=stale_before, max_attempts=settings.max_attempts)
        for job_id, unit, error in lost:
            units.lock_job(session=session, job_id=job_id)
            jobs.fail(session, job_id=job_id, error=error, unit=unit)
        ids = units.resend_candidates(
            session=session,
            stale_before=stale_before,
            queued_before=now - timedelta(seconds=max(settings.sweep_interval_s, settings.job_stale_after_s)),
            max_attempts=settings.max_attempts,
        )
        session.commit()
    for job_id in cancelled:
        log.info(
            "job %s: cancelled by the sweep (a cancel request, and nothing of it running on a live worker)", job_id
        )
    for job_id, _, error in lost:
        log.warning("job %s: failed, %s", job_id, error)
    for job_id in ids:
        log.warning("job %s: sent again by the sweep", job_id)
        enqueue_job(celery, job_id)
    _advance_sweeps(settings)
    return ids


def sweep_forever(stop: threading.Event, worker: str, settings: Settings | None = None) -> None:
    """The worker's background thread: at start, then every sweep_interval_s, it stamps this worker
    as alive (what /readyz counts) and sweeps, surviving outages."""
    settings = settings or get_settings()
    sessionmaker, _ = _resources(settings)
    while True:
        try:
            with sessionmaker() as session:
                queries.worker_alive(session=session, name=worker, hostname=socket.gethostname(), pid=os.getpid())
                session.commit()
            sweep(settings)
        except Exception as e:  # noqa: BLE001 - a database or broker outage: try again next round
            log.warning("sweep failed (%s: %s); trying again in %.0f s", type(e).__name__, e, settings.sweep_interval_s)
        if stop.wait(settings.sweep_interval_s):
            return


@worker_ready.connect
def _start_sweeping(sender=None, **_):
    name = sender.hostname if sender is not None else "htl-worker"
    threading.Thread(target=sweep_forever, args=(STOP_SWEEPING, name), name="htl-sweep", daemon=True).start()
