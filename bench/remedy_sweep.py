"""Which remedy, chosen on validation? One run per attention.strategy on the same dense models (re-used,
as a sweep shares them), each beside its own random control; the sweep's selection rule
(app.services.selection, the one GET /v1/sweeps answers) picks a variant on the validation focus set,
and the chosen variant is reported on test, on the planted rare look (look=pale, read from truth.csv
for this report only) and on the focus set.

    .venv/bin/python bench/remedy_sweep.py --images 1200 --size 64 --epochs 6 --seeds 0 1 2 \\
        --strategies oversample group_balance jtt --out runs/remedy-sweep

Resumable: each variant's run folder keeps what it trained; a rerun into the same --out trains only
what is missing. On real data (--data), the rare-look report is left out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from app.services.selection import select
from contract.jobspec import JobSpec
from ml.pipeline import Run
from ml.synthetic import planted_dataset, read_truth


def spec_for(args, strategy: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "image_size": args.size,
            "model": {"arch": "unet", "width": 16},
            "sample": {"max_images": args.images, "seed": 0},
            "split": {"group_column": "lesion_id", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
            "train": {"epochs": args.epochs, "seeds": args.seeds, "precision": args.precision},
            "attention": {"strategy": strategy, "control": "random"},
        }
    )


def pale_report(run_dir: Path, truth: dict[str, dict], seeds: list[int]) -> dict:
    """Per seed, test Dice on the rare look of dense, attended and control, and attended - control."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    name = (lambda base, s: f"{base}-s{s}") if len(seeds) > 1 else (lambda base, s: base)

    def on_pale(base: str, seed: int) -> float:
        rows = metrics["models"][name(base, seed)]["test"]["per_image"]
        return float(np.mean([r["dice"] for r in rows if truth[r["image_id"]]["look"] == "pale"]))

    dice = {base: [on_pale(base, s) for s in seeds] for base in ("dense", "attended", "control")}
    return {**dice, "attended_minus_control": [a - c for a, c in zip(dice["attended"], dice["control"])]}


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
    args = parser.parse_args()
    data = args.data or planted_dataset(args.out / "data", n=args.images, size=args.size, seed=args.data_seed)
    truth = read_truth(data)
    planted = bool(truth)
    lead: Path | None = None
    variants = []
    for strategy in args.strategies:
        run_dir = args.out / strategy
        run = Run(data, spec_for(args, strategy), run_dir, device="cpu")
        if lead is not None and not run.job.folder.finished("score"):
            run.job.folder.reuse(lead)  # the dense, label-check and score units, as a sweep shares them
        started = time.perf_counter()
        run.run()
        print(f"{strategy}: {time.perf_counter() - started:.0f} s", flush=True)
        lead = lead or run_dir
        summary = json.loads((run_dir / "metrics.json").read_text())
        variants.append(
            {
                "job_id": strategy,
                "overrides": {"attention.strategy": strategy},
                "state": "submitted",
                "status": "succeeded",
                "summary": summary,
                **({"pale": pale_report(run_dir, truth, args.seeds)} if planted else {}),
            }
        )
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
