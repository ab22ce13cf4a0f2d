"""How many folds should the label check use? Its precision and recall for planted wrong masks on the
training images (each checked by a fold model that never saw it), per K and per label-quality
cut-off, on generated data with planted truth (6% wrong masks, 6% of lesions with a rare pale look a
model can learn, 15% faint lesions: the triage study's recipe).

A fold model sees (K-1)/K of the training images, so of a rare look's few examples too; with too few
it confidently predicts such a lesion elsewhere, which reads like a mask drawn beside the lesion.
Choose K (and the cut-off) on one generated set (--choose-seed) and report the choice on another
(--report-seed, the triage study's data): choosing and reporting on one set would flatter the choice.

    .venv/bin/python bench/label_check_folds.py --folds 3 5 --out runs/label-check-folds
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from contract.jobspec import JobSpec
from ml.pipeline import Run
from ml.synthetic import make_dataset
from ml.unit_training import check_fold

CUTOFFS = (0.3, 0.4, 0.5, 0.6)


def spec_for(args, folds: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": [0]},
            "label_check": {"folds": folds},
        }
    )


def fold_qualities(data: Path, spec: JobSpec, out: Path) -> tuple[list[str], np.ndarray]:
    """Every training image's label quality from the fold model that never saw it."""
    run = Run(data, spec, out, device="cpu").job
    ids, quality = [], []
    for fold in range(spec.label_check.folds):
        check_fold(run, fold)
        saved = np.load(run.folder.fold_file(fold))
        ids += [run.index.records[int(i)].image_id for i in saved["indices"]]
        quality.append(saved["quality"])
    return ids, np.concatenate(quality)


def scores(ids: list[str], quality: np.ndarray, truth: dict[str, dict], cutoff: float) -> dict:
    flagged = quality < cutoff
    wrong = np.array([bool(truth[i]["wrong_mask"]) for i in ids])
    pale = np.array([truth[i]["look"] == "pale" for i in ids])
    return {
        "flagged": int(flagged.sum()),
        "right": int((flagged & wrong).sum()),
        "wrong_masks": int(wrong.sum()),
        "precision": float((flagged & wrong).sum() / max(1, flagged.sum())),
        "recall": float((flagged & wrong).sum() / max(1, wrong.sum())),
        "pale_flagged": int((flagged & pale).sum()),
        "pale": int(pale.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--choose-seed", type=int, default=11, help="the generated set the choice is made on")
    parser.add_argument(
        "--report-seed", type=int, default=7, help="the generated set it is reported on (the triage study's)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/label-check-folds"))
    args = parser.parse_args()
    print("| data | K | cut-off | flagged | wrong masks found | precision | recall | pale lesions flagged | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for role, data_seed in (("choose", args.choose_seed), ("report", args.report_seed)):
        data = args.out / f"data-{data_seed}"
        if not (data / "truth.csv").is_file():
            make_dataset(
                data,
                n=args.images,
                size=args.size,
                seed=data_seed,
                hard_fraction=0.15,
                rare_look_fraction=0.06,
                wrong_mask_fraction=0.06,
            )
        truth = {r["image_id"]: r for r in csv.DictReader(open(data / "truth.csv"))}
        for k in args.folds:
            started = time.perf_counter()
            ids, quality = fold_qualities(data, spec_for(args, k), args.out / f"run-{data_seed}-k{k}")
            seconds = time.perf_counter() - started
            for cutoff in CUTOFFS:
                s = scores(ids, quality, truth, cutoff)
                print(
                    f"| {role} (seed {data_seed}) | {k} | {cutoff:g} | {s['flagged']} | {s['right']} of {s['wrong_masks']} | "
                    f"{s['precision']:.2f} | {s['recall']:.2f} | {s['pale_flagged']} of {s['pale']} | {seconds:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
