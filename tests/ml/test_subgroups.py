import numpy as np
import pytest

from ml.subgroups import benjamini_hochberg, enrichment, gap_closing, wilson_interval


def test_benjamini_hochberg_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.0533, 0.0533, 0.2
    assert benjamini_hochberg(p) == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(30, 100)
    assert lo < 0.3 < hi and hi - lo < 0.2
    assert wilson_interval(0, 10)[0] == 0.0


def test_enrichment_flags_the_value_tied_to_hardness_and_not_an_independent_one():
    rng = np.random.default_rng(0)
    n = 400
    site = np.where(rng.random(n) < 0.1, "rare", "common")
    sex = rng.choice(["female", "male"], n)
    hardness = rng.random(n) + 2.0 * (site == "rare")
    is_htl = np.zeros(n, dtype=bool)
    is_htl[np.argsort(-hardness)[:40]] = True
    result = enrichment({"site": site.tolist(), "sex": sex.tolist()}, is_htl)
    rows = {(r["attribute"], r["value"]): r for r in result["groups"]}
    rare = rows[("site", "rare")]
    assert rare["significant"] and rare["p_adjusted"] < 1e-6 and rare["enrichment"] > 5
    assert rare["enrichment_ci95"][0] > 3
    assert not rows[("sex", "female")]["significant"] and not rows[("sex", "male")]["significant"]
    assert result["htl_rate"] == 0.1 and sum(r["n"] for r in result["groups"] if r["attribute"] == "sex") == n


def test_gap_closing_interval_excludes_zero_only_for_a_group_that_gained():
    rng = np.random.default_rng(1)
    dense = rng.uniform(0.6, 0.9, 60)
    group = ["a"] * 30 + ["b"] * 30
    attended = dense + np.r_[rng.normal(0.1, 0.02, 30), rng.normal(0.0, 0.02, 30)]
    out = gap_closing(dense, attended, {"g": group}, resamples=500, seed=0)
    a, b = out["subgroups"]
    assert a["value"] == "a" and a["difference_ci95"][0] > 0.05
    assert b["difference_ci95"][0] < 0 < b["difference_ci95"][1]
    assert out["overall"]["n"] == 60
