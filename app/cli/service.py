"""`htl serve` and `htl worker`: the API with a local worker, or a worker alone."""

from __future__ import annotations

import argparse
import sys

from app.cli.common import data_dir_option, redacted, require_torch, settings_from


def _worker_command() -> list[str]:
    # a name of its own per process: two workers on one host (one per GPU, or a worker left behind by a
    # killed `htl serve`) must never take each other for the same worker
    import os
    import uuid

    name = os.environ.get("HTL_WORKER_NAME") or f"htl-{uuid.uuid4().hex[:8]}@%h"  # must stay unique per process
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "-Q",
        "htl",
        "-n",
        name,
        "--loglevel=INFO",
    ]


def _die_with_parent() -> None:
    """In the worker child of `htl serve`: have the kernel send it SIGTERM when serve dies, however
    it dies (kill -9 included). SIGTERM makes the worker give its running job back and stop."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the worker outlives a killed serve, and its job's heartbeat keeps it its own
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    require_torch("`htl worker`")
    settings = settings_from(args)
    settings.ensure_dirs()
    os.execv(sys.executable, _worker_command())
    return 0  # not reached


class _LocalWorker:
    """`htl serve`'s worker process: started with the API, started again when it dies (after a pause
    that doubles while it keeps dying), stopped with the API."""

    def __init__(self, env: dict[str, str]) -> None:
        import threading

        self.env = env
        self.stopping = threading.Event()
        self.process = self._start()
        threading.Thread(target=self._keep_alive, name="keep-worker-alive", daemon=True).start()

    def _start(self):
        import subprocess

        return subprocess.Popen(_worker_command(), env=self.env, preexec_fn=_die_with_parent)

    def _keep_alive(self) -> None:
        """A worker that dies (out of memory, a crash) is started again, after a pause if it keeps dying."""
        pause = 1.0
        while not self.stopping.wait(2.0):
            worker = self.process
            if worker.poll() is not None and not self.stopping.is_set():
                print(
                    f"htl serve: the worker (pid {worker.pid}) exited with {worker.returncode}; starting another",
                    file=sys.stderr,
                    flush=True,
                )
                self.stopping.wait(pause)
                pause = min(pause * 2, 60.0)
                if not self.stopping.is_set():
                    self.process = self._start()

    def stop(self) -> None:
        import signal
        import subprocess

        self.stopping.set()
        worker = self.process
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # it gives its running job back at the next progress report
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()  # its job is taken up again once its heartbeat is stale
                worker.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """The API plus a local Celery worker, started and stopped together."""
    import os
    import signal

    import uvicorn

    from app.db.migrate import upgrade
    from app.main import create_app

    if not args.no_worker:
        require_torch("`htl serve` with its local worker")
    settings = settings_from(args)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    env = dict(os.environ, HTL_DATA_DIR=str(settings.data_dir.resolve()))
    worker = None if args.no_worker else _LocalWorker(env)
    print(
        f"htl serve: API on http://{args.host}:{args.port}, data in {settings.data_dir.resolve()}, "
        f"database {redacted(settings.resolved_database_url)}, broker {settings.resolved_broker_url}"
        + ("" if worker is None else f", worker pid {worker.process.pid}"),
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; turned into SystemExit, it reaches the
    # finally below, so the worker is stopped with the API instead of being left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None:
            worker.stop()
    return 0


# --- client commands: talk to a running service over HTTP (client/, torch-free) ------------------


def add_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="run the API and a local worker (embedded: SQLite, local files, local broker)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to listen on (default 8000); the web app is at /, the API under /v1",
    )
    serve.add_argument("--no-worker", action="store_true", help="API only (run workers with `htl worker`)")
    data_dir_option(serve)
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker alone (one job at a time)")
    data_dir_option(worker)
    worker.set_defaults(func=cmd_worker)
