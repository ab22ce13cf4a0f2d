"""The client programs: datasets, jobs, scores, the annotation queue and checkpoints on a running service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.common import load_spec
from app.services.annotation_queue import STRATEGIES
from contract.status import JobStatus


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
            f"dataset {dataset['id']} ({dataset['layout']} layout): {dataset['n_images']} images, "
            f"{dataset['n_masks']} masks, attributes {', '.join(dataset['attributes']) or '-'}"
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
        job = api.submit_job(args.dataset, spec, reuse=not args.no_reuse)
        print(f"job {job['id']}: {job['status']}")
        if job.get("reused_from"):
            print(f"re-uses the dense, label-check and score units of job {job['reused_from']}")
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


def parse_vary(items: list[str]) -> dict[str, list]:
    """--vary FIELD=V1,V2 ... as {field: [values]}: each value read as JSON where it is JSON (2,
    0.5, true, null), else as a string (fine_tune)."""
    vary: dict[str, list] = {}
    for item in items:
        field, sep, values = item.partition("=")
        if not sep or not field or not values:
            raise SystemExit(f"htl: --vary {item!r}: write FIELD=VALUE1,VALUE2 (e.g. attention.factor=2,3,6)")

        def value(text: str):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text

        vary[field.strip()] = [value(v.strip()) for v in values.split(",")]
    return vary


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.4f}"


def _with_interval(value, interval) -> str:
    if value is None:
        return "-"
    if not interval or None in interval:
        return _signed(value)
    return f"{_signed(value)} [{_signed(interval[0])}, {_signed(interval[1])}]"


def comparison_table(sweep: dict) -> list[list[str]]:
    """The rows `htl sweep show` prints: one per variant, its differing fields and headline."""
    comparison = sweep.get("comparison") or {"fields": [], "rows": []}
    fields = comparison["fields"]
    rows = {r["job_id"]: r for r in comparison["rows"]}
    header = [
        "variant",
        "job",
        "status",
        *fields,
        "attended-dense",
        "focus",
        "attended-control",
        "focus",
        "worst decile (att/dense)",
        "re-used from",
    ]
    table = [header]
    for v in sweep["variants"]:
        row = rows.get(v["job_id"])
        status = row["status"] if row else v["state"]
        values = row["values"] if row else {f: v["overrides"].get(f) for f in fields}
        cells = [str(v["position"]), (v["job_id"] or "-")[:8], status, *(json.dumps(values.get(f)) for f in fields)]
        h = (row or {}).get("headline") or {}
        for key in ("attended_vs_dense", "attended_vs_control"):
            d = h.get(key) or {}
            cells += [
                _with_interval(d.get("overall"), d.get("overall_ci95")),
                _with_interval(d.get("focus"), d.get("focus_ci95")),
            ]
        worst = h.get("worst_decile") or {}
        cells.append(
            f"{worst['attended']:.3f}/{worst['dense']:.3f}"
            if worst.get("attended") is not None and worst.get("dense") is not None
            else "-"
        )
        reused = (row or {}).get("reused_from")
        cells.append(reused[:8] if reused else "-")
        table.append(cells)
    return table


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _print_sweep(sweep: dict) -> None:
    print(
        f"sweep {sweep['id']}"
        + (f" ({sweep['name']})" if sweep.get("name") else "")
        + f", dataset {sweep['dataset_id']}"
    )
    print_table(comparison_table(sweep))
    rows = {r["job_id"]: r for r in (sweep.get("comparison") or {}).get("rows", [])}
    for v in sweep["variants"]:
        verdict = ((rows.get(v["job_id"]) or {}).get("headline") or {}).get("verdict")
        if verdict:
            print(f"variant {v['position']}: {verdict}")
        if v.get("error"):
            print(f"variant {v['position']}: {v['error']}")
    chosen = sweep.get("selection")
    if chosen:
        print(f"selection ({chosen['split']}, {chosen['on']}): {chosen['sentence']}")


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.target == "show":
        if not args.sweep:
            raise SystemExit("htl: sweep show needs the sweep's id")
        return _client_call(args, lambda api: _print_sweep(api.sweep(args.sweep)))
    if args.sweep:
        raise SystemExit(
            f"htl: unexpected argument {args.sweep!r} (htl sweep DATASET --vary ..., or htl sweep show SWEEP)"
        )
    if not args.vary:
        raise SystemExit("htl: a sweep needs at least one --vary FIELD=VALUE1,VALUE2")
    vary = parse_vary(args.vary)
    spec = {}
    if args.spec:
        load_spec(args.spec)  # refuse a bad base spec here, with the field named
        spec = json.loads(Path(args.spec).read_text())

    def create(api):
        sweep = api.create_sweep(
            args.target, vary, spec, name=args.name, reuse=not args.no_reuse, select_on=args.select
        )
        n = len(sweep["variants"])
        started = sum(v["state"] == "submitted" for v in sweep["variants"])
        print(
            f"sweep {sweep['id']}: {n} variants, {started} submitted, {n - started} waiting for the dense units they share"
        )
        if not args.wait:
            return 0
        done = api.wait_sweep(sweep["id"])
        _print_sweep(done)
        statuses = {r["status"] for r in done["comparison"]["rows"]}
        return (
            0 if statuses == {JobStatus.SUCCEEDED} and all(v["state"] == "submitted" for v in done["variants"]) else 1
        )

    return _client_call(args, create)


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


def _client_command(group, name: str, help: str, func):
    """A subcommand that talks to a running service: --server and --api-key on each."""
    p = group.add_parser(name, help=help)
    p.add_argument("--server", help="the service's URL (default: $HTL_SERVER or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="an API key (default: $HTL_API_KEY)")
    p.set_defaults(func=func)
    return p


def _add_dataset_parsers(sub) -> None:
    datasets = sub.add_parser("datasets", help="datasets on a running service").add_subparsers(
        dest="datasets_command", required=True
    )
    upload = _client_command(
        datasets,
        "upload",
        "pack a dataset folder (or take an archive) and upload it, with a progress bar",
        cmd_datasets_upload,
    )
    upload.add_argument("source", help="a folder with images/, masks/ and metadata.csv, or a zip / tar.gz of one")
    upload.add_argument("--name", help="the dataset's name (default: the folder's)")
    _client_command(datasets, "list", "your datasets, newest first", cmd_datasets_list)


def _add_job_parsers(sub) -> None:
    jobs = sub.add_parser("jobs", help="jobs on a running service").add_subparsers(dest="jobs_command", required=True)
    submit = _client_command(jobs, "submit", "submit a job on a dataset", cmd_jobs_submit)
    submit.add_argument("dataset", help="the dataset's id")
    submit.add_argument("--spec", help="job spec JSON file (every field optional)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar (stage, ETA) until it ends"
    )
    submit.add_argument(
        "--no-reuse",
        action="store_true",
        help="compute the dense, label-check and score units even when an earlier job of yours on this dataset, "
        "differing only in attention, computed them",
    )
    jlist = _client_command(jobs, "list", "your jobs, newest first", cmd_jobs_list)
    jlist.add_argument("--status", choices=list(JobStatus), help="only jobs in this status")
    _client_command(
        jobs, "show", "a job's status, stage, progress, warnings and spec, as JSON", cmd_jobs_show
    ).add_argument("job", help="the job's id")
    _client_command(jobs, "cancel", "cancel a queued or running job", cmd_jobs_cancel).add_argument(
        "job", help="the job's id"
    )


def _add_sweep_parser(sub) -> None:
    sweep = _client_command(
        sub,
        "sweep",
        "htl sweep DATASET --spec base.json --vary attention.factor=2,3,6: one job per combination, sharing their "
        "dense units; htl sweep show SWEEP: the variants side by side",
        cmd_sweep,
    )
    sweep.add_argument("target", metavar="DATASET|show", help="the dataset's id, or show")
    sweep.add_argument("sweep", nargs="?", metavar="SWEEP", help="with show: the sweep's id")
    sweep.add_argument("--spec", help="the base job spec JSON file (every field optional)")
    sweep.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="a dotted spec field and its values (repeat it: one job per combination)",
    )
    sweep.add_argument("--name", help="the sweep's name")
    sweep.add_argument("--no-reuse", action="store_true", help="every variant trains its own dense models")
    sweep.add_argument("--wait", action="store_true", help="wait for every variant, then print the comparison")
    sweep.add_argument(
        "--select",
        choices=["focus", "overall"],
        help="choose a variant on validation, by attended - control Dice on the focus set or over all images; "
        "the chosen one is then reported on test",
    )


def _add_result_parsers(sub) -> None:
    """A finished job's scores, annotation queue and checkpoints."""
    scores = _client_command(sub, "scores", "a finished job's per-image HTL scores, hardest first", cmd_scores)
    scores.add_argument("job", help="the job's id")
    scores.add_argument("--htl-only", action="store_true", help="only the HTL images")
    scores.add_argument("--format", choices=["json", "csv"], default="json", help="json (a list) or csv (streamed)")

    queue = _client_command(
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
    download = _client_command(
        checkpoints, "download", "download a checkpoint (safetensors), checking its sha256", cmd_checkpoints_download
    )
    download.add_argument("job", help="the job's id")
    download.add_argument(
        "name", help="dense, attended, control, pruned@0.5, ... (suffixed -s<seed> with several seeds)"
    )
    download.add_argument("--out", default=".", help="a folder or a file name (default: the current folder)")


def add_parsers(sub) -> None:
    _add_dataset_parsers(sub)
    _add_job_parsers(sub)
    _add_sweep_parser(sub)
    _add_result_parsers(sub)
