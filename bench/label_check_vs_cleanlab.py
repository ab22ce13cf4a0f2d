"""The label check against cleanlab's segmentation module, on the same out-of-sample predictions.

Both read one set of probabilities: each training image's lesion probability from the fold model that
never saw it (the label check's K-fold cross-fitting, K=3, as a job runs it). Ours is
ml.label_check (confident-learning contradictions over the mask-or-prediction region; an issue below
label quality 0.3); cleanlab's is cleanlab.segmentation.rank.get_label_quality_scores (softmin over
the pixels' self-confidence) with its own image rule, issues_from_scores at its default threshold
0.1. Reported: precision and recall of each rule for the planted wrong masks, average precision of
each ranking (how well the order alone finds them), and the two combined (flagged by both, by
either). On real data (--data, no planted truth) it writes which masks each flags and a picture of
those only one of them flags, to look at.

    .venv/bin/python bench/label_check_vs_cleanlab.py --out runs/cleanlab-generated
    .venv/bin/python bench/label_check_vs_cleanlab.py --data ../shared/data/ham10000 --images 1500 \\
        --out runs/cleanlab-ham10000

Resumable: the probabilities are kept in --out (probabilities.npz) and a rerun reads them."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contract.jobspec import JobSpec
from ml.label_check import fold_of_checked, fold_seed, label_quality, lesion_probabilities
from ml.pipeline import Run
from ml.synthetic import make_dataset
from ml.train import fit, prepare_for_device

OUR_CUTOFF = 0.3  # label_check.max_quality's default
CLEANLAB_THRESHOLD = 0.1  # cleanlab.segmentation.rank.issues_from_scores's default
OUR_GRID = (0.2, 0.3, 0.4, 0.5)
CLEANLAB_GRID = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2)


def spec_for(args) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": [0]},
            "label_check": {"folds": 3},
        }
    )


def out_of_sample(data: Path, spec: JobSpec, out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image ids, masks (N, S, S), out-of-sample probabilities (N, S, S)) of every checked training image."""
    saved = out / "probabilities.npz"
    if saved.is_file():
        f = np.load(saved)
        return list(f["ids"]), f["masks"], f["probs"]
    job = Run(data, spec, out / "run", device="cpu").job
    inputs = job.inputs()
    ids, masks, probs = [], [], []
    for fold, held in enumerate(fold_of_checked(inputs.index, spec, inputs.targets)):
        rest = [i for k, f in enumerate(fold_of_checked(inputs.index, spec, inputs.targets)) if k != fold for i in f]
        torch.manual_seed(fold_seed(spec, fold))
        model = prepare_for_device(inputs.fresh_model(), inputs.device, precision=inputs.precision)
        fit(model, inputs.data, rest, inputs.fit_config(fold_seed(spec, fold)))
        probs.append(lesion_probabilities([model], inputs.data, held).astype(np.float32))
        masks.append(inputs.data.masks[held][:, 0])
        ids += [inputs.index.records[i].image_id for i in held]
        print(f"fold {fold}: {len(held)} images", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(saved, ids=np.array(ids), masks=np.concatenate(masks), probs=np.concatenate(probs))
    return ids, np.concatenate(masks), np.concatenate(probs)


def both_scores(masks: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: our label quality, cleanlab's label quality score (each: lower is worse)."""
    from cleanlab.segmentation.rank import get_label_quality_scores

    ours = label_quality(masks, probs).quality
    pred_probs = np.stack([1 - probs, probs], axis=1).astype(np.float32)
    theirs, _ = get_label_quality_scores(masks.astype(np.int64), pred_probs, verbose=False)
    return ours, np.asarray(theirs)


def average_precision(worse_first: np.ndarray, wrong: np.ndarray) -> float:
    order = np.argsort(worse_first, kind="stable")
    hits = wrong[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / max(1, hits.sum()))


def rule_report(flagged: np.ndarray, wrong: np.ndarray) -> dict:
    right = int((flagged & wrong).sum())
    return {
        "flagged": int(flagged.sum()),
        "right": right,
        "precision": right / max(1, int(flagged.sum())),
        "recall": right / max(1, int(wrong.sum())),
    }


def planted(data: Path, ids: list[str], ours: np.ndarray, theirs: np.ndarray) -> dict:
    truth = {r["image_id"]: r for r in csv.DictReader(open(data / "truth.csv"))}
    wrong = np.array([bool(truth[i]["wrong_mask"]) for i in ids])
    pale = np.array([truth[i]["look"] == "pale" for i in ids])
    ours_flag, theirs_flag = ours < OUR_CUTOFF, theirs < CLEANLAB_THRESHOLD
    rules = {
        "ours (quality < 0.3)": ours_flag,
        "cleanlab (score < 0.1)": theirs_flag,
        "both": ours_flag & theirs_flag,
        "either": ours_flag | theirs_flag,
    }
    return {
        "wrong_masks": int(wrong.sum()),
        "images": len(ids),
        "rules": {
            name: {**rule_report(f, wrong), "pale_flagged": int((f & pale).sum()), "pale": int(pale.sum())}
            for name, f in rules.items()
        },
        "average_precision": {"ours": average_precision(ours, wrong), "cleanlab": average_precision(theirs, wrong)},
        # each rule's cut-off swept, to choose one on another generated set (--data-seed 11) and report it here
        "ours_by_cutoff": {f"{t:g}": rule_report(ours < t, wrong) for t in OUR_GRID},
        "cleanlab_by_threshold": {f"{t:g}": rule_report(theirs < t, wrong) for t in CLEANLAB_GRID},
    }


def montage(data: Path, ids: list[str], path: Path, size: int = 96) -> None:
    """Each image with its mask's outline, side by side, to look at."""
    from contract.layout import find_mask, read_mask

    tiles = []
    for image_id in ids[:12]:
        picture = next((data / "images").glob(f"{image_id}.*"))
        rgb = np.asarray(Image.open(picture).convert("RGB").resize((size, size)))
        mask = read_mask(find_mask(data / "masks", image_id))
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size))) > 127
        edge = m & ~np.pad(m, 1)[2:, 1:-1] | m & ~np.pad(m, 1)[:-2, 1:-1] | m & ~np.pad(m, 1)[1:-1, 2:]
        tile = rgb.copy()
        tile[edge] = (0, 255, 0)
        tiles.append(tile)
    if tiles:
        Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


def real(data: Path, ids: list[str], ours: np.ndarray, theirs: np.ndarray, out: Path) -> dict:
    ours_flag, theirs_flag = ours < OUR_CUTOFF, theirs < CLEANLAB_THRESHOLD
    order_ours = [ids[i] for i in np.argsort(ours, kind="stable") if ours_flag[i]]
    order_theirs = [ids[i] for i in np.argsort(theirs, kind="stable") if theirs_flag[i]]
    only_ours = [i for i in order_ours if i not in set(order_theirs)]
    only_theirs = [i for i in order_theirs if i not in set(order_ours)]
    montage(data, only_ours, out / "only-ours.png")
    montage(data, only_theirs, out / "only-cleanlab.png")
    montage(data, [i for i in order_ours if i in set(order_theirs)], out / "both.png")
    rho = float(np.corrcoef(np.argsort(np.argsort(ours)), np.argsort(np.argsort(theirs)))[0, 1])
    return {
        "images": len(ids),
        "flagged": {"ours": len(order_ours), "cleanlab": len(order_theirs), "both": len(order_ours) - len(only_ours)},
        "only_ours": only_ours[:12],
        "only_cleanlab": only_theirs[:12],
        "rank_correlation": rho,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="a dataset folder; default: generated, planted truth")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data-seed", type=int, default=7, help="the generated set (the triage study's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = args.data
    if data is None:
        data = args.out / "data"
        if not (data / "truth.csv").is_file():
            make_dataset(
                data,
                n=args.images,
                size=args.size,
                seed=args.data_seed,
                hard_fraction=0.15,
                rare_look_fraction=0.06,
                wrong_mask_fraction=0.06,
            )
    ids, masks, probs = out_of_sample(data, spec_for(args), args.out)
    ours, theirs = both_scores(masks, probs)
    report = (
        planted(data, ids, ours, theirs) if (data / "truth.csv").is_file() else real(data, ids, ours, theirs, args.out)
    )
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
