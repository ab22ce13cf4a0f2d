"""The Celery worker's application: the shared configuration (app.core.queue) plus the task modules.
The worker's life (a background sweep and liveness stamp from start-up, a running job given back
when the worker is asked to stop) is hooked up by those modules: worker.tasks and worker.lifecycle.
Start with `htl worker`."""

from __future__ import annotations

from app.core.queue import make_celery
from app.core.settings import get_settings

celery = make_celery(get_settings())
celery.conf.include = ["worker.tasks"]
