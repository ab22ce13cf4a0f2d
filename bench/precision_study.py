"""Does bfloat16 hold Dice? Dense models trained in fp32 and in bf16 (train.precision), same data,
split and seeds, each evaluated on the held-out test split in the precision it trained in; the
difference bf16 - fp32 paired by seed, with a 95% t-interval over seeds, and the training time.

    .venv/bin/python bench/precision_study.py --images 1500 --size 64 --epochs 8 --seeds 0 1 2 --out runs/precision-study

Resumable: each precision's run folder keeps its trained models, and a rerun into the same --out
trains only what is missing (the seconds of a model trained by an earlier invocation are kept in
its record)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from contract.jobspec import JobSpec
from ml.pipeline import Run
from ml.prune import validation_prediction
from ml.seeds import t_interval

REPO = Path(__file__).resolve().parents[1]


def spec_for(args, precision: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": args.seeds, "precision": precision},
            "label_check": {"enabled": False},
        }
    )


def dense_runs(args, precision: str) -> dict:
    """Trains (or finds) each seed's dense model in this precision; per seed its validation and test Dice."""
    run = Run(args.data, spec_for(args, precision), args.out / precision, device="cpu")
    job = run.job
    timing_path = job.out / "seconds.json"
    seconds = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    per_seed = {}
    for seed in args.seeds:
        name = job.name("dense", seed)
        if not job.folder.trained_record("dense", name).is_file():
            start = time.perf_counter()
            run.run_unit("dense", seed)
            seconds[name] = time.perf_counter() - start
            timing_path.write_text(json.dumps(seconds))
        model = job.load(name)
        entry = {"seconds": seconds.get(name)}
        for split, indices in (("validation", job.val_idx), ("test", job.test_idx)):
            pred = validation_prediction(model, job.decoded(), indices, job.targets.localizable(indices))
            entry[split] = float(pred.dice)
        per_seed[seed] = entry
        print(f"{job.precision} seed {seed}: {entry}", flush=True)
    return {"precision": job.precision, "n_train": len(job.train_idx), "n_test": len(job.test_idx), "seeds": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/precision-study"))
    args = parser.parse_args()
    runs = {p: dense_runs(args, p) for p in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"]["seeds"], runs["bf16"]["seeds"]
    report = {"runs": runs, "bf16_minus_fp32": {}}
    for split in ("validation", "test"):
        diffs = [bf16[s][split] - fp32[s][split] for s in args.seeds]
        report["bf16_minus_fp32"][split] = {"per_seed": diffs, "mean": float(np.mean(diffs)), "ci95": t_interval(diffs)}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    n = runs["fp32"]
    print(
        f"\nHAM10000 {args.images} images ({n['n_train']} train, {n['n_test']} test, by lesion_id), {args.size} px, "
        f"{args.epochs} epochs, seeds {args.seeds}\n"
    )
    print(
        "| precision | test Dice per seed | mean | validation Dice mean | training s per model |\n|---|---|---|---|---|"
    )
    for p, r in runs.items():
        seeds = r["seeds"].values()
        test = [e["test"] for e in seeds]
        secs = [e["seconds"] for e in seeds if e["seconds"] is not None]
        print(
            f"| {p} | {', '.join(f'{d:.4f}' for d in test)} | {np.mean(test):.4f} | "
            f"{np.mean([e['validation'] for e in seeds]):.4f} | {np.mean(secs):.1f} |"
        )
    for split, d in report["bf16_minus_fp32"].items():
        ci = d["ci95"]
        print(
            f"bf16 - fp32, {split}: {d['mean']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] (per seed "
            + ", ".join(f"{x:+.4f}" for x in d["per_seed"])
            + ")"
        )


if __name__ == "__main__":
    main()
