"""Hard or mislabeled, and does attention help? On generated data with planted truth: 6% of lesions
with a rare look a model can learn (look=pale), 6% wrong masks (beside the lesion, or far too loose),
15% faint lesions (site=rare). One full run per attention variant; the variants share the dense
models, the label check and the pruned models (copied run state), so they differ in scoring's
attention sets and the attend stage only. Reports, per variant: the label check's precision and
recall for the wrong masks, what the attended set holds, and on the test split attended vs dense vs
the random control overall and on the pale lesions, per seed.

    .venv/bin/python bench/triage_study.py --images 2000 --size 64 --epochs 6 --seeds 0 1 2 --out runs/triage-study

Nothing is chosen here: every variant is reported on the test split, and the planted truth
(truth.csv) is read only by this report, never by the pipeline.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

from contract.jobspec import JobSpec
from ml.pipeline import Run
from ml.synthetic import make_dataset

# name -> the attention part of the spec
VARIANTS = {
    "pruning": {"scorer": "pruning"},
    "pruning, label issues kept": {"scorer": "pruning", "exclude_label_issues": False},
    "loss": {"scorer": "loss"},
    "loss, label issues kept": {"scorer": "loss", "exclude_label_issues": False},
}
SHARED_STATE = ("dense", "label_check", "prune", "dynamics-")  # what every variant re-uses from the first run


def spec_for(args, attention: dict) -> JobSpec:
    return JobSpec.model_validate({
        "image_size": args.size, "model": {"arch": "unet", "width": 16},
        "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
        "train": {"epochs": args.epochs, "seeds": args.seeds},
        "htl": {"top_fraction": args.top_fraction},
        "scorers": ["pruning", "loss"],
        "attention": {"strategy": "oversample", "factor": args.factor, "control": "random", **({"mode": args.mode} if args.mode else {}),
                      **attention},
    })


def reuse(src: Path, dst: Path) -> None:
    """dst starts with src's dense models, label check and pruned models; scoring onwards runs again."""
    (dst / "state" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "cache", dst / "cache", dirs_exist_ok=True)
    (dst / "checkpoints").mkdir(exist_ok=True)
    for path in (src / "checkpoints").iterdir():
        if path.name.startswith(("dense", "pruned@")):
            shutil.copy(path, dst / "checkpoints" / path.name)
            record = src / "state" / "checkpoints" / f"{path.stem}.json"
            shutil.copy(record, dst / "state" / "checkpoints" / record.name)
    for path in (src / "state").iterdir():
        if path.is_file() and path.name.startswith(SHARED_STATE):
            shutil.copy(path, dst / "state" / path.name)


def fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, a.sum()))


def report_variant(run_dir: Path, truth: dict[str, dict], seeds: list[int]) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scores = json.loads((run_dir / "scores.json").read_text())
    check = json.loads((run_dir / "state" / "label_check-results.json").read_text())["images"]
    ids = list(check)
    flagged = np.array([check[i]["issue"] for i in ids])
    wrong = np.array([bool(truth[i]["wrong_mask"]) for i in ids])
    train = np.array([check[i]["split"] == "train" for i in ids])
    attended = [s for s in scores if s["attended"]]
    name = (lambda base, s: f"{base}-s{s}") if len(seeds) > 1 else (lambda base, s: base)
    pale_test = {}
    for base in ("dense", "attended", "control"):
        per_seed = []
        for s in seeds:
            rows = metrics["models"][name(base, s)]["test"]["per_image"]
            per_seed.append(float(np.mean([r["dice"] for r in rows if truth[r["image_id"]]["look"] == "pale"])))
        pale_test[base] = per_seed
    n_pale_test = sum(truth[r["image_id"]]["look"] == "pale" for r in metrics["models"][name("dense", seeds[0])]["test"]["per_image"])
    versus = metrics["attended_vs_control"]["test"]
    return {
        "label_check": {
            "train": {"flagged": int((flagged & train).sum()), "precision": fraction(flagged & train, wrong),
                      "recall": fraction(wrong & train, flagged), "wrong": int((wrong & train).sum())},
            "held_out": {"flagged": int((flagged & ~train).sum()), "precision": fraction(flagged & ~train, wrong),
                         "recall": fraction(wrong & ~train, flagged), "wrong": int((wrong & ~train).sum())},
        },
        "attended": {"size": len(attended),
                     "wrong_mask_share": float(np.mean([bool(truth[s["image_id"]]["wrong_mask"]) for s in attended])) if attended else 0.0,
                     "pale_share": float(np.mean([truth[s["image_id"]]["look"] == "pale" for s in attended])) if attended else 0.0,
                     "pale_share_of_training": float(np.mean([truth[s["image_id"]]["look"] == "pale" for s in scores]))},
        "pale_test_dice": pale_test, "pale_test_images": n_pale_test,
        "pale_attended_minus_control": [a - c for a, c in zip(pale_test["attended"], pale_test["control"])],
        "test_attended_minus_control": {"mean": versus["overall"]["dice"], "ci95": versus["overall_ci95"]["dice"],
                                        "per_seed": [p["dice"] for p in versus["per_seed"]]},
        "focus": {k: metrics.get(k, {}).get("focus") for k in ("attended_vs_control", "attended_vs_dense")},
        "verdict": metrics.get("verdict"),
    }


def markdown(results: dict, args) -> str:
    lines = [f"{args.images} images at {args.size} px, {args.epochs} epochs, seeds {args.seeds}, top {args.top_fraction:.0%} x{args.factor:g}"
             + (f", attention.mode {args.mode}" if args.mode else ""), ""]
    first = next(iter(results.values()))["label_check"]
    lines += ["| label check | flagged | wrong masks | precision | recall |", "|---|---|---|---|---|"]
    for part in ("train", "held_out"):
        c = first[part]
        lines.append(f"| {part.replace('_', '-')} | {c['flagged']} | {c['wrong']} | {c['precision']:.2f} | {c['recall']:.2f} |")
    lines += ["", "| variant | attended | wrong masks in it | pale lesions in it (share of training) | pale test Dice dense / attended / control, per seed | "
              "pale attended - control, per seed | all test images attended - control [95% over seeds] |", "|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        pale = r["pale_test_dice"]
        per_seed = "; ".join(f"{d:.3f} / {a:.3f} / {c:.3f}" for d, a, c in zip(pale["dense"], pale["attended"], pale["control"]))
        t = r["test_attended_minus_control"]
        ci = f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}]" if t["ci95"] else ""
        lines.append(f"| {variant} | {r['attended']['size']} | {r['attended']['wrong_mask_share']:.1%} | {r['attended']['pale_share']:.1%} "
                     f"({r['attended']['pale_share_of_training']:.1%}) | {per_seed} | "
                     + ", ".join(f"{d:+.3f}" for d in r["pale_attended_minus_control"]) + f" | {t['mean']:+.4f} {ci} |")
    lines.append(f"\n(pale lesions on the test split: {first and next(iter(results.values()))['pale_test_images']})")
    for variant, r in results.items():
        if r["verdict"]:
            lines.append(f"- {variant}: {r['verdict']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top-fraction", type=float, default=0.1)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--mode", default=None, help="attention.mode (from_scratch, fine_tune); default: the spec's")
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/triage-study"))
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "truth.csv").is_file():
        make_dataset(data, n=args.images, size=args.size, seed=args.data_seed, hard_fraction=0.15,
                     rare_look_fraction=0.06, wrong_mask_fraction=0.06)
    truth = {r["image_id"]: r for r in csv.DictReader(open(data / "truth.csv"))}
    results, first_dir = {}, None
    for variant in args.variants:
        run_dir = args.out / variant.replace(", ", "-").replace(" ", "-")
        if first_dir is not None and not (run_dir / "state").is_dir():
            reuse(first_dir, run_dir)
        started = time.perf_counter()
        Run(data, spec_for(args, VARIANTS[variant]), run_dir, device="cpu").run()
        print(f"{variant}: {time.perf_counter() - started:.0f} s", flush=True)
        first_dir = first_dir or run_dir
        results[variant] = report_variant(run_dir, truth, args.seeds)
    (args.out / "report.json").write_text(json.dumps(results, indent=1))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
