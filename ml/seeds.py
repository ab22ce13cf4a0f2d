"""Results over several training seeds: means with 95% t-intervals, and attended minus dense."""

from __future__ import annotations

import numpy as np
from scipy.stats import t


def t_interval(values: list[float]) -> list[float] | None:
    """95% t-interval of the mean over seeds; None for a single value."""
    if len(values) < 2:
        return None
    mean, sem = float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))
    half = float(t.ppf(0.975, len(values) - 1)) * sem
    return [mean - half, mean + half]


def over_seeds(entries: list[dict]) -> dict:
    """One model trained with several seeds: means over the seeds, with a 95% t-interval overall."""
    first = entries[0]
    overall = {m: float(np.mean([e["overall"][m] for e in entries])) for m in first["overall"]}
    return {
        "n": first["n"],
        "seeds": len(entries),
        "overall": overall,
        "overall_ci95": {m: t_interval([e["overall"][m] for e in entries]) for m in first["overall"]},
        "subgroups": {
            attr: {
                label: {
                    "n": stats["n"],
                    **{m: float(np.mean([e["subgroups"][attr][label][m] for e in entries])) for m in stats if m != "n"},
                }
                for label, stats in groups.items()
            }
            for attr, groups in first["subgroups"].items()
        },
    }


def compare_over_seeds(dense: list[dict], attended: list[dict]) -> dict:
    """Attended minus dense, overall (per seed, mean, 95% interval over seeds) and per subgroup (mean
    over seeds). With one seed there is no interval, and the output says so."""

    def delta(a: dict, b: dict) -> dict:
        return {m: b[m] - a[m] for m in a if m != "n"}

    per_seed = [delta(d["overall"], a["overall"]) for d, a in zip(dense, attended)]
    out = {
        "overall": {m: float(np.mean([p[m] for p in per_seed])) for m in per_seed[0]},
        "overall_ci95": {m: t_interval([p[m] for p in per_seed]) for m in per_seed[0]},
        "per_seed": per_seed,
        "single_seed": len(per_seed) == 1,
        "subgroups": {
            attr: {
                label: {
                    "n": stats["n"],
                    **{
                        m: float(
                            np.mean(
                                [
                                    delta(d["subgroups"][attr][label], a["subgroups"][attr][label])[m]
                                    for d, a in zip(dense, attended)
                                ]
                            )
                        )
                        for m in stats
                        if m != "n"
                    },
                }
                for label, stats in groups.items()
            }
            for attr, groups in dense[0]["subgroups"].items()
        },
    }
    if out["single_seed"]:
        out["note"] = "one seed: a difference here is not evidence of an improvement; set train.seeds for an interval"
    return out
