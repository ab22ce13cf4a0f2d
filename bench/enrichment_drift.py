"""Which groups does the HTL set over-represent, and what moves them? Runs each spec given up to its
score unit (dense models, label check, pruning, ranking: no attention) and prints the most enriched
significant groups of each, side by side.

    .venv/bin/python bench/enrichment_drift.py ../shared/data/ham10000 --out runs/enrichment-drift \\
        --spec who-is-weak=examples/ham10000-who-is-weak.json --spec triage=SPEC.json

Each spec's run folder is kept under --out: a rerun resumes it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from contract.jobspec import JobSpec
from ml.pipeline import Run


def top_groups(run_dir: Path, count: int) -> list[dict]:
    groups = json.loads((run_dir / "state" / "enrichment.json").read_text())["groups"]
    kept = [g for g in groups if g.get("significant") and (g.get("enrichment") or 0) > 1]
    return sorted(kept, key=lambda g: -g["enrichment"])[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--spec", action="append", required=True, metavar="NAME=FILE", help="a spec to run, named")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/enrichment-drift"))
    args = parser.parse_args()
    report = {}
    for item in args.spec:
        name, _, file = item.partition("=")
        spec = JobSpec.model_validate(json.loads(Path(file).read_text()))
        started = time.perf_counter()
        run = Run(args.data, spec, args.out / name, device="cpu")
        run.run(until="score")
        rows = top_groups(args.out / name, args.top)
        report[name] = {
            "train_images": len(run.job.train_idx),
            "htl": int(json.loads((args.out / name / "state" / "enrichment.json").read_text())["htl"]),
            "precision": run.job.precision,
            "seconds": round(time.perf_counter() - started),
            "groups": [{k: g[k] for k in ("attribute", "value", "n", "htl", "enrichment", "p_adjusted")} for g in rows],
        }
        print(
            f"\n{name} ({report[name]['train_images']} training images, {report[name]['htl']} HTL, "
            f"{run.job.precision}, {report[name]['seconds']} s)",
            flush=True,
        )
        for g in rows:
            print(
                f"  {g['attribute']}={g['value']}: {g['enrichment']:.2f}x ({g['htl']} of {g['n']}; "
                f"adjusted p {g['p_adjusted']:.2g})",
                flush=True,
            )
    (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
