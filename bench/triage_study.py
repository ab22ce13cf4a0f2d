"""Hard or mislabeled, and does attention help? One full run per attention variant (scorer, label
issues left out or kept, from_scratch or fine_tune); the variants share the dense models, the label
check and the pruned models (copied run state), so they differ from scoring's attention sets on.
Every variant is reported on the held-out test split; nothing is chosen here.

On generated data (the default) with planted truth (truth.csv, read only by this report): 6% of
lesions with a rare look a model can learn (look=pale), 6% wrong masks (beside the lesion, or far
too loose), 15% faint lesions (site=rare). Reported: the label check's precision and recall, what
the attended set holds, and attended vs dense vs the random control on the pale lesions per seed.

    .venv/bin/python bench/triage_study.py --images 2000 --size 64 --epochs 6 --seeds 0 1 2 \\
        --variants pruning "loss, label issues kept" --modes from_scratch fine_tune --out runs/triage-study

On a real dataset (--data): the label check's flags (and --overlays N of them drawn to a folder), and
per variant the focus endpoint (attended - control on the focus set, interval, one-sided p) and the
verdict.

    .venv/bin/python bench/triage_study.py --data ../shared/data/ham10000 --images 1500 --size 64 --epochs 6 \\
        --seeds 0 1 2 3 4 --variants pruning "pruning, label issues kept" loss --modes from_scratch fine_tune \\
        --out runs/triage-ham10000 --overlays 12 --overlay-dir docs/label-issues
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from contract.jobspec import JobSpec
from ml.data import read_mask
from ml.pipeline import Run
from ml.synthetic import planted_dataset, read_truth

# scorer variants -> the attention part of the spec (the random control is trained in each)
SCORERS = {
    "pruning": {"scorer": "pruning"},
    "pruning, label issues kept": {"scorer": "pruning", "exclude_label_issues": False},
    "loss": {"scorer": "loss"},
    "loss, label issues kept": {"scorer": "loss", "exclude_label_issues": False},
}
SHARED_STATE = ("dense", "label_check", "dynamics-")  # what every variant re-uses from the first run
# pruning choices -> the prune part of the spec; the first is the default
PRUNINGS = {
    "global-stale": {"scope": "global", "bn_recalibration": False},
    "global-bn": {"scope": "global", "bn_recalibration": True},
    "layerwise-stale": {"scope": "layerwise", "bn_recalibration": False},
    "layerwise-bn": {"scope": "layerwise", "bn_recalibration": True},
}


def spec_for(args, attention: dict, mode: str, factor: float, top_fraction: float, pruning: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "prune": PRUNINGS[pruning],
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": args.seeds, "precision": args.precision},
            "htl": {"top_fraction": top_fraction},
            "label_check": {"folds": args.folds},
            "scorers": ["pruning", "loss"],
            "attention": {"strategy": "oversample", "factor": factor, "control": "random", "mode": mode, **attention},
        }
    )


def pruning_of(run_dir: Path) -> str:
    prune = json.loads((run_dir / "spec.json").read_text())["prune"]
    return next(name for name, choice in PRUNINGS.items() if all(prune[k] == v for k, v in choice.items()))


def reuse(src: Path, dst: Path, pruned: bool) -> None:
    """dst starts with src's dense models and label check, and its pruned models where `pruned`
    (the same pruning choice); scoring onwards (or pruning onwards) runs again."""
    (dst / "state" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "cache", dst / "cache", dirs_exist_ok=True)
    (dst / "checkpoints").mkdir(exist_ok=True)
    for path in (src / "checkpoints").iterdir():
        if path.name.startswith("dense") or (pruned and path.name.startswith("pruned@")):
            shutil.copy(path, dst / "checkpoints" / path.name)
            record = src / "state" / "checkpoints" / f"{path.stem}.json"
            shutil.copy(record, dst / "state" / "checkpoints" / record.name)
    for path in (src / "state").iterdir():
        if path.is_file() and path.name.startswith(SHARED_STATE + (("prune",) if pruned else ())):
            shutil.copy(path, dst / "state" / path.name)


def copy_model(src: Path, dst: Path, name: str) -> None:
    """dst takes src's trained model `name` (checkpoint, its record, its training marker)."""
    record = json.loads((src / "state" / "checkpoints" / f"{name}.json").read_text())
    shutil.copy(src / record["path"], dst / record["path"])
    shutil.copy(src / "state" / "checkpoints" / f"{name}.json", dst / "state" / "checkpoints" / f"{name}.json")
    shutil.copy(src / "state" / f"attend-{name}.json", dst / "state" / f"attend-{name}.json")


def reuse_attention(trained: list[Path], run_dir: Path, seeds: list[int]) -> list[str]:
    """A model trained on the same set with the same seed and spec is the same model (training is
    seeded): where an earlier variant of this mode attended the same images (or drew the same
    control), its model is copied instead of trained again. Answers what was copied."""
    sets = json.loads((run_dir / "state" / "attention.json").read_text())
    name = (lambda base, s: f"{base}-s{s}") if len(seeds) > 1 else (lambda base, s: base)
    copied = []
    for seed in seeds:
        for base, chosen in (
            ("attended", lambda a: sorted(a["attended"])),
            ("control", lambda a, seed=seed: sorted(a["control"][str(seed)])),
        ):
            for prior in trained:
                if chosen(json.loads((prior / "state" / "attention.json").read_text())) == chosen(sets):
                    copy_model(prior, run_dir, name(base, seed))
                    copied.append(f"{name(base, seed)} from {prior.name}")
                    break
    return copied


def share(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, a.sum()))


def endpoint(metrics: dict) -> dict:
    versus = metrics["attended_vs_control"]
    validation = metrics["validation_endpoint"]
    return {
        "focus_n": metrics["focus"]["n"],
        "focus": versus["focus"],
        "versus_dense_focus": metrics["attended_vs_dense"]["focus"],
        "test_overall": {"mean": versus["test"]["overall"]["dice"], "ci95": versus["test"]["overall_ci95"]["dice"]},
        "worst_decile": metrics["worst_decile"],
        "verdict": metrics["verdict"],
        "validation_focus_n": validation["focus"]["n"],
        "validation_focus": validation["attended_vs_control"],
    }


def planted_report(run_dir: Path, metrics: dict, truth: dict[str, dict], seeds: list[int]) -> dict:
    scores = json.loads((run_dir / "scores.json").read_text())
    check = json.loads((run_dir / "state" / "label_check-results.json").read_text())["images"]
    ids = list(check)
    flagged = np.array([check[i]["issue"] for i in ids])
    wrong = np.array([bool(truth[i]["wrong_mask"]) for i in ids])
    train = np.array([check[i]["split"] == "train" for i in ids])
    attended = [s for s in scores if s["attended"]]
    name = (lambda base, s: f"{base}-s{s}") if len(seeds) > 1 else (lambda base, s: base)
    pale = {
        base: [
            float(
                np.mean(
                    [
                        r["dice"]
                        for r in metrics["models"][name(base, s)]["test"]["per_image"]
                        if truth[r["image_id"]]["look"] == "pale"
                    ]
                )
            )
            for s in seeds
        ]
        for base in ("dense", "attended", "control")
    }
    n_pale = sum(
        truth[r["image_id"]]["look"] == "pale" for r in metrics["models"][name("dense", seeds[0])]["test"]["per_image"]
    )
    return {
        "label_check": {
            part: {
                "flagged": int((flagged & side).sum()),
                "wrong": int((wrong & side).sum()),
                "precision": share(flagged & side, wrong),
                "recall": share(wrong & side, flagged),
            }
            for part, side in (("train", train), ("held-out", ~train))
        },
        "attended": {
            "size": len(attended),
            "wrong_mask_share": float(np.mean([bool(truth[s["image_id"]]["wrong_mask"]) for s in attended]))
            if attended
            else 0.0,
            "pale_share": float(np.mean([truth[s["image_id"]]["look"] == "pale" for s in attended]))
            if attended
            else 0.0,
            "pale_share_of_training": float(np.mean([truth[s["image_id"]]["look"] == "pale" for s in scores])),
        },
        "pale_test_dice": pale,
        "pale_test_images": n_pale,
        "pale_attended_minus_control": [a - c for a, c in zip(pale["attended"], pale["control"])],
    }


def _edge(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    inner = mask & p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
    return mask & ~inner


def draw_overlays(run_dir: Path, data: Path, count: int, folder: Path) -> list[str]:
    """The worst `count` flagged training masks: the image with its mask (green) and the
    out-of-sample prediction (magenta), side by side with the plain image."""
    check = json.loads((run_dir / "state" / "label_check-results.json").read_text())
    gallery = run_dir / "gallery" / "oos"
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for issue in [i for i in check["issues"] if i["split"] == "train"][:count]:
        image_id = issue["image_id"]
        source = next((data / "images").glob(f"{image_id}.*"))
        mask_path = next((data / "masks").glob(f"{image_id}*"))
        with Image.open(source) as img:
            rgb = np.asarray(img.convert("RGB")).copy()
        plain = rgb.copy()
        h, w = rgb.shape[:2]
        for mask, colour in (
            (read_mask(mask_path), (40, 220, 60)),
            (np.asarray(Image.open(gallery / f"{image_id}.png").convert("L").resize((w, h))) > 127, (255, 40, 255)),
        ):
            rgb[_edge(mask)] = colour
        Image.fromarray(np.concatenate([plain, rgb], axis=1)).save(folder / f"{image_id}.png")
        drawn.append(f"{image_id} (label quality {issue['quality']:.2f}, out-of-sample Dice {issue['oos_dice']:.2f})")
    return drawn


def markdown(results: dict, planted: bool, args) -> str:
    lines = [
        f"{args.images} images at {args.size} px, {args.epochs} epochs, seeds {args.seeds}, label check {args.folds} folds, "
        "random control per seed",
        "",
    ]
    first = next(iter(results.values()))
    lines += [
        "| label check | flagged | " + ("wrong masks | precision | recall |" if planted else ""),
        "|---|---|" + ("---|---|---|" if planted else ""),
    ]
    for part, c in first["label_check"].items():
        lines.append(
            f"| {part} | {c['flagged']} | "
            + (f"{c['wrong']} | {c['precision']:.2f} | {c['recall']:.2f} |" if planted else "")
        )
    chosen = max(results, key=lambda key: results[key]["endpoint"]["validation_focus"]["difference"])
    lines += [
        "",
        "| variant | mode | factor | top | pruning | pruned val Dice by sparsity (degenerate seeds) | "
        "VALIDATION focus: attended - control (per seed) | test focus images | "
        "TEST focus: attended - control [95%], one-sided p | per seed | attended - dense on focus | "
        "worst-decile Dice dense / attended / control | all test attended - control [95% over seeds] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        variant, mode, factor, top, pruning = key
        by_sparsity: dict[float, list[dict]] = {}
        for rep in r["pruning"].values():
            by_sparsity.setdefault(rep["sparsity"], []).append(rep)
        pruned = " / ".join(
            f"{np.mean([x['validation_dice'] for x in reps]):.3f} ({sum(x['degenerate'] for x in reps)})"
            for _, reps in sorted(by_sparsity.items())
        )
        e = r["endpoint"]
        f, d, w, t, v = e["focus"], e["versus_dense_focus"], e["worst_decile"], e["test_overall"], e["validation_focus"]
        ci = f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}]" if t["ci95"] else ""
        mark = "**" if key == chosen else ""
        lines.append(
            f"| {mark}{variant}{mark} | {mode} | {factor:g} | {top:g} | {pruning} | {pruned} | {mark}{v['difference']:+.4f}{mark} ("
            + ", ".join(f"{x:+.3f}" for x in v["per_seed"])
            + f") | {e['focus_n']} | "
            f"{f['difference']:+.4f} [{f['ci95'][0]:+.4f}, {f['ci95'][1]:+.4f}], p {f['p_one_sided']:.3f} | "
            + ", ".join(f"{x:+.3f}" for x in f["per_seed"])
            + f" | {d['difference']:+.4f} | "
            f"{w['dense']['all']:.3f} / {w['attended']['all']:.3f} / {w['control']['all']:.3f} | {t['mean']:+.4f} {ci} |"
        )
    lines.append(
        f"\nChosen on validation (the largest mean attended - control on the validation focus set): {chosen[0]}, "
        f"{chosen[1]}, factor {chosen[2]:g}, top {chosen[3]:g}, pruning {chosen[4]} (pruned val Dice: the mean over seeds, and in brackets how many seeds' models are degenerate)"
    )
    if planted:
        lines += [
            "",
            "| variant | mode | factor | top | pruning | attended | wrong masks in it | pale lesions in it (share of training) | "
            "pale test Dice dense / attended / control, per seed | pale attended - control, per seed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (variant, mode, factor, top, pruning), r in results.items():
            p, a = r["pale_test_dice"], r["attended"]
            per_seed = "; ".join(
                f"{x:.3f} / {y:.3f} / {z:.3f}" for x, y, z in zip(p["dense"], p["attended"], p["control"])
            )
            lines.append(
                f"| {variant} | {mode} | {factor:g} | {top:g} | {pruning} | {a['size']} | {a['wrong_mask_share']:.1%} | {a['pale_share']:.1%} ({a['pale_share_of_training']:.1%}) | "
                f"{per_seed} | " + ", ".join(f"{x:+.3f}" for x in r["pale_attended_minus_control"]) + " |"
            )
        lines.append(f"\n(pale lesions on the test split: {first['pale_test_images']})")
    lines.append("")
    lines += [
        f"- {variant}, {mode}, factor {factor:g}, top {top:g}, pruning {pruning}: {r['endpoint']['verdict']}"
        for (variant, mode, factor, top, pruning), r in results.items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="a dataset folder; default: generate one with planted truth"
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top-fractions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--factors", type=float, nargs="+", default=[3.0])
    parser.add_argument("--folds", type=int, default=JobSpec().label_check.folds, help="the label check's K")
    parser.add_argument("--modes", nargs="+", default=["from_scratch"], choices=["from_scratch", "fine_tune"])
    parser.add_argument("--variants", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    parser.add_argument(
        "--prunings",
        nargs="+",
        default=[next(iter(PRUNINGS))],
        choices=list(PRUNINGS),
        help="pruning scope and BatchNorm choices (the first listed default is the service's)",
    )
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="train.precision")
    parser.add_argument("--overlays", type=int, default=0, help="draw this many flagged masks (real data)")
    parser.add_argument("--overlay-dir", type=Path, default=Path("docs/label-issues"))
    parser.add_argument("--out", type=Path, default=Path("runs/triage-study"))
    args = parser.parse_args()
    data = args.data or planted_dataset(args.out / "data", n=args.images, size=args.size, seed=args.data_seed)
    truth = read_truth(data)
    planted = bool(truth)
    results = {}
    # an earlier invocation's runs (other variants or modes, same --out) lend their dense models
    first_dir = next((d for d in sorted(args.out.glob("*-*")) if (d / "metrics.json").is_file()), None)
    grid = [
        (variant, mode, factor, top, pruning)
        for pruning in args.prunings
        for mode in args.modes
        for factor in args.factors
        for top in args.top_fractions
        for variant in args.variants
    ]
    trained_by: dict[tuple[str, float], list[Path]] = {}
    for variant, mode, factor, top, pruning in grid:
        trained = trained_by.setdefault((mode, factor), [])  # a model is re-used only where mode and factor match too
        suffix = "" if (factor, top) == (3.0, 0.1) else f"-x{factor:g}-top{top:g}"
        suffix += "" if pruning == next(iter(PRUNINGS)) else f"-{pruning}"
        run_dir = args.out / f"{variant.replace(', ', '-').replace(' ', '-')}-{mode}{suffix}"
        if first_dir is not None and not (run_dir / "state").is_dir():
            reuse(first_dir, run_dir, pruned=pruning_of(first_dir) == pruning)
        started = time.perf_counter()
        run = Run(data, spec_for(args, SCORERS[variant], mode, factor, top, pruning), run_dir, device="cpu")
        run.run(until="select")
        if not run.job.folder.finished("attend"):
            for line in reuse_attention(trained, run_dir, args.seeds):
                print(f"  {variant}, {mode}: same set, copied {line}", flush=True)
        run.run()
        trained.append(run_dir)
        print(
            f"{variant}, {mode}, x{factor:g}, top {top:g}, {pruning}: {time.perf_counter() - started:.0f} s", flush=True
        )
        first_dir = first_dir or run_dir
        metrics = json.loads((run_dir / "metrics.json").read_text())
        entry = {"endpoint": endpoint(metrics)}
        if planted:
            entry.update(planted_report(run_dir, metrics, truth, args.seeds))
        else:
            check = metrics["label_check"]
            entry["label_check"] = {
                split: {"flagged": n, "checked": check["checked"][split]} for split, n in check["n_issues"].items()
            }
        entry["pruning"] = run.job.folder.read_marker("prune")["reports"]
        results[(variant, mode, factor, top, pruning)] = entry
    (args.out / "report.json").write_text(
        json.dumps({f"{v} / {m} / x{f:g} / top {t:g} / {p}": r for (v, m, f, t, p), r in results.items()}, indent=1)
    )
    print(markdown(results, planted, args))
    if args.overlays and first_dir is not None:
        for line in draw_overlays(first_dir, data, args.overlays, args.overlay_dir):
            print(f"  drew {line}")


if __name__ == "__main__":
    main()
