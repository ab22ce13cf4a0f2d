"""run_job(job_id): claim the job, run the pipeline's stages, report progress on the job row, then
persist scores, metrics and checkpoints in one transaction. A second delivery of a claimed or
finished job does nothing; a rerun replaces an earlier attempt's rows, never adds to them."""
from __future__ import annotations

import json
import logging
import socket
import time
import traceback
import uuid
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from celery import current_task
from sqlalchemy import select

from app.db import queries
from app.db.base import utcnow
from app.db.models import Dataset, Job
from app.db.session import make_engine, make_sessionmaker
from app.queue import RUN_JOB, enqueue_job
from app.settings import Settings, get_settings
from app.storage import ArtifactStore, sha256_of
from worker.celery_app import celery

log = logging.getLogger("htl.worker")


class JobCancelled(Exception):
    pass


@lru_cache
def _connect(database_url: str, artifacts: Path):
    return make_sessionmaker(make_engine(database_url)), ArtifactStore(artifacts)


def _resources(settings: Settings):
    return _connect(settings.resolved_database_url, settings.artifacts)


def worker_name() -> str:
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or f"htl@{socket.gethostname()}"


def _metric_rows(metrics: dict) -> list[dict]:
    """One row per model, split, subgroup and metric. A model's entry is its validation report, with
    the test split's report under 'test'."""
    rows = []
    for model, entry in metrics["models"].items():
        for split, report in (("validation", entry), ("test", entry.get("test"))):
            if report is None:
                continue
            for name, value in report["overall"].items():
                rows.append({"model": model, "split": split, "attribute": None, "subgroup": None, "metric": name, "value": value, "n": report["n"]})
            classification = report.get("classification")  # weakly_supervised: the classifier's AUROC
            if classification and classification["auroc"] is not None:
                rows.append({"model": model, "split": split, "attribute": None, "subgroup": None, "metric": "auroc",
                             "value": classification["auroc"], "n": classification["n"]})
            for attribute, groups in report["subgroups"].items():
                for label, stats in groups.items():
                    for name, value in stats.items():
                        if name != "n":
                            rows.append({"model": model, "split": split, "attribute": attribute, "subgroup": label, "metric": name,
                                         "value": value, "n": stats["n"]})
    return rows


def _checkpoint_rows(out: Path, job_id: uuid.UUID) -> list[dict]:
    rows = []
    for path in sorted((out / "checkpoints").glob("*.safetensors")):
        name = path.name[: -len(".safetensors")]  # dense, pruned@0.5, attended; with several seeds: ...-s<seed>
        sparsity = float(name.removeprefix("pruned@").split("-s")[0]) if name.startswith("pruned@") else None
        rows.append({
            "name": name, "storage_key": f"jobs/{job_id}/run/checkpoints/{path.name}", "sha256": sha256_of(path),
            "size_bytes": path.stat().st_size, "sparsity": sparsity, "format": "safetensors",
        })
    return rows


def execute_job(job_id: uuid.UUID, *, settings: Settings, worker: str) -> str:
    """Runs one job to its end; answers what happened: skipped, succeeded, failed or cancelled."""
    sessionmaker, store = _resources(settings)
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_after_s)
    with sessionmaker() as session:
        claimed = queries.claim_job(session=session, job_id=job_id, worker=worker, stale_before=stale_before)
        session.commit()
        if not claimed:
            log.info("job %s: not claimable (finished, cancelled or running elsewhere); delivery ignored", job_id)
            return "skipped"
        job = session.get(Job, job_id)
        dataset = session.get(Dataset, job.dataset_id)
        spec_raw, data_dir, submit_warnings = job.spec, store.path(dataset.storage_key), list(job.warnings)
    out = store.path(f"jobs/{job_id}/run")

    from contract.jobspec import JobSpec
    from ml.pipeline import Progress, Run

    last = {"t": 0.0, "stage": None}

    def on_progress(p: Progress) -> None:
        now = time.monotonic()
        if p.stage == last["stage"] and now - last["t"] < settings.progress_interval_s:
            return
        last.update(t=now, stage=p.stage)
        with sessionmaker() as s:
            cancel = queries.report_progress(session=s, job_id=job_id, stage=p.stage, progress=round(p.overall, 4))
            s.commit()
        if cancel:
            raise JobCancelled()

    try:
        Run(data_dir, JobSpec.model_validate(spec_raw), out, device=settings.device, progress=on_progress).run()
        scores = json.loads((out / "scores.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        summary = {k: v for k, v in metrics.items() if k not in ("models",)}
        with sessionmaker() as session:
            queries.replace_results(
                session=session, job_id=job_id,
                scores=[
                    {**{k: item[k] for k in ("rank", "image_id", "htl_score", "is_htl", "labeled", "per_sparsity", "attributes")},
                     "other_scores": item["scores"]}
                    for item in scores
                ],
                metrics=_metric_rows(metrics), checkpoints=_checkpoint_rows(out, job_id),
                reports={"subgroups": json.loads((out / "subgroups.json").read_text()), "summary": summary},
            )
            warnings = submit_warnings + [w for w in metrics.get("warnings", []) if w not in submit_warnings]
            queries.finish_job(session=session, job_id=job_id, status="succeeded", warnings=warnings)
            session.commit()
        return "succeeded"
    except JobCancelled:
        with sessionmaker() as session:
            queries.finish_job(session=session, job_id=job_id, status="cancelled", error="cancelled on request")
            session.commit()
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - any failure is stored on the job, readable
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        with sessionmaker() as session:
            stage = session.scalar(select(Job.stage).where(Job.id == job_id))
            queries.finish_job(session=session, job_id=job_id, status="failed", error=f"{stage or 'start'}: {type(e).__name__}: {e}")
            session.commit()
        return "failed"


@celery.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    try:
        parsed = uuid.UUID(str(job_id))
    except ValueError:
        log.error("run_job got %r, not a job id; ignored", job_id)
        return "invalid"
    return execute_job(parsed, settings=get_settings(), worker=worker_name())


def requeue_orphaned_jobs(worker_name: str | None = None) -> list[uuid.UUID]:
    """At worker start: send again the queued jobs (a message can be lost with a crashed worker) and
    the jobs left running by a worker that died (silent too long, or this worker's own name from
    before a restart). A resumed run carries on after its last finished stage."""
    settings = get_settings()
    sessionmaker, _ = _resources(settings)
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_after_s)
    with sessionmaker() as session:
        ids = queries.requeue_candidates(session=session, worker=worker_name or "", stale_before=stale_before)
    for job_id in ids:
        log.warning("job %s: sent again at worker start", job_id)
        enqueue_job(celery, job_id)
    return ids
