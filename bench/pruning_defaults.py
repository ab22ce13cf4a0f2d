"""Which pruning defaults make the HTL ranking measure capacity: for each pruning scope (global,
layerwise) and BatchNorm choice (stale, re-estimated), on the same dense models (one per seed):
the pruned models' validation Dice and degenerate count, how stable the HTL set is across seeds
(top-set overlap, Spearman of the scores), and how enriched it is for groups known to be hard on
HAM10000 (dx bcc/akiec, face, scalp, the lowest lesion-contrast quartile).

    .venv/bin/python bench/pruning_defaults.py --images 2000 --size 64 --epochs 6 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from contract.jobspec import JobSpec
from ml.job_context import JobContext
from ml.pipeline import Run

REPO = Path(__file__).resolve().parents[1]
KNOWN_HARD = {"dx": {"bcc", "akiec"}, "localization": {"face", "scalp"}}
COMBOS = [(scope, bn) for scope in ("global", "layerwise") for bn in (False, True)]


def spec_for(args, seed: int, scope: str, bn: bool) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "seed": 0, "val_fraction": 0.2},
            "train": {"epochs": args.epochs, "seed": seed},
            "prune": {"sparsities": args.sparsities, "scope": scope, "bn_recalibration": bn},
            "htl": {"top_fraction": args.top_fraction},
            "label_check": {"enabled": False},  # the ranking is compared here, not the masks; as when it was measured
        }
    )


def share_dense(src: Path, dst: Path) -> None:
    """Give a run folder the dense stage of another (same data, split and seed)."""
    (dst / "state").mkdir(parents=True, exist_ok=True)
    (dst / "checkpoints").mkdir(exist_ok=True)
    shutil.copytree(src / "cache", dst / "cache", dirs_exist_ok=True)
    shutil.copy(src / "checkpoints" / "dense.safetensors", dst / "checkpoints")
    for name in ("dense.json", "dense-dense.json", "dynamics-dense.npz"):
        shutil.copy(src / "state" / name, dst / "state" / name)


def known_hard(run: JobContext) -> tuple[np.ndarray, np.ndarray]:
    """Per training image: in a group known to be hard (KNOWN_HARD, or the lowest lesion-contrast
    quartile); and in the lowest lesion-contrast quartile alone (a property of the image, not of
    any model or earlier score)."""
    contrast = run.groups_of(run.train_idx)["image:lesion_contrast"]
    bands = sorted({c for c in contrast if c.startswith("[")}, key=lambda v: float(v[1:].split(",")[0]))
    faint = np.array([c == bands[0] for c in contrast])
    flags = []
    for j, i in enumerate(run.train_idx):
        attrs = run.index.records[i].attributes
        flags.append(any(attrs.get(col, "") in values for col, values in KNOWN_HARD.items()) or faint[j])
    return np.array(flags), faint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000"))
    parser.add_argument("--out", default="runs/pruning-defaults")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = Path(args.out)
    per = {}  # (scope, bn, seed) -> {scores by image id, htl ids, pruning report, lift}
    for seed in args.seeds:
        first = None
        for scope, bn in COMBOS:
            run_dir = out / f"seed{seed}-{scope}-{'bn' if bn else 'stale'}"
            if first is not None and not (run_dir / "state" / "dense.json").exists():
                share_dense(first, run_dir)
            runner = Run(args.data, spec_for(args, seed, scope, bn), run_dir)
            runner.run(until="select")
            run = runner.job
            first = first or run_dir
            items = json.loads((run_dir / "scores.json").read_text())
            hard, faint = known_hard(run)
            ids = [run.index.records[i].image_id for i in run.train_idx]
            is_htl = {i["image_id"] for i in items if i["is_htl"]}
            htl_flags = np.array([x in is_htl for x in ids])
            per[(scope, bn, seed)] = {
                "scores": {i["image_id"]: i["htl_score"] for i in items},
                "htl": is_htl,
                "pruning": run.folder.read_marker("prune")["reports"],
                "lift": float(hard[htl_flags].mean() / hard.mean()),
                "lift_faint": float(faint[htl_flags].mean() / faint.mean()),
                "dense_dice": run.folder.read_marker("dense")["training"]["dense"]["validation_dice"][-1],
            }
            print(f"seed {seed} {scope:<9} bn={bn!s:<5} lift {per[(scope, bn, seed)]['lift']:.2f}", flush=True)
    rows = []
    for scope, bn in COMBOS:
        runs = [per[(scope, bn, s)] for s in args.seeds]
        overlaps, rhos = [], []
        for a, b in itertools.combinations(runs, 2):
            overlaps.append(len(a["htl"] & b["htl"]) / len(a["htl"]))
            ids = sorted(a["scores"])
            rhos.append(float(spearmanr([a["scores"][i] for i in ids], [b["scores"][i] for i in ids]).statistic))
        dice = {
            f"{s:g}": float(np.mean([r["pruning"][f"{s:g}"]["validation_dice"] for r in runs])) for s in args.sparsities
        }
        degenerate = {f"{s:g}": sum(r["pruning"][f"{s:g}"]["degenerate"] for r in runs) for s in args.sparsities}
        rows.append(
            {
                "scope": scope,
                "bn_recalibration": bn,
                "pruned_val_dice": dice,
                "degenerate_seeds": degenerate,
                "dense_val_dice": float(np.mean([r["dense_dice"] for r in runs])),
                "top_overlap": float(np.mean(overlaps)),
                "spearman": float(np.mean(rhos)),
                "lift": float(np.mean([r["lift"] for r in runs])),
                "lift_per_seed": [r["lift"] for r in runs],
                "lift_faint": float(np.mean([r["lift_faint"] for r in runs])),
            }
        )
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\n{'scope':<10}{'BN':<8}{'pruned val Dice ' + '/'.join(f'{s:g}' for s in args.sparsities):<34}{'degenerate':<12}"
        f"{'overlap':>8}{'spearman':>9}{'lift':>6}{'faint':>7}"
    )
    for r in rows:
        dice = " / ".join(f"{v:.3f}" for v in r["pruned_val_dice"].values())
        degenerate = "/".join(str(v) for v in r["degenerate_seeds"].values())
        print(
            f"{r['scope']:<10}{'re-est.' if r['bn_recalibration'] else 'stale':<8}{dice:<34}{degenerate:<12}"
            f"{r['top_overlap']:8.2f}{r['spearman']:9.2f}{r['lift']:6.2f}{r['lift_faint']:7.2f}"
        )


if __name__ == "__main__":
    main()
