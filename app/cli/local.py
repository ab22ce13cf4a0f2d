"""`htl run` and `htl synth`: the pipeline and the generated data, on this machine, without a service."""

from __future__ import annotations

import argparse
import sys

from app.cli.common import load_spec, require_torch
from contract.jobspec import SpecError
from contract.layout import LayoutError


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    require_torch("`htl run`")
    from tqdm import tqdm

    from ml.pipeline import DegenerateError, Progress, Run, RunDirError

    # in a log file (not a terminal) a redraw every half second would flood it
    bar = tqdm(
        total=1000,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        bar_format="{desc:<14} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
    )

    def on_progress(p: Progress) -> None:
        bar.set_description_str(p.unit, refresh=False)
        if p.loss is not None:
            bar.set_postfix_str(f"loss {p.loss:.3f}", refresh=False)
        bar.update(int(p.overall * 1000) - bar.n)

    try:
        run = Run(args.data_dir, spec, args.out, device=args.device, progress=on_progress)
        if args.reuse_from:
            tqdm.write(f"re-used {run.job.folder.reuse(args.reuse_from)} files of {args.reuse_from}")
        for warning in [*run.job.index.warnings, *run.job.split_warnings]:
            tqdm.write(f"warning: {warning}")
        metrics = run.run()
    except (SpecError, LayoutError, RunDirError, DegenerateError) as e:
        bar.close()
        print(f"htl: {e}", file=sys.stderr)
        return 2
    bar.close()
    print_report(metrics, spec, run.job.split_warnings, args.out)
    return 0


def print_report(metrics: dict, spec, split_warnings: list[str], out) -> None:
    """What `htl run` prints when the job is done: warnings, each model's figures per split, the
    comparisons, the baselines, the label check and the verdict."""
    for warning in metrics["warnings"]:
        if warning not in split_warnings:
            print(f"warning: {warning}")
    print(
        f"split by {metrics['group_column'] or 'image (no group column)'}; validation images: {metrics['scored_images']}"
        + (f", test images: {metrics['test_images']}" if metrics["test_images"] else "")
    )
    for split in metrics["splits"]:
        print(f"{split}:")
        print(f"  {'model':<14}{'dice':>8}{'jaccard':>9}{'thr.jac':>9}{'box_iou':>9}{'hd95 px':>9}{'nsd':>8}")
        for name, m in metrics["models"].items():
            o = (m if split == "validation" else m["test"])["overall"]
            boundary = f"{o['hd95']:9.2f}{o['nsd']:8.4f}" if "hd95" in o else f"{'-':>9}{'-':>8}"
            print(
                f"  {name:<14}{o['dice']:8.4f}{o['jaccard']:9.4f}{o['threshold_jaccard']:9.4f}{o['box_iou']:9.4f}{boundary}"
            )
        for key, label in (("attended_vs_dense", "attended - dense"), ("attended_vs_control", "attended - control")):
            if key not in metrics:
                continue
            comparison = metrics[key] if split == "validation" else metrics[key]["test"]
            ci = comparison["overall_ci95"]["dice"]
            interval = f" (95% interval over {len(metrics['seeds'])} seeds: {ci[0]:+.4f} to {ci[1]:+.4f})" if ci else ""
            print(f"  {label} dice: {comparison['overall']['dice']:+.4f}{interval}")
        guesses = metrics.get("blank_guesses", {}).get(split)
        if guesses and guesses["n"]:
            images = "positive images" if spec.setting == "weakly_supervised" else "images with a mask"
            print(
                f"  on its {guesses['n']} {images}, guesses that read no pixel: all-foreground dice "
                f"{guesses['all_foreground']:.4f}, centred disc of the mean lesion size {guesses['centred_disc']:.4f}"
            )
    check = metrics.get("label_check", {})
    if check.get("enabled"):
        flagged = ", ".join(f"{n} of {check['checked'][split]} {split}" for split, n in check["n_issues"].items())
        print(
            f"label check ({check['folds']}-fold out-of-sample): masks flagged as probably wrong: {flagged}"
            + ("; figures without them: subgroup label_check=ok" if any(check["n_issues"].values()) else "")
        )
    if metrics.get("verdict"):
        print(metrics["verdict"])
    if metrics["attended_vs_dense"]["single_seed"]:
        print(f"note: {metrics['attended_vs_dense']['note']}")
    print(f"outputs in {out}: scores.json metrics.json subgroups.json predictions/ checkpoints/ spec.json")


def cmd_synth(args: argparse.Namespace) -> int:
    from ml.synthetic import make_dataset

    root = make_dataset(args.out, n=args.n, size=args.size, hard_fraction=args.hard_fraction, seed=args.seed)
    print(f"wrote {args.n} images ({args.size}x{args.size}) with masks and metadata.csv to {root}")
    return 0


def add_parsers(sub) -> None:
    run = sub.add_parser("run", help="run the whole pipeline locally on a dataset folder")
    run.add_argument("data_dir", help="folder with images/, masks/ and optionally metadata.csv")
    run.add_argument("--spec", help="job spec JSON (every field optional)")
    run.add_argument("--out", required=True, help="output folder; a rerun into it resumes")
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.add_argument(
        "--reuse-from",
        metavar="RUN_DIR",
        help="an earlier run's output folder, of the same data and spec but for attention: its dense models, "
        "pruned models and scores are copied instead of computed again",
    )
    run.set_defaults(func=cmd_run)
    synth = sub.add_parser("synth", help="write a generated dataset with a planted hard minority (site=rare)")
    synth.add_argument("out", help="folder to write images/, masks/ and metadata.csv into")
    synth.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument(
        "--hard-fraction",
        type=float,
        default=0.15,
        help="share of images in the hard minority, site=rare (default 0.15)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=cmd_synth)
