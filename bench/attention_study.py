"""Dense vs attended localization on a HAM10000 subset, for each attention strategy and seed.
The dense, prune and score stages of a seed are shared by its strategies (copied run state), so
strategies differ only in the attend stage.

    .venv/bin/python bench/attention_study.py --images 2000 --size 64 --epochs 6 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from contract.jobspec import JobSpec
from ml.pipeline import Run

REPO = Path(__file__).resolve().parents[1]


def spec_for(args, seed: int, strategy: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "seed": 0, "val_fraction": 0.2},
            "train": {"epochs": args.epochs, "seed": seed},
            "htl": {"top_fraction": args.top_fraction},
            "attention": {"strategy": strategy, "factor": args.factor},
        }
    )


def worst_groups(dense: dict, min_n: int, k: int) -> list[tuple[str, str, float, int]]:
    rows = [
        (attr, label, stats["dice"], stats["n"])
        for attr, groups in dense["subgroups"].items()
        for label, stats in groups.items()
        if stats["n"] >= min_n
    ]
    return sorted(rows, key=lambda r: r[2])[:k]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000"))
    parser.add_argument("--out", default="runs/attention-study")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=["oversample", "reweight", "both"])
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for seed in args.seeds:
        first = None
        for strategy in args.strategies:
            run_dir = out / f"seed{seed}-{strategy}"
            run = Run(args.data, spec_for(args, seed, strategy), run_dir)
            if first is not None:  # the strategies share the seed's dense, label-check and score units
                run.job.folder.reuse(first)
            metrics = run.run()
            first = first or run_dir
            dense, attended = metrics["models"]["dense"], metrics["models"]["attended"]
            results[f"seed{seed}-{strategy}"] = {
                "dense_dice": dense["overall"]["dice"],
                "attended_dice": attended["overall"]["dice"],
                "dense_thr_jaccard": dense["overall"]["threshold_jaccard"],
                "attended_thr_jaccard": attended["overall"]["threshold_jaccard"],
                "worst_groups": [
                    {"group": f"{a}={v}", "n": n, "dense_dice": d, "attended_dice": attended["subgroups"][a][v]["dice"]}
                    for a, v, d, n in worst_groups(dense, min_n=10, k=5)
                ],
            }
            print(json.dumps({f"seed{seed}-{strategy}": results[f"seed{seed}-{strategy}"]}), flush=True)
    print("\n| strategy | dense Dice (mean over seeds) | attended Dice | attended - dense, per seed |")
    print("|---|---|---|---|")
    for strategy in args.strategies:
        rows = [results[f"seed{s}-{strategy}"] for s in args.seeds]
        d = np.mean([r["dense_dice"] for r in rows])
        a = np.mean([r["attended_dice"] for r in rows])
        per = ", ".join(f"{r['attended_dice'] - r['dense_dice']:+.4f}" for r in rows)
        print(f"| {strategy} | {d:.4f} | {a:.4f} | {per} |")
    (out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
