"""The worker process's life, below the tasks and the app that runs them: whether it is shutting
down, and the signal that says so. worker.tasks reads SHUTTING_DOWN and starts its sweep on
worker_ready; worker.celery_app only builds the app."""

from __future__ import annotations

import threading

from celery.signals import worker_shutting_down

# set when the worker process is asked to stop (SIGTERM, the parent `htl serve` dying): the running
# job is given back at its next progress report instead of holding the shutdown for hours
SHUTTING_DOWN = threading.Event()
# set at the same moment: the background sweep thread ends
STOP_SWEEPING = threading.Event()


@worker_shutting_down.connect
def _give_back_running_job(**_):
    SHUTTING_DOWN.set()
    STOP_SWEEPING.set()
