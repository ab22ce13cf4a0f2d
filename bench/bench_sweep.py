"""A 4-variant sweep against 4 independent jobs of the same variants, on the same data and one
worker: `htl serve` on its embedded defaults (SQLite, local files, its local worker), driven with
the client. The independent jobs are submitted with reuse false (each trains its own dense models);
the sweep's variants share one set of dense, label-check and score units. Prints the wall clock of
each (first submission to last success), the ratio, and the worker's CPU seconds per variant.

    .venv/bin/python bench/bench_sweep.py [--images 200 --size 64 --epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from client import HtlClient  # noqa: E402
from ml.synthetic import make_dataset  # noqa: E402

VARY = {"attention.factor": [2, 3, 6, 10]}


def base_spec(args) -> dict:
    return {
        "image_size": args.size,
        "model": {"width": 16},
        "split": {"group_column": "lesion_id", "test_fraction": 0.2},
        "train": {"epochs": args.epochs, "batch_size": 16, "seeds": [0, 1]},
        "prune": {"sparsities": [0.5, 0.7, 0.9]},
        "label_check": {"enabled": True, "folds": 3},
        "attention": {"control": "random", "mode": args.mode},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the local worker runs as one)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids += [int(c) for c in children]
    return total


def wait_all(api: HtlClient, job_ids: list[str]) -> list[dict]:
    return [api.wait(j, interval=0.5) for j in job_ids]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--mode", default="fine_tune", choices=["fine_tune", "from_scratch"])
    parser.add_argument("--out", help="write the measurements as JSON here too")
    args = parser.parse_args()
    spec = base_spec(args)
    with tempfile.TemporaryDirectory(prefix="htl-bench-sweep-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", n=args.images, size=args.size, seed=0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HTL_")}
        env.update({"HTL_DATA_DIR": str(work / "svc"), "HTL_DEVICE": "cpu", "HTL_RATE_LIMIT": "0"})
        cli = [sys.executable, "-m", "app.cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
        key = subprocess.run(
            [*cli, "keys", "create", "--owner", "bench"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        port = free_port()
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)],
            env=env,
            stdout=(work / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            with HtlClient(f"http://127.0.0.1:{port}", key, timeout=300) as api:
                for _ in range(240):
                    try:
                        if api._request("GET", "/readyz").status_code == 200:
                            break
                    except Exception:  # noqa: BLE001 - not up yet
                        time.sleep(0.5)
                dataset = api.upload_dataset(data)["id"]
                values = VARY["attention.factor"]
                variants = [{**spec, "attention": {**spec["attention"], "factor": f}} for f in values]

                cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
                independent = wait_all(api, [api.submit_job(dataset, v, reuse=False)["id"] for v in variants])
                wall_independent, cpu_independent = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
                assert all(j["status"] == "succeeded" for j in independent), [j["error"] for j in independent]

                # the sweep must not re-use the independent jobs' dense units: another sample seed, same size
                sweep_spec = {**spec, "sample": {"max_images": args.images, "seed": 1}}
                cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
                sweep = api.create_sweep(dataset, VARY, sweep_spec, name="bench")
                done = api.wait_sweep(sweep["id"], interval=0.5)
                wall_sweep, cpu_sweep = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
                rows = done["comparison"]["rows"]
                assert len(rows) == 4 and all(r["status"] == "succeeded" for r in rows), rows
                assert rows[0]["reused_from"] is None and all(r["reused_from"] == rows[0]["job_id"] for r in rows[1:])
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {
        "images": args.images,
        "size": args.size,
        "epochs": args.epochs,
        "mode": args.mode,
        "variants": values,
        "independent_wall_s": round(wall_independent, 1),
        "sweep_wall_s": round(wall_sweep, 1),
        "wall_ratio": round(wall_sweep / wall_independent, 3),
        "independent_cpu_s_per_variant": round(cpu_independent / 4, 1),
        "sweep_cpu_s_per_variant": round(cpu_sweep / 4, 1),
    }
    print(json.dumps(result, indent=1))
    print(
        f"4 variants on 1 worker: independent jobs {wall_independent:.1f} s, sweep {wall_sweep:.1f} s "
        f"(ratio {wall_sweep / wall_independent:.2f}); CPU s per variant {cpu_independent / 4:.1f} -> {cpu_sweep / 4:.1f}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
