"""Pipeline throughput per stage on a HAM10000 subset, next to the bare speed of the same model on
the same tensors (the limit: forward+backward+step for training, forward for inference), once per
precision (train.precision): each stage against the limit of the precision it ran in.

    .venv/bin/python bench/bench_pipeline.py --images 1000 --size 64 --epochs 3 --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from contract.jobspec import JobSpec
from ml.models import build_model
from ml.pipeline import Progress, Run
from ml.precision import autocast_for
from ml.run_folder import read_json
from ml.train import model_input, per_sample_loss, predict_logits, prepare_for_device

REPO = Path(__file__).resolve().parents[1]


def bare_speed(decoded, indices, spec: JobSpec, device: str, seconds: float, precision: str) -> dict:
    """Images/s of plain training steps and plain forward passes on cached tensors, no pipeline, in
    this precision (fp32 or bf16: bf16 autocasts the forward pass, the loss stays float32)."""
    torch.manual_seed(0)
    model = prepare_for_device(build_model(spec.model.arch, spec.model.width), device, precision=precision)
    bs = spec.train.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, masks = decoded.batch(indices[:bs])
    masks = masks.to(device)

    def train_step():
        with autocast_for(model, torch.device(device)):
            logits = model(model_input(images, torch.device(device)))
        loss = per_sample_loss(logits, masks).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, batch):
        fn()  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            n += batch
        if device == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    model.train()
    train = timed(train_step, bs)
    model.eval()
    infer_images, _ = decoded.batch(indices[:32])
    infer = timed(lambda: predict_logits(model, infer_images), 32)
    return {"train_images_per_s": train, "infer_images_per_s": infer}


def run_stages(args, precision: str) -> dict:
    """One pipeline run in this precision, each stage timed with its limit in the same precision."""
    spec = JobSpec.model_validate(
        {
            "image_size": args.size,
            "sample": {"max_images": args.images},
            "model": {"arch": args.arch},
            "split": {"group_column": "lesion_id"},
            "train": {"epochs": args.epochs, "precision": precision},
            "prune": {"sparsities": [0.3, 0.5, 0.7, 0.9]},
            # the label check is K more trainings, costed in bench/attention_cost.py; the stages timed
            # here are the ones the figures in BENCHMARKS.md were measured on
            "label_check": {"enabled": False},
        }
    )
    out = Path(tempfile.mkdtemp(prefix="htl-bench-"))
    try:
        t0 = time.perf_counter()
        score_started: list[float] = []  # when the score unit's second stage (score, after prune) began

        def on_progress(p: Progress) -> None:
            if p.stage == "score" and not score_started:
                score_started.append(time.perf_counter())

        run = Run(args.data, spec, out, device=args.device, progress=on_progress)
        job = run.job
        ran = job.precision
        decoded = job.decoded()
        decode_s = time.perf_counter() - t0

        def limit():
            return bare_speed(decoded, job.train_idx, spec, args.device, args.limit_seconds, ran)

        # this machine's speed drifts by tens of percent over a minute: each unit's limit is
        # measured right before and right after it, and averaged (the score unit's prune and score
        # stages share the measurement around the unit)
        seconds, limits, began = {}, {}, {}
        for kind in ("dense", "score", "select", "attend", "evaluate"):
            if kind == "select":  # picks the attended set: no model runs, nothing to time against a limit
                run.run_unit(kind)
                continue
            around = [limit()]
            start = began[kind] = time.perf_counter()
            for unit in run.plan:
                if unit.kind == kind:
                    run.run_unit(kind, unit.seed)
            seconds[kind] = time.perf_counter() - start  # the units' own wall-clock time
            around.append(limit())
            limits[kind] = {k: (around[0][k] + around[1][k]) / 2 for k in around[0]}
        seconds["prune"] = score_started[0] - began["score"]
        seconds["score"] -= seconds["prune"]
        n_train, n_val, n_sp = len(job.train_idx), len(job.val_idx), len(spec.prune.sparsities)
        dense_dice = float(read_json(out / "metrics.json")["models"]["dense"]["overall"]["dice"])
    finally:
        shutil.rmtree(out, ignore_errors=True)

    # the limit of a stage: the seconds its work takes the bare model on the same tensors
    def train(stage):
        return limits[stage]["train_images_per_s"]

    def infer(stage):
        return limits[stage]["infer_images_per_s"]

    bare_s = {
        # dense training also predicts the validation images after each epoch (its validation curve)
        "dense": (
            n_train * args.epochs / train("dense") + n_val * args.epochs / infer("dense"),
            "train steps + a validation pass per epoch",
        ),
        "attend": (n_train * args.epochs / train("attend"), "train steps"),
        "score": (n_train * (1 + n_sp) / infer("score"), f"1 dense + {n_sp} pruned forwards"),
        "evaluate": (n_val * (2 + n_sp) / infer("evaluate"), f"{2 + n_sp} forwards"),
    }
    images = {"dense": n_train * args.epochs, "attend": n_train * args.epochs, "score": n_train, "evaluate": n_val}
    rows = {k: (images[k] / seconds[k], images[k] / b, what) for k, (b, what) in bare_s.items()}
    return {
        "precision": ran,
        "decode_s": round(decode_s, 2),
        "decode_images_per_s": round(args.images / decode_s, 1),
        "prune_s": round(seconds["prune"], 2),
        "dense_validation_dice": round(dense_dice, 4),
        "bare_limit": {k: {m: round(v, 1) for m, v in lim.items()} for k, lim in limits.items()},
        "stages": {
            k: {
                "images_per_s": round(v, 1),
                "limit_images_per_s": round(lim, 1),
                "ratio": round(v / lim, 2),
                "limit_is": what,
            }
            for k, (v, lim, what) in rows.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--limit-seconds", type=float, default=4.0, help="each measurement of the bare model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="train.precision values, one pipeline run each")
    args = parser.parse_args()

    runs = [run_stages(args, p) for p in args.precisions.split(",")]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
        "images": args.images,
        "size": args.size,
        "epochs": args.epochs,
        "arch": args.arch,
        "runs": runs,
    }
    print(json.dumps(result, indent=1))
    print(
        "\n| precision | stage | pipeline img/s | bare img/s (limit, same precision) | ratio |\n|---|---|---|---|---|"
    )
    for r in runs:
        for k, s in r["stages"].items():
            print(
                f"| {r['precision']} | {k} | {s['images_per_s']} | {s['limit_images_per_s']} ({s['limit_is']}) | {s['ratio']} |"
            )
    if len(runs) > 1:
        print("\n| stage | " + " / ".join(f"{r['precision']} img/s" for r in runs) + " | speed-up |\n|---|---|---|")
        for k in runs[0]["stages"]:
            speeds = [r["stages"][k]["images_per_s"] for r in runs]
            print(f"| {k} | {' / '.join(map(str, speeds))} | {speeds[-1] / speeds[0]:.2f}x |")


if __name__ == "__main__":
    main()
