"""Does attending the HTL images beat attending random ones? One run of the whole pipeline with a
random control (attention.control 'random') and a held-out test split, over several seeds, then a
report on the test images: dense vs HTL-attended vs random-control, overall (t-interval over seeds)
and for the groups most enriched among the HTL images (paired bootstrap over seeds and lesions,
Benjamini-Hochberg across subgroups), and the dense models' validation curves.

    .venv/bin/python bench/control_study.py --spec examples/ham10000-controlled.json --out runs/control-study
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contract.jobspec import JobSpec
from ml.pipeline import Run

REPO = Path(__file__).resolve().parents[1]


def fmt_ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and ci[0] is not None else "(nothing to resample: no interval)"


def report(out: Path, top_groups: int) -> str:
    metrics = json.loads((out / "metrics.json").read_text())
    groups = json.loads((out / "subgroups.json").read_text())
    lines = [
        f"seeds {metrics['seeds']}; split by {metrics['group_column']}; validation {metrics['validation_images']} "
        f"and test {metrics['test_images']} images; attention: top {metrics['attention']['size']} by {metrics['attention']['scorer']}"
    ]
    lines.append("dense validation Dice per epoch:")
    for name, curve in metrics["validation_curve"].items():
        lines.append(f"  {name}: " + " ".join(f"{d:.3f}" for d in curve))
    lines.append(
        f"pruning: ranked by sparsities {metrics['ranked_by_sparsities']}, degenerate {metrics['degenerate_sparsities']}"
    )
    for split in metrics["splits"]:
        lines.append(f"{split}: Dice, mean over seeds (95% t-interval)")
        for base in ("dense", "attended", "control"):
            entry = metrics["models"][base] if split == "validation" else metrics["models"][base]["test"]
            ci = entry.get("overall_ci95", {}).get("dice")
            lines.append(f"  {base:<9}{entry['overall']['dice']:.4f} {fmt_ci(ci)}")
        for key in ("attended_vs_dense", "attended_vs_control", "control_vs_dense"):
            cmp = metrics[key] if split == "validation" else metrics[key]["test"]
            per_seed = " ".join(f"{p['dice']:+.4f}" for p in cmp["per_seed"])
            lines.append(
                f"  {key:<20}{cmp['overall']['dice']:+.4f} {fmt_ci(cmp['overall_ci95']['dice'])}  per seed: {per_seed}"
            )
    enriched = sorted(
        (g for g in groups["enrichment"]["groups"] if g["significant"] and (g["enrichment"] or 0) > 1),
        key=lambda g: -g["enrichment"],
    )[:top_groups]
    lines.append(
        f"most enriched HTL groups (Fisher, BH) and their gap on test ({groups['gap_closing']['test']['method']}):"
    )
    test_rows = {(r["attribute"], r["value"]): r for r in groups["gap_closing"]["test"]["subgroups"]}
    for g in enriched:
        r = test_rows.get((g["attribute"], g["value"]))
        if r is None:
            lines.append(f"  {g['attribute']}={g['value']}: enrichment {g['enrichment']:.2f}x; no test images")
            continue
        avc = r["attended_vs_control"]
        lines.append(
            f"  {g['attribute']}={g['value']}: enrichment {g['enrichment']:.2f}x (p_adj {g['p_adjusted']:.1e}); test n={r['n']} "
            f"in {r['clusters']} lesions: dense {r['dense_dice']:.3f}, attended {r['attended_dice']:.3f}, control {r['control_dice']:.3f}; "
            f"attended-dense {r['difference']:+.4f} {fmt_ci(r['difference_ci95'])} p_adj {r['p_adjusted']:.2f}; "
            f"attended-control {avc['difference']:+.4f} {fmt_ci(avc['difference_ci95'])} p_adj {avc['p_adjusted']:.2f}"
        )
    overall = groups["gap_closing"]["test"]["overall"]
    lines.append(
        f"  overall (bootstrap): attended-dense {overall['difference']:+.4f} {fmt_ci(overall['difference_ci95'])}; "
        f"attended-control {overall['attended_vs_control']['difference']:+.4f} {fmt_ci(overall['attended_vs_control']['difference_ci95'])}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ham10000"))
    parser.add_argument("--spec", default=str(REPO / "examples" / "ham10000-controlled.json"))
    parser.add_argument("--out", default="runs/control-study")
    parser.add_argument("--device", default=None)
    parser.add_argument("--top-groups", type=int, default=8)
    args = parser.parse_args()
    spec = JobSpec.model_validate(json.loads(Path(args.spec).read_text()))
    out = Path(args.out)
    Run(args.data, spec, out, device=args.device).run()
    text = report(out, args.top_groups)
    (out / "report.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
