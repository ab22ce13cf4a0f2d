"""Which remedy, chosen on validation? One run per attention.strategy on the same dense models (re-used,
as a sweep shares them), each beside its own random control; the sweep's selection rule
(app.services.selection, the one GET /v1/sweeps answers) picks a variant on the validation focus set,
and the chosen variant is reported on test, on the planted rare look (look=pale, read from truth.csv
for this report only) and on the focus set.

    .venv/bin/python bench/remedy_sweep.py --images 1200 --size 64 --epochs 6 --seeds 0 1 2 \\
        --strategies oversample group_balance jtt --out runs/remedy-sweep

A variant is a strategy, or strategy@factor for another attention.factor (jtt@20: JTT's error set
drawn 20 times as often, its control likewise).

Resumable: each variant's run folder keeps what it trained; a rerun into the same --out trains only
what is missing. With --results, each finished variant also writes, per seed, its small per-image
result (bench/remedy_study.py aggregates those over seeds), and a variant whose results are all there
is skipped: a study can go on in another checkout from its committed results alone. On real data
(--data), the rare-look report is left out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from app.services.selection import select
from contract.jobspec import JobSpec
from contract.roster import model_name
from ml.pipeline import Run
from ml.synthetic import planted_dataset, read_truth


def parse_variant(variant: str) -> tuple[str, float | None]:
    strategy, _, factor = variant.partition("@")
    return strategy, (float(factor) if factor else None)


def spec_for(args, variant: str) -> JobSpec:
    strategy, factor = parse_variant(variant)
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": args.seeds, "precision": args.precision},
            "attention": {
                "strategy": strategy,
                "control": "random",
                **({"factor": factor} if factor is not None else {}),
            },
        }
    )


def pale_report(run_dir: Path, truth: dict[str, dict], seeds: list[int]) -> dict:
    """Per seed, test Dice on the rare look of dense, attended and control, and attended - control."""
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def on_pale(base: str, seed: int) -> float:
        rows = metrics["models"][model_name(base, seed, seeds)]["test"]["per_image"]
        return float(np.mean([r["dice"] for r in rows if truth[r["image_id"]]["look"] == "pale"]))

    dice = {base: [on_pale(base, s) for s in seeds] for base in ("dense", "attended", "control")}
    return {**dice, "attended_minus_control": [a - c for a, c in zip(dice["attended"], dice["control"])]}


def result_path(results: Path, seed: int, variant: str) -> Path:
    return results / f"s{seed}-{variant}.json"


def write_results(results: Path, variant: str, seeds: list[int], summary: dict, seconds: float) -> None:
    """Per seed, what bench/remedy_study.py needs of one variant: per held-out split, the per-image
    Dice of dense, attended and control, and the split's focus set (chosen by the job before any
    held-out label was read)."""
    results.mkdir(parents=True, exist_ok=True)
    focus = {"test": summary.get("focus"), "validation": (summary.get("validation_endpoint") or {}).get("focus")}
    strategy, factor = parse_variant(variant)
    for seed in seeds:
        splits = {}
        for split in ("validation", "test"):
            entries = {
                base: summary["models"][model_name(base, seed, seeds)] for base in ("dense", "attended", "control")
            }
            # metrics.json keeps a model's validation report at its top and the test one under "test"
            rows = {base: (e if split == "validation" else e["test"])["per_image"] for base, e in entries.items()}
            splits[split] = {
                "image_ids": [r["image_id"] for r in rows["dense"]],
                **{base: [round(r["dice"], 5) for r in per_image] for base, per_image in rows.items()},
                "focus": (focus[split] or {}).get("images", []),
            }
        record = {
            "variant": variant,
            "strategy": strategy,
            "factor": factor,
            "seed": seed,
            "seconds_all_seeds": round(seconds),
            "precision": summary.get("precision"),
            "splits": splits,
        }
        result_path(results, seed, variant).write_text(json.dumps(record, separators=(",", ":")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="a dataset folder; default: generated with planted truth"
    )
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["oversample", "group_balance", "jtt"])
    parser.add_argument("--select-on", choices=["focus", "overall"], default="focus")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("runs/remedy-sweep"))
    parser.add_argument(
        "--results", type=Path, default=None, help="write per-seed results here; skip the variants already there"
    )
    args = parser.parse_args()
    data = args.data or planted_dataset(args.out / "data", n=args.images, size=args.size, seed=args.data_seed)
    truth = read_truth(data)
    planted = bool(truth)
    lead: Path | None = None
    variants = []
    for variant in args.strategies:
        if args.results and all(result_path(args.results, seed, variant).is_file() for seed in args.seeds):
            print(f"{variant}: its results are in {args.results}; skipped", flush=True)
            continue
        run_dir = args.out / variant
        run = Run(data, spec_for(args, variant), run_dir, device="cpu")
        if lead is not None and not run.job.folder.finished("score"):
            run.job.folder.reuse(lead)  # the dense, label-check and score units, as a sweep shares them
        started = time.perf_counter()
        run.run()
        seconds = time.perf_counter() - started
        print(f"{variant}: {seconds:.0f} s", flush=True)
        lead = lead or run_dir
        summary = json.loads((run_dir / "metrics.json").read_text())
        if args.results:
            write_results(args.results, variant, args.seeds, summary, seconds)
        variants.append(
            {
                "job_id": variant,
                "overrides": {"attention.strategy": variant},
                "state": "submitted",
                "status": "succeeded",
                "summary": summary,
                **({"pale": pale_report(run_dir, truth, args.seeds)} if planted else {}),
            }
        )
    if len(variants) < len(args.strategies):
        print("some variants were skipped: bench/remedy_study.py reports over the results", flush=True)
        return
    chosen = select(variants, args.select_on)
    report = {
        "selection": chosen,
        "variants": {
            v["job_id"]: {
                "validation_focus_attended_minus_control": (
                    (v["summary"].get("validation_endpoint") or {}).get("attended_vs_control") or {}
                ).get("difference"),
                "test_focus": (v["summary"].get("attended_vs_control") or {}).get("focus"),
                "precision": v["summary"].get("precision"),
                **({"pale": v["pale"]} if planted else {}),
            }
            for v in variants
        },
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(
        "\n| strategy | VALIDATION focus: attended - control | TEST focus: attended - control [95%] | "
        + ("pale test attended - control, per seed |" if planted else "")
        + "\n|---|---|---|"
        + ("---|" if planted else "")
    )
    for name, v in report["variants"].items():
        focus = v["test_focus"] or {}
        ci = focus.get("ci95") or [None, None]
        pale = ", ".join(f"{x:+.3f}" for x in v["pale"]["attended_minus_control"]) if planted else ""
        val = v["validation_focus_attended_minus_control"]
        print(
            f"| {name} | {'n/a' if val is None else f'{val:+.4f}'} | {focus.get('difference', float('nan')):+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] | "
            + (f"{pale} |" if planted else "")
        )
    print(f"\nselection: {chosen['sentence']}")


if __name__ == "__main__":
    main()
