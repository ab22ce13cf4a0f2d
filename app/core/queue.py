"""The Celery application as the API and the workers both configure it. The API only sends tasks
by name; it never imports the worker's task code (nor torch)."""

from __future__ import annotations

import uuid

from celery import Celery

from app.core.errors import Unavailable
from app.core.settings import Settings

RUN_JOB = "htl.run_job"
QUEUE = "htl"


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    broker = settings.resolved_broker_url
    if broker.startswith("filesystem"):
        folder = settings.broker_folder
        transport = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.2,
            # without it kombu writes its control (broadcast) folder to ./control, wherever the process runs
            "control_folder": str(folder / "control"),
        }
    else:
        # a job may run for hours; a shorter visibility timeout would hand it to a second worker
        transport = {"visibility_timeout": settings.job_visibility_timeout_s}
    celery = Celery("htl", broker=broker)
    celery.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
    )
    return celery


def enqueue_job(celery: Celery, job_id: uuid.UUID) -> None:
    try:
        celery.send_task(RUN_JOB, args=[str(job_id)], queue=QUEUE, retry=False)
    except Exception as e:  # noqa: BLE001 - any broker failure means the job was not queued
        raise Unavailable(f"the job queue is not reachable: {e}") from e


def broker_reachable(celery: Celery, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True, "ok"
    except Exception as e:  # noqa: BLE001
        return False, str(e)
