"""Which unlabeled images should be annotated next? The semi-supervised setting's annotation queue
measured: keep the masks of a seeded share of the training images, rank the rest by a strategy
(htl: the HTL ranking; mc_dropout: test-time dropout disagreement; random), reveal the masks of the
next k images from the full data, retrain, and compare the dense models' test Dice over seeds.

    .venv/bin/python bench/active_labelling.py --images 1500 --size 64 --epochs 6 --keep 0.15 --reveal 0.1 --seeds 0 1 2

HAM10000 by default, split by lesion_id into train / validation / test. The queue is ranked by one
semi-supervised run on the kept masks (seed 0); every strategy's retraining sees the same kept masks
plus its own k revealed ones, with the same seeds. Nothing is chosen here: every strategy is reported
on test (Dice at the training size), with "none" (no new masks) as the floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
from scipy import stats

from app.services.annotation_queue import queue_order
from contract.jobspec import JobSpec
from ml.job_context import JobContext
from ml.pipeline import Run
from ml.prune import validation_prediction
from ml.unit_training import train_dense

REPO = Path(__file__).resolve().parents[1]


def spec_for(args, *, keep: float | None, seeds: list[int], scorers: list[str]) -> JobSpec:
    return JobSpec.model_validate(
        {
            "setting": "semi_supervised",
            "semi": {"labeled_fraction": keep},
            "image_size": args.size,
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": seeds},
            "scorers": scorers,
            "label_check": {"enabled": False},
        }
    )


def dataset_with_masks(base: JobContext, with_mask: set[int], folder: Path) -> Path:
    """The base run's images (linked) and metadata, with the masks of `with_mask` (dataset indices) only."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for i, record in enumerate(base.index.records):
        os.symlink(record.image_path.resolve(), folder / "images" / record.image_path.name)
        if i in with_mask and record.mask_path is not None:
            os.symlink(record.mask_path.resolve(), folder / "masks" / record.mask_path.name)
        rows.append({"image_id": record.image_id, **record.attributes})
    with (folder / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_dice(args, data: Path, out: Path, base_test_ids: list[str]) -> list[float]:
    """Train the dense models (one per seed) on `data` and answer each one's mean test Dice."""
    run = Run(data, spec_for(args, keep=None, seeds=args.seeds, scorers=["pruning"]), out, device="cpu").job
    assert [run.index.records[i].image_id for i in run.test_idx] == base_test_ids, (
        "the derived dataset split differently"
    )
    for s in run.seeds:
        train_dense(run, s)
    return [
        float(
            validation_prediction(
                run.load(run.name("dense", s)), run.decoded(), run.test_idx, np.ones(len(run.test_idx), dtype=bool)
            ).dice
        )
        for s in args.seeds
    ]


def interval(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values)
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--keep", type=float, default=0.15, help="the share of training masks kept at the start")
    parser.add_argument(
        "--reveal", type=float, default=0.1, help="k: this share of the training images is annotated next"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["htl", "mc_dropout", "random"])
    parser.add_argument("--out", type=Path, default=Path("runs/active-labelling"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sampled = args.out / "sampled"
    if not sampled.is_dir():  # the sample as a dataset of its own: every derived dataset holds exactly these images
        source = Run(
            args.data,
            JobSpec.model_validate({"sample": {"max_images": args.images, "seed": 0}, "image_size": args.size}),
            args.out / "sample-run",
            device="cpu",
        ).job
        dataset_with_masks(source, set(range(len(source.index.records))), sampled)
    base_run = Run(
        sampled,
        spec_for(args, keep=args.keep, seeds=[0], scorers=["pruning", "mc_dropout"]),
        args.out / "queue",
        device="cpu",
    )
    base_run.run(until="select")
    base = base_run.job
    known = base.targets.mask_known
    kept = {i for i in base.train_idx if known[i]}
    held_out = set(base.val_idx) | set(base.test_idx)
    base_test_ids = [base.index.records[i].image_id for i in base.test_idx]
    scores = [s for s in json.loads((base.out / "scores.json").read_text()) if not s["labeled"]]

    class Scored:  # what queue_order reads, from scores.json
        def __init__(self, s: dict):
            self.image_id, self.rank, self.htl_score = s["image_id"], s["rank"], s["htl_score"]
            self.other_scores, self.attributes = s["scores"], s["attributes"]

    k = int(round(args.reveal * len(base.train_idx)))
    position = {r.image_id: i for i, r in enumerate(base.index.records)}
    results = {
        "none": test_dice(
            args,
            dataset_with_masks(base, kept | held_out, args.out / "data-none"),
            args.out / "run-none",
            base_test_ids,
        )
    }
    print(f"none: {results['none']}", flush=True)
    for strategy in args.strategies:
        chosen = {position[q.image.image_id] for q in queue_order([Scored(s) for s in scores], strategy, seed=0)[:k]}
        folder = dataset_with_masks(base, kept | held_out | chosen, args.out / f"data-{strategy}")
        results[strategy] = test_dice(args, folder, args.out / f"run-{strategy}", base_test_ids)
        print(f"{strategy}: {results[strategy]}", flush=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=1))
    n_train = len(base.train_idx)
    print(
        f"\n{args.images} images at {args.size} px, {args.epochs} epochs, seeds {args.seeds}: {n_train} training images, "
        f"{len(kept)} masks kept ({args.keep:.0%}), k = {k} revealed by each strategy; {len(base.test_idx)} test images\n"
    )
    print(
        "| strategy | masks | test Dice per seed | mean [95% over seeds] | minus random, per seed | minus random [95%] |"
    )
    print("|---|---|---|---|---|---|")
    for strategy, dice in results.items():
        m, lo, hi = interval(dice)
        masks = len(kept) + (0 if strategy == "none" else k)
        if "random" in results and strategy != "random":
            diff = [a - b for a, b in zip(dice, results["random"])]
            dm, dlo, dhi = interval(diff)
            versus = ", ".join(f"{d:+.4f}" for d in diff) + f" | {dm:+.4f} [{dlo:+.4f}, {dhi:+.4f}]"
        else:
            versus = "– | –"
        print(
            f"| {strategy} | {masks} | "
            + ", ".join(f"{d:.4f}" for d in dice)
            + f" | {m:.4f} [{lo:.4f}, {hi:.4f}] | {versus} |"
        )


if __name__ == "__main__":
    main()
