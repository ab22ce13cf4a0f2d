"""The Celery worker's application: the shared configuration (app.core.queue) plus the task modules, and
the worker's life: a background sweep and liveness stamp from start-up, and a running job given back
when the worker is asked to stop. Start with `htl worker`."""

from __future__ import annotations

import threading

from celery.signals import worker_ready, worker_shutting_down

from app.core.queue import make_celery
from app.core.settings import get_settings

celery = make_celery(get_settings())
celery.conf.include = ["worker.tasks"]
_stop_sweeping = threading.Event()


@worker_ready.connect
def _start_sweeping(sender=None, **_):
    from worker.tasks import sweep_forever

    name = sender.hostname if sender is not None else "htl-worker"
    threading.Thread(target=sweep_forever, args=(_stop_sweeping, name), name="htl-sweep", daemon=True).start()


@worker_shutting_down.connect
def _give_back_running_job(**_):
    from worker.tasks import SHUTTING_DOWN

    SHUTTING_DOWN.set()
    _stop_sweeping.set()
