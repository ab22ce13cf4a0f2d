"""The weak localizer's map resolution and threshold, chosen on validation and reported on test: the
small CNN classifier trained on image labels with 1, 2 or 3 poolings before its last features (a
map of 1/2, 1/4 or 1/8 of the input), each seed's positive-class CAM thresholded relative to the
image's background (weak.cam_threshold) and scored against the masks of the positive validation
images, beside what a guess that reads no pixel scores on the same images.

    .venv/bin/python bench/weak_localizer.py --images 600 --size 64 --epochs 8 --seeds 0 1
    .venv/bin/python bench/weak_localizer.py --data ../shared/data/ham10000 --images 2000 --size 64 --epochs 8 --seeds 0 1

Default data: generated (ml.synthetic, dx mel/nv as the image label). Criterion, fixed before the
runs: the mean validation Dice over seeds; the chosen (poolings, threshold) is then read on test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contract.jobspec import JobSpec
from ml.data import read_mask
from ml.evaluation import blank_guesses
from ml.job_context import JobContext
from ml.metrics import auroc, image_metrics
from ml.pipeline import Run
from ml.stages import train_model
from ml.synthetic import make_dataset
from ml.train import iterate_batches, localize_and_classify

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@torch.no_grad()
def split_scores(run: JobContext, model, indices: list[int]) -> tuple[dict[float, float], float]:
    """Mean Dice per threshold over the positive images with a mask, at each image's own size; AUROC."""
    model.cam_threshold = 0.0  # the forward then answers the relative map itself
    model.eval()
    data = run.decoded()
    scored = dict(zip(indices, run.targets.localizable(indices)))
    dice: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    probs = []
    for batch in iterate_batches(indices, 64):
        images, _ = data.batch(batch)
        maps, logits = localize_and_classify([model], images)
        probs += torch.sigmoid(logits[0]).tolist()
        for j, i in enumerate(batch):
            if not scored[i]:
                continue
            truth = read_mask(run.index.records[i].mask_path)
            full = F.interpolate(maps[0][j : j + 1].cpu(), size=truth.shape, mode="bilinear", align_corners=False)[
                0, 0
            ].numpy()
            for t in THRESHOLDS:
                dice[t].append(image_metrics(truth, full > t)["dice"])
    labels = run.targets.image_labels[indices]
    known = ~np.isnan(labels)
    return {t: float(np.mean(v)) for t, v in dice.items()}, auroc(np.asarray(probs)[known], labels[known])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="a dataset folder with a dx column; default: generate one"
    )
    parser.add_argument("--positive", nargs="+", default=["mel"])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--poolings", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/weak-localizer"))
    args = parser.parse_args()
    data = args.data or make_dataset(args.out / "data", n=args.images, size=args.size, seed=0)
    spec = JobSpec.model_validate(
        {
            "setting": "weakly_supervised",
            "weak": {"label_column": "dx", "positive": args.positive},
            "image_size": args.size,
            "sample": {"max_images": args.images, "seed": 0},
            "label_check": {"enabled": False},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs},
        }
    )
    run = Run(data, spec, args.out / "run", device="cpu").job
    inputs = run.inputs()
    test_idx = run.eval_splits["test"]
    guesses = {
        split: blank_guesses(run.index.records, [i for i, ok in zip(idx, run.targets.localizable(idx)) if ok])
        for split, idx in (("validation", run.val_idx), ("test", test_idx))
    }
    results = {}
    for poolings in args.poolings:
        config = dataclasses.replace(inputs.model_config, cam_poolings=poolings)
        for seed in args.seeds:
            model = train_model(dataclasses.replace(inputs, model_config=config), seed).model
            results[(poolings, seed)] = {
                split: split_scores(run, model, idx) for split, idx in (("validation", run.val_idx), ("test", test_idx))
            }
            print(
                f"poolings {poolings} seed {seed}: validation "
                + " ".join(f"{t:g}:{d:.3f}" for t, d in results[(poolings, seed)]["validation"][0].items()),
                flush=True,
            )
    mean = {
        (p, t): float(np.mean([results[(p, s)]["validation"][0][t] for s in args.seeds]))
        for p in args.poolings
        for t in THRESHOLDS
    }
    chosen = max(mean, key=mean.get)
    g = guesses["validation"]
    print(
        f"\n{args.images} images at {args.size} px, {args.epochs} epochs, seeds {args.seeds}; validation: {g['n']} positive "
        f"images with a mask, lesion share {g['mean_lesion_share']:.3f}; an all-foreground mask scores {g['all_foreground']:.3f}, "
        f"a centred disc of the mean lesion size {g['centred_disc']:.3f}\n"
    )
    print("| poolings (map) | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + " | AUROC per seed |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 1))
    for p in args.poolings:
        cells = [f"**{mean[(p, t)]:.3f}**" if (p, t) == chosen else f"{mean[(p, t)]:.3f}" for t in THRESHOLDS]
        aucs = ", ".join(f"{results[(p, s)]['validation'][1]:.3f}" for s in args.seeds)
        print(f"| {p} (1/{2**p}) | " + " | ".join(cells) + f" | {aucs} |")
    p, t = chosen
    test = [results[(p, s)]["test"][0][t] for s in args.seeds]
    gt = guesses["test"]
    print(
        f"\nChosen on validation: {p} poolings, threshold {t:g} (validation Dice {mean[chosen]:.3f}). On test ({gt['n']} positive "
        f"images): Dice {np.mean(test):.3f} (per seed "
        + ", ".join(f"{x:.3f}" for x in test)
        + f"); all-foreground {gt['all_foreground']:.3f}, centred disc {gt['centred_disc']:.3f}"
    )
    (args.out / "report.json").write_text(
        json.dumps(
            {
                "guesses": guesses,
                "chosen": {"poolings": p, "threshold": t},
                "validation_mean": {f"{k[0]}/{k[1]:g}": v for k, v in mean.items()},
                "test_chosen": test,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
