"""The `htl` command. Heavy modules (torch, ml) are imported inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from app.annotation_queue import STRATEGIES
from contract.jobspec import JobSpec, SpecError
from contract.layout import LayoutError
from contract.status import JobStatus


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid spec:\n" + "\n".join(lines)


def load_spec(path: str | None) -> JobSpec:
    if path is None:
        return JobSpec()
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"htl: cannot read spec {path}: {e}") from e
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SystemExit("htl: " + _format_validation_error(e)) from e


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    _require_torch("`htl run`")
    from tqdm import tqdm

    from ml.pipeline import DegenerateError, Progress, Run, RunDirError

    # in a log file (not a terminal) a redraw every half second would flood it
    bar = tqdm(
        total=1000,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        bar_format="{desc:<10} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
    )

    def on_progress(p: Progress) -> None:
        bar.set_description_str(p.stage, refresh=False)
        if p.loss is not None:
            bar.set_postfix_str(f"loss {p.loss:.3f}", refresh=False)
        bar.update(int(p.overall * 1000) - bar.n)

    try:
        run = Run(args.data_dir, spec, args.out, device=args.device, progress=on_progress)
        for warning in [*run.index.warnings, *run.split_warnings]:
            tqdm.write(f"warning: {warning}")
        metrics = run.run()
    except (SpecError, LayoutError, RunDirError, DegenerateError) as e:
        bar.close()
        print(f"htl: {e}", file=sys.stderr)
        return 2
    bar.close()
    for warning in metrics["warnings"]:
        if warning not in run.split_warnings:
            print(f"warning: {warning}")
    print(
        f"split by {metrics['group_column'] or 'image (no group column)'}; validation images: {metrics['scored_images']}"
        + (f", test images: {metrics['test_images']}" if metrics["test_images"] else "")
    )
    for split in metrics["splits"]:
        print(f"{split}:")
        print(f"  {'model':<14}{'dice':>8}{'jaccard':>9}{'thr.jac':>9}{'box_iou':>9}")
        for name, m in metrics["models"].items():
            o = (m if split == "validation" else m["test"])["overall"]
            print(f"  {name:<14}{o['dice']:8.4f}{o['jaccard']:9.4f}{o['threshold_jaccard']:9.4f}{o['box_iou']:9.4f}")
        for key, label in (("attended_vs_dense", "attended - dense"), ("attended_vs_control", "attended - control")):
            if key not in metrics:
                continue
            comparison = metrics[key] if split == "validation" else metrics[key]["test"]
            ci = comparison["overall_ci95"]["dice"]
            interval = f" (95% interval over {len(metrics['seeds'])} seeds: {ci[0]:+.4f} to {ci[1]:+.4f})" if ci else ""
            print(f"  {label} dice: {comparison['overall']['dice']:+.4f}{interval}")
        guesses = metrics.get("blank_guesses", {}).get(split)
        if guesses and guesses["n"]:
            images = "positive images" if spec.setting == "weakly_supervised" else "images with a mask"
            print(
                f"  on its {guesses['n']} {images}, guesses that read no pixel: all-foreground dice "
                f"{guesses['all_foreground']:.4f}, centred disc of the mean lesion size {guesses['centred_disc']:.4f}"
            )
    check = metrics.get("label_check", {})
    if check.get("enabled"):
        flagged = ", ".join(f"{n} of {check['checked'][split]} {split}" for split, n in check["n_issues"].items())
        print(
            f"label check ({check['folds']}-fold out-of-sample): masks flagged as probably wrong: {flagged}"
            + ("; figures without them: subgroup label_check=ok" if any(check["n_issues"].values()) else "")
        )
    if metrics.get("verdict"):
        print(metrics["verdict"])
    if metrics["attended_vs_dense"]["single_seed"]:
        print(f"note: {metrics['attended_vs_dense']['note']}")
    print(f"outputs in {args.out}: scores.json metrics.json subgroups.json predictions/ checkpoints/ spec.json")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ml.synthetic import make_dataset

    root = make_dataset(args.out, n=args.n, size=args.size, hard_fraction=args.hard_fraction, seed=args.seed)
    print(f"wrote {args.n} images ({args.size}x{args.size}) with masks and metadata.csv to {root}")
    return 0


def _settings(args: argparse.Namespace):
    import os

    if getattr(args, "data_dir_opt", None):
        os.environ["HTL_DATA_DIR"] = str(Path(args.data_dir_opt).resolve())
    from app.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    settings = _settings(args)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at {_redacted(settings.resolved_database_url)} is at revision {args.revision}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from app.db.migrate import downgrade

    settings = _settings(args)
    downgrade(settings.resolved_database_url, args.revision)
    print(f"database at {_redacted(settings.resolved_database_url)} is at revision {args.revision}")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from app.db import queries
    from app.db.session import make_engine, make_sessionmaker

    settings = _settings(args)
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            owner, key = queries.create_api_key(session=session, owner_name=args.owner)
            session.commit()
    finally:
        engine.dispose()
    print(key)
    print(f"(a new API key for owner {owner.name!r}; it is shown only now, store it)", file=sys.stderr)
    return 0


def _with_session(args: argparse.Namespace, action):
    from app.db.session import make_engine, make_sessionmaker

    settings = _settings(args)
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            result = action(session)
            session.commit()
            return result
    finally:
        engine.dispose()


def cmd_keys_list(args: argparse.Namespace) -> int:
    from app.db import queries

    rows = _with_session(
        args,
        lambda s: [
            (k.prefix, name, k.created_at, k.revoked_at)
            for k, name in queries.list_api_keys(session=s, owner_name=args.owner)
        ],
    )
    print(f"{'prefix':<14}{'owner':<20}{'created':<27}revoked")
    for prefix, name, created, revoked in rows:
        print(
            f"{prefix:<14}{name:<20}{created.isoformat(timespec='seconds'):<27}{revoked.isoformat(timespec='seconds') if revoked else '-'}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from app.db import queries

    if len(args.prefix) < 12:
        print(
            "htl: give the key's 12-character prefix, as `htl keys list` shows it (or the whole key)", file=sys.stderr
        )
        return 2
    n = _with_session(args, lambda s: queries.revoke_api_keys(session=s, prefix=args.prefix[:12]))
    if n == 0:
        print(f"htl: no live key starts with {args.prefix[:12]!r}", file=sys.stderr)
        return 1
    print(f"revoked {n} key(s) starting with {args.prefix[:12]!r}")
    return 0


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


def _require_torch(what: str) -> None:
    """The API-only install has no torch: say so, rather than start a worker that dies at import."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit(
            f"htl: {what} needs torch, which this install lacks (the API-only install, "
            "requirements/api.txt): install requirements/runtime.txt for a worker, "
            "or run `htl serve --no-worker` with workers on another host"
        )


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    _require_torch("`htl worker`")
    settings = _settings(args)
    settings.ensure_dirs()
    os.execv(sys.executable, _worker_command())
    return 0  # not reached


def cmd_serve(args: argparse.Namespace) -> int:
    """The API plus a local Celery worker, started and stopped together."""
    import os
    import signal
    import subprocess
    import threading

    import uvicorn

    from app.db.migrate import upgrade
    from app.main import create_app

    if not args.no_worker:
        _require_torch("`htl serve` with its local worker")
    settings = _settings(args)
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    env = dict(os.environ, HTL_DATA_DIR=str(settings.data_dir.resolve()))
    stopping = threading.Event()
    current: dict[str, subprocess.Popen | None] = {"worker": None}

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen(_worker_command(), env=env, preexec_fn=_die_with_parent)

    def keep_worker_alive() -> None:
        """A worker that dies (out of memory, a crash) is started again, after a pause if it keeps dying."""
        pause = 1.0
        while not stopping.wait(2.0):
            worker = current["worker"]
            if worker is not None and worker.poll() is not None and not stopping.is_set():
                print(
                    f"htl serve: the worker (pid {worker.pid}) exited with {worker.returncode}; starting another",
                    file=sys.stderr,
                    flush=True,
                )
                stopping.wait(pause)
                pause = min(pause * 2, 60.0)
                if not stopping.is_set():
                    current["worker"] = start_worker()

    if not args.no_worker:
        current["worker"] = start_worker()
        threading.Thread(target=keep_worker_alive, name="keep-worker-alive", daemon=True).start()
    print(
        f"htl serve: API on http://{args.host}:{args.port}, data in {settings.data_dir.resolve()}, "
        f"database {_redacted(settings.resolved_database_url)}, broker {settings.resolved_broker_url}"
        + ("" if current["worker"] is None else f", worker pid {current['worker'].pid}"),
        file=sys.stderr,
        flush=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; turned into SystemExit, it reaches the
    # finally below, so the worker is stopped with the API instead of being left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    finally:
        stopping.set()
        worker = current["worker"]
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # it gives its running job back at the next progress report
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()  # its job is taken up again once its heartbeat is stale
                worker.wait()
    return 0


# --- client commands: talk to a running service over HTTP (client/, torch-free) ------------------
def _client(args: argparse.Namespace):
    from client import HtlClient

    try:
        return HtlClient(args.server, args.api_key)
    except ValueError as e:
        raise SystemExit(f"htl: {e}") from e


def _client_call(args: argparse.Namespace, action) -> int:
    from client import HtlError

    try:
        with _client(args) as api:
            return action(api) or 0
    except BrokenPipeError:  # the reader stopped early (| head): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HtlError as e:
        print(f"htl: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # connection refused, a file that cannot be read or written
        print(f"htl: {e}", file=sys.stderr)
        return 1


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    def upload(api):
        with tqdm(total=0, unit="B", unit_scale=True, desc="upload", disable=None) as bar:

            def on_progress(sent: int, total: int) -> None:
                bar.total = total
                bar.update(sent - bar.n)

            dataset = api.upload_dataset(Path(args.source), name=args.name, on_progress=on_progress)
        print(
            f"dataset {dataset['id']}: {dataset['n_images']} images, {dataset['n_masks']} masks, "
            f"attributes {', '.join(dataset['attributes']) or '-'}"
        )
        for warning in dataset["warnings"]:
            print(f"warning: {warning}")

    return _client_call(args, upload)


def cmd_datasets_list(args: argparse.Namespace) -> int:
    def listing(api):
        for d in api.datasets():
            print(f"{d['id']}  {d['name']:<24}{d['n_images']:>8} images{d['n_masks']:>8} masks  {d['created_at']}")

    return _client_call(args, listing)


def _progress_line(state: dict) -> str:
    return f"{state['status']:<10}{state['stage'] or '-':<10}{state['progress']:>6.0%}"


def _wait_with_bar(api, job_id: str) -> dict:
    from tqdm import tqdm

    with tqdm(
        total=100, desc="queued", bar_format="{desc:<18}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}", disable=None
    ) as bar:

        def on_update(state: dict) -> None:
            bar.set_description_str(f"{state['status']} {state['stage'] or ''}".strip(), refresh=False)
            bar.update(round(100 * state["progress"]) - bar.n)

        return api.wait(job_id, on_update=on_update)


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    spec = {}
    if args.spec:
        load_spec(args.spec)  # refuse a bad spec here, with the field named, before any request
        spec = json.loads(Path(args.spec).read_text())

    def submit(api):
        job = api.submit_job(args.dataset, spec)
        print(f"job {job['id']}: {job['status']}")
        for warning in job.get("warnings", []):
            print(f"warning: {warning}")
        if not args.wait:
            return 0
        done = _wait_with_bar(api, job["id"])
        print(f"job {done['id']}: {done['status']}" + (f" ({done['error']})" if done["error"] else ""))
        for warning in done.get("warnings", []):
            if warning not in job.get("warnings", []):
                print(f"warning: {warning}")
        return 0 if done["status"] == JobStatus.SUCCEEDED else 1

    return _client_call(args, submit)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    def listing(api):
        for j in api.jobs(status=args.status):
            print(f"{j['id']}  {_progress_line(j)}  {j['created_at']}" + (f"  {j['error']}" if j["error"] else ""))

    return _client_call(args, listing)


def cmd_jobs_show(args: argparse.Namespace) -> int:
    return _client_call(args, lambda api: _print_json(api.job(args.job)))


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    return _client_call(
        args, lambda api: print(f"job {args.job}: {api.cancel_job(args.job)['status']} (cancel requested)")
    )


def cmd_scores(args: argparse.Namespace) -> int:
    def scores(api):
        if args.format == "csv":
            for chunk in api.scores_csv(args.job, htl_only=args.htl_only):
                sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        else:
            _print_json(list(api.scores(args.job, htl_only=args.htl_only)))

    return _client_call(args, scores)


def cmd_annotation_queue(args: argparse.Namespace) -> int:
    def queue(api):
        if args.format == "csv":
            body = api.annotation_queue_csv(args.job, strategy=args.strategy, seed=args.seed)
            if args.out:
                Path(args.out).write_bytes(body)
                rows = body.count(b"\n") - 1  # less the header
                print(f"{args.out}: {rows} images, {args.strategy} order")
            else:
                sys.stdout.buffer.write(body)
                sys.stdout.flush()
        else:
            _print_json(list(api.annotation_queue(args.job, strategy=args.strategy, seed=args.seed)))

    return _client_call(args, queue)


def cmd_checkpoints_download(args: argparse.Namespace) -> int:
    def download(api):
        path = api.download_checkpoint(args.job, args.name, Path(args.out))
        print(f"{path} (sha256 checked)")

    return _client_call(args, download)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("htl-miner")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htl", description="htl-miner: find hard-to-learn images by pruning")
    parser.add_argument("--version", action="version", version=f"htl-miner {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_command(group, name: str, help: str, func):
        """A subcommand that talks to a running service: --server and --api-key on each."""
        p = group.add_parser(name, help=help)
        p.add_argument("--server", help="the service's URL (default: $HTL_SERVER or http://127.0.0.1:8000)")
        p.add_argument("--api-key", help="an API key (default: $HTL_API_KEY)")
        p.set_defaults(func=func)
        return p

    datasets = sub.add_parser("datasets", help="datasets on a running service").add_subparsers(
        dest="datasets_command", required=True
    )
    upload = client_command(
        datasets,
        "upload",
        "pack a dataset folder (or take an archive) and upload it, with a progress bar",
        cmd_datasets_upload,
    )
    upload.add_argument("source", help="a folder with images/, masks/ and metadata.csv, or a zip / tar.gz of one")
    upload.add_argument("--name", help="the dataset's name (default: the folder's)")
    client_command(datasets, "list", "your datasets, newest first", cmd_datasets_list)

    jobs = sub.add_parser("jobs", help="jobs on a running service").add_subparsers(dest="jobs_command", required=True)
    submit = client_command(jobs, "submit", "submit a job on a dataset", cmd_jobs_submit)
    submit.add_argument("dataset", help="the dataset's id")
    submit.add_argument("--spec", help="job spec JSON file (every field optional)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar (stage, ETA) until it ends"
    )
    jlist = client_command(jobs, "list", "your jobs, newest first", cmd_jobs_list)
    jlist.add_argument("--status", choices=list(JobStatus), help="only jobs in this status")
    client_command(
        jobs, "show", "a job's status, stage, progress, warnings and spec, as JSON", cmd_jobs_show
    ).add_argument("job", help="the job's id")
    client_command(jobs, "cancel", "cancel a queued or running job", cmd_jobs_cancel).add_argument(
        "job", help="the job's id"
    )

    scores = client_command(sub, "scores", "a finished job's per-image HTL scores, hardest first", cmd_scores)
    scores.add_argument("job", help="the job's id")
    scores.add_argument("--htl-only", action="store_true", help="only the HTL images")
    scores.add_argument("--format", choices=["json", "csv"], default="json", help="json (a list) or csv (streamed)")

    queue = client_command(
        sub,
        "annotation-queue",
        "a semi-supervised job's unlabeled images, most worth annotating first",
        cmd_annotation_queue,
    )
    queue.add_argument("job", help="the job's id")
    queue.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=STRATEGIES[0],
        help="random (a seeded shuffle: on HAM10000 it beat the others, see BENCHMARKS.md), htl (the HTL "
        "ranking), mc_dropout (needs that scorer in the job)",
    )
    queue.add_argument("--seed", type=int, default=0, help="the random strategy's seed")
    queue.add_argument("--format", choices=["csv", "json"], default="csv", help="csv (for an annotation tool) or json")
    queue.add_argument("--out", help="write the CSV to this file (default: standard output)")

    checkpoints = sub.add_parser("checkpoints", help="a finished job's models").add_subparsers(
        dest="checkpoints_command", required=True
    )
    download = client_command(
        checkpoints, "download", "download a checkpoint (safetensors), checking its sha256", cmd_checkpoints_download
    )
    download.add_argument("job", help="the job's id")
    download.add_argument(
        "name", help="dense, attended, control, pruned@0.5, ... (suffixed -s<seed> with several seeds)"
    )
    download.add_argument("--out", default=".", help="a folder or a file name (default: the current folder)")
    run = sub.add_parser("run", help="run the whole pipeline locally on a dataset folder")
    run.add_argument("data_dir", help="folder with images/, masks/ and optionally metadata.csv")
    run.add_argument("--spec", help="job spec JSON (every field optional)")
    run.add_argument("--out", required=True, help="output folder; a rerun into it resumes")
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.set_defaults(func=cmd_run)
    synth = sub.add_parser("synth", help="write a generated dataset with a planted hard minority (site=rare)")
    synth.add_argument("out", help="folder to write images/, masks/ and metadata.csv into")
    synth.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument(
        "--hard-fraction",
        type=float,
        default=0.15,
        help="share of images in the hard minority, site=rare (default 0.15)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=cmd_synth)

    def data_dir_option(p):
        p.add_argument(
            "--data-dir", dest="data_dir_opt", help="service data folder (default: $HTL_DATA_DIR or ./htl-data)"
        )

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
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="migrate the database to the newest schema")
    up.add_argument("revision", nargs="?", default="head", help="the revision to upgrade to (default head, the newest)")
    data_dir_option(up)
    up.set_defaults(func=cmd_db_upgrade)
    down = db.add_parser("downgrade", help="migrate the database down (default: to an empty schema)")
    down.add_argument(
        "revision", nargs="?", default="base", help="the revision to go down to (default base: an empty database)"
    )
    data_dir_option(down)
    down.set_defaults(func=cmd_db_downgrade)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="print a new API key for an owner (created if new)")
    create.add_argument("--owner", required=True, help="the owner's name; created if new")
    data_dir_option(create)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser(
        "list", help="list keys by prefix, owner, creation and revocation (never the keys themselves)"
    )
    listing.add_argument("--owner", help="only this owner's keys")
    data_dir_option(listing)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key: it answers 401 from then on")
    revoke.add_argument("prefix", help="the key's 12-character prefix as `htl keys list` shows it, or the whole key")
    data_dir_option(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
