"""The Celery worker's application: the shared configuration (app.queue) plus the task modules.
Start with `htl worker`, or `celery -A worker.celery_app worker --pool=solo -c 1 -Q htl`."""
from __future__ import annotations

from celery.signals import worker_ready

from app.queue import make_celery
from app.settings import get_settings

celery = make_celery(get_settings())
celery.conf.include = ["worker.tasks"]


@worker_ready.connect
def _requeue_orphans(sender=None, **_):
    from worker.tasks import requeue_orphaned_jobs

    requeue_orphaned_jobs(worker_name=sender.hostname if sender is not None else None)
