"""The `htl` command. Heavy modules (torch, ml) are imported inside the commands that need them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from jobspec import JobSpec, SpecError


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid spec:\n" + "\n".join(lines)


def load_spec(path: str | None) -> JobSpec:
    if path is None:
        return JobSpec()
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"htl: cannot read spec {path}: {e}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SystemExit("htl: " + _format_validation_error(e))


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    from tqdm import tqdm

    from ml.data import DatasetError
    from ml.pipeline import Progress, Run, RunDirError

    bar = tqdm(total=1000, mininterval=0.5, bar_format="{desc:<10} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def on_progress(p: Progress) -> None:
        bar.set_description_str(p.stage)
        if p.loss is not None:
            bar.set_postfix_str(f"loss {p.loss:.3f}", refresh=False)
        bar.update(int(p.overall * 1000) - bar.n)

    try:
        run = Run(args.data_dir, spec, args.out, device=args.device, progress=on_progress)
        for warning in run.index.warnings:
            tqdm.write(f"warning: {warning}")
        metrics = run.run()
    except (SpecError, DatasetError, RunDirError) as e:
        bar.close()
        print(f"htl: {e}", file=sys.stderr)
        return 2
    bar.close()
    dense, attended = metrics["models"]["dense"]["overall"], metrics["models"]["attended"]["overall"]
    print(f"validation images: {metrics['scored_images']}")
    print(f"{'model':<14}{'dice':>8}{'jaccard':>9}{'thr.jac':>9}{'box_iou':>9}")
    for name, m in metrics["models"].items():
        o = m["overall"]
        print(f"{name:<14}{o['dice']:8.4f}{o['jaccard']:9.4f}{o['threshold_jaccard']:9.4f}{o['box_iou']:9.4f}")
    print(f"attended - dense dice: {attended['dice'] - dense['dice']:+.4f}")
    print(f"outputs in {args.out}: scores.json metrics.json predictions/ checkpoints/ spec.json")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ml.synthetic import make_dataset

    root = make_dataset(args.out, n=args.n, size=args.size, hard_fraction=args.hard_fraction, seed=args.seed)
    print(f"wrote {args.n} images ({args.size}x{args.size}) with masks and metadata.csv to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htl", description="htl-miner: find hard-to-learn images by pruning")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline locally on a dataset folder")
    run.add_argument("data_dir", help="folder with images/, masks/ and optionally metadata.csv")
    run.add_argument("--spec", help="job spec JSON (every field optional)")
    run.add_argument("--out", required=True, help="output folder; a rerun into it resumes")
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.set_defaults(func=cmd_run)
    synth = sub.add_parser("synth", help="write a generated dataset with a planted hard minority (site=rare)")
    synth.add_argument("out", help="folder to write images/, masks/ and metadata.csv into")
    synth.add_argument("--n", type=int, default=300)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--hard-fraction", type=float, default=0.15)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
