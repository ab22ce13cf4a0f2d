"""The remedy study over seeds: reads the per-seed results that bench/remedy_sweep.py --results wrote
(one file per seed and variant, committed as they come), and reports every variant against its own
random control and against dense, on the validation and test focus sets and over all test images,
with intervals that carry the seed variance (ml.focus.paired_difference, clusters from the dataset's
split.group_column). The variant is chosen on validation by the sweep's own rule
(app.services.selection: attended - control on the validation focus set); test is read only to
report it.

    .venv/bin/python bench/remedy_study.py --data ../shared/data/ham10000 \\
        --results bench/results/remedy-ham-full --out bench/results/remedy-ham-full.json

Every seed runs as its own job, so each has its own focus set (the held-out images in the groups its
HTL set over-represents or that its pruned models disagree on most, less its flagged masks; no
held-out label read). The study's focus set is the images in the focus set of at least half the
seeds: still fixed before any held-out label is read. Only the seeds every variant has are used, so
the variants are compared on the same dense models."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from app.services.selection import select
from ml.focus import paired_difference

BASES = ("dense", "attended", "control")


def load(results: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: record}}."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(results.glob("s*-*.json")):
        record = json.loads(path.read_text())
        out.setdefault(record["variant"], {})[record["seed"]] = record
    return out


def clusters_of(data: Path, column: str) -> dict[str, str]:
    with open(data / "metadata.csv", newline="") as f:
        return {row["image_id"]: row[column] for row in csv.DictReader(f)}


def study_focus(records: list[dict], split: str) -> list[str]:
    """The images in the focus set of at least half the seeds (each seed's own, label-blind)."""
    counts: dict[str, int] = {}
    for record in records:
        for image_id in record["splits"][split]["focus"]:
            counts[image_id] = counts.get(image_id, 0) + 1
    return sorted(i for i, c in counts.items() if 2 * c >= len(records))


def arrays(records: list[dict], split: str, ids: list[str]) -> dict[str, np.ndarray]:
    """(seeds, images) per base model, on the images ids names, in that order."""
    out = {}
    for base in BASES:
        rows = []
        for record in records:
            block = record["splits"][split]
            at = {image_id: j for j, image_id in enumerate(block["image_ids"])}
            rows.append([block[base][at[i]] for i in ids])
        out[base] = np.asarray(rows, dtype=np.float64)
    return out


def compare(records: list[dict], split: str, ids: list[str], clusters: dict[str, str]) -> dict:
    dice = arrays(records, split, ids)
    cl = [clusters[i] for i in ids]
    return {
        "n": len(ids),
        "mean_dice": {base: float(values.mean()) for base, values in dice.items()},
        "attended_vs_control": paired_difference(dice["attended"], dice["control"], clusters=cl),
        "attended_vs_dense": paired_difference(dice["attended"], dice["dense"], clusters=cl),
    }


def sentence(name: str, test_focus: dict) -> str:
    vc, vd = test_focus["attended_vs_control"], test_focus["attended_vs_dense"]
    beat = vc["p_one_sided"] < 0.05 and vc["difference"] > 0
    return (
        f"On the study's test focus set ({test_focus['n']} images), {name} {'beat' if beat else 'did not beat'} its "
        f"random control: {vc['difference']:+.4f} Dice [95%: {vc['ci95'][0]:+.4f}, {vc['ci95'][1]:+.4f}], one-sided "
        f"p = {vc['p_one_sided']:.3g}, {vc['seeds']} seeds; attended - dense {vd['difference']:+.4f} "
        f"[{vd['ci95'][0]:+.4f}, {vd['ci95'][1]:+.4f}]."
    )


def variant_report(name: str, records: list[dict], focus: dict[str, list[str]], clusters: dict[str, str]) -> dict:
    validation = compare(records, "validation", focus["validation"], clusters)
    test_focus = compare(records, "test", focus["test"], clusters)
    test_all = compare(records, "test", records[0]["splits"]["test"]["image_ids"], clusters)
    return {
        "seeds": [r["seed"] for r in records],
        "validation_focus": validation,
        "test_focus": test_focus,
        "test_all": test_all,
        "sentence": sentence(name, test_focus),
        "hours_per_seed": round(float(np.mean([r["seconds_all_seeds"] for r in records])) / 3600, 2),
    }


def as_summary(report: dict) -> dict:
    """The shape app.services.selection reads of a job's metrics, so the study chooses by the sweep's rule."""

    def block(key: str) -> dict:
        overall = report["test_all"][key]
        return {
            "focus": report["test_focus"][key],
            "test": {"overall": {"dice": overall["difference"]}, "overall_ci95": {"dice": overall["ci95"]}},
        }

    return {
        "splits": ["train", "validation", "test"],
        "validation_endpoint": {
            key: report["validation_focus"][key] for key in ("attended_vs_control", "attended_vs_dense")
        },
        "attended_vs_control": block("attended_vs_control"),
        "attended_vs_dense": block("attended_vs_dense"),
        "verdict": report["sentence"],
    }


def table(reports: dict[str, dict], chosen: str | None) -> str:
    lines = [
        "| variant | VALIDATION focus: attended - control | TEST focus: attended - control [95%], p | per seed "
        "| TEST focus: attended - dense [95%] | TEST all: attended - dense [95%] |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(c: dict) -> str:
        return f"{c['difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"

    for name, r in reports.items():
        vc = r["test_focus"]["attended_vs_control"]
        bold = "**" if name == chosen else ""
        lines.append(
            f"| {bold}{name}{bold} | {r['validation_focus']['attended_vs_control']['difference']:+.4f} | {fmt(vc)}, "
            f"p {vc['p_one_sided']:.3g} | {', '.join(f'{x:+.3f}' for x in vc['per_seed'])} | "
            f"{fmt(r['test_focus']['attended_vs_dense'])} | {fmt(r['test_all']['attended_vs_dense'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder the study ran on")
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--group-column", default="lesion_id")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    found = load(args.results)
    if not found:
        raise SystemExit(f"no results in {args.results}")
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in found.values())))
    if not seeds:
        raise SystemExit("no seed has every variant yet: " + ", ".join(f"{v}: {sorted(s)}" for v, s in found.items()))
    clusters = clusters_of(args.data, args.group_column)
    lead = found[next(iter(found))]  # each seed's focus set is shared by its variants (one dense, one HTL set)
    focus = {split: study_focus([lead[s] for s in seeds], split) for split in ("validation", "test")}
    reports = {v: variant_report(v, [found[v][s] for s in seeds], focus, clusters) for v in found}
    variants = [
        {"job_id": v, "overrides": {"attention.strategy": v}, "status": "succeeded", "summary": as_summary(r)}
        for v, r in reports.items()
    ]
    chosen = select(variants, "focus")
    out = {
        "seeds": seeds,
        "focus_sizes": {k: len(v) for k, v in focus.items()},
        "selection": chosen,
        "variants": reports,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(f"seeds {seeds}; focus sets: {out['focus_sizes']}\n")
    print(table(reports, chosen["job_id"]))
    print(f"\nselection: {chosen['sentence']}")


if __name__ == "__main__":
    main()
