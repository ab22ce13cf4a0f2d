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


def test_enrichment_reports_clusters_only_when_given():
    is_htl = np.array([True, False, True, False, False, True])
    groups = {"site": ["a", "a", "b", "b", "a", "b"]}
    plain = enrichment(groups, is_htl)
    assert "clusters" not in plain and "optimistic" not in plain["method"]
    clustered = enrichment(groups, is_htl, clusters=["L1", "L1", "L2", "", "", "L2"], cluster_name="lesion_id")
    assert clustered["clusters"] == 4  # L1, L2 and two images with no key
    assert "6 images fall in 4 clusters (lesion_id)" in clustered["method"]
    assert clustered["groups"] == plain["groups"]


def test_gap_closing_interval_excludes_zero_only_for_a_group_that_gained():
    rng = np.random.default_rng(1)
    dense = rng.uniform(0.6, 0.9, 60)
    group = ["a"] * 30 + ["b"] * 30
    attended = dense + np.r_[rng.normal(0.1, 0.02, 30), rng.normal(0.0, 0.02, 30)]
    out = gap_closing(dense, attended, {"g": group}, resamples=500, seed=0)
    a, b = out["subgroups"]
    assert a["value"] == "a" and a["difference_ci95"][0] > 0.05
    assert b["difference_ci95"][0] < 0 < b["difference_ci95"][1]
    assert out["overall"]["n"] == 60 and out["overall"]["clusters"] == 60 and out["seeds"] == 1
    assert a["dense_dice"] == pytest.approx(dense[:30].mean())
    assert a["attended_dice"] == pytest.approx(attended[:30].mean())
    assert a["difference"] == pytest.approx((attended - dense)[:30].mean())
    assert "control_dice" not in a and "attended_vs_control" not in a
    assert "images" in out["method"] and "500 resamples" in out["method"]
    # a (1, n) array is the same single seed as a 1-D array
    again = gap_closing(dense[None], attended[None], {"g": group}, resamples=500, seed=0)
    assert again["subgroups"] == out["subgroups"]


def test_gap_closing_seed_variance_widens_the_interval():
    rng = np.random.default_rng(2)
    n = 200
    dense = np.tile(rng.uniform(0.6, 0.9, n), (3, 1))
    attended = dense + np.array([0.10, -0.10, 0.0])[:, None] + rng.normal(0, 0.01, (3, n))
    groups = {"g": ["x"] * n}
    seeds = gap_closing(dense, attended, groups, resamples=1000, seed=0)
    pooled = gap_closing(dense.mean(axis=0), attended.mean(axis=0), groups, resamples=1000, seed=0)
    assert seeds["seeds"] == 3 and pooled["seeds"] == 1
    assert seeds["overall"]["difference"] == pytest.approx(pooled["overall"]["difference"])
    lo, hi = seeds["overall"]["difference_ci95"]
    plo, phi = pooled["overall"]["difference_ci95"]
    assert lo < 0 < hi
    assert hi - lo > 5 * (phi - plo)
    assert "3 training seeds" in seeds["method"]


def test_gap_closing_clustering_widens_the_interval():
    rng = np.random.default_rng(3)
    per_cluster = rng.normal(0.05, 0.05, 20)
    diff = np.repeat(per_cluster, 10)
    dense = np.full(200, 0.7)
    attended = dense + diff
    clusters = [f"lesion{i // 10}" for i in range(200)]
    clustered = gap_closing(dense, attended, {}, clusters=clusters, resamples=1000, seed=0, cluster_name="lesion_id")
    independent = gap_closing(dense, attended, {}, resamples=1000, seed=0)
    assert clustered["overall"]["clusters"] == 20 and independent["overall"]["clusters"] == 200
    lo, hi = clustered["overall"]["difference_ci95"]
    ilo, ihi = independent["overall"]["difference_ci95"]
    assert hi - lo > 2 * (ihi - ilo)
    assert clustered["subgroups"] == [] and "lesion_id" in clustered["method"]
    # an empty key leaves the image its own cluster
    keys = clusters[:100] + [""] * 100
    assert gap_closing(dense, attended, {}, clusters=keys, resamples=10)["overall"]["clusters"] == 10 + 100


def test_gap_closing_weights_clusters_by_size():
    # one big cluster with difference 1 and one single-image cluster with difference 0: the cluster
    # bootstrap mean of each replicate is 0, 1 or 10/11, never the unweighted 1/2
    dense = np.zeros(11)
    attended = np.r_[np.ones(10), 0.0]
    out = gap_closing(dense, attended, {}, clusters=["big"] * 10 + ["small"], resamples=400, seed=0)
    assert out["overall"]["difference"] == pytest.approx(10 / 11)
    lo, hi = out["overall"]["difference_ci95"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)


def test_gap_closing_benjamini_hochberg_across_subgroups():
    rng = np.random.default_rng(4)
    n = 240
    dense = rng.uniform(0.6, 0.9, (2, n))
    site = np.array(["gain", "null1", "null2", "null3"]).repeat(n // 4)
    sex = rng.choice(["female", "male"], n)
    gain = np.where(site == "gain", 0.08, 0.0)
    attended = dense + gain + rng.normal(0, 0.05, (2, n))
    out = gap_closing(dense, attended, {"site": site.tolist(), "sex": sex.tolist()}, resamples=2000, seed=0)
    rows = {(r["attribute"], r["value"]): r for r in out["subgroups"]}
    assert len(rows) == 6
    for row in out["subgroups"]:
        assert 0 < row["p_value"] <= row["p_adjusted"] <= 1
        assert row["significant"] == (row["p_adjusted"] < 0.05)
    assert rows[("site", "gain")]["significant"] and rows[("site", "gain")]["difference_ci95"][0] > 0
    for null in ("null1", "null2", "null3"):
        assert not rows[("site", null)]["significant"]
    assert "p_adjusted" not in out["overall"] and out["overall"]["p_value"] < 0.05
    expected = benjamini_hochberg([r["p_value"] for r in out["subgroups"]])
    assert [r["p_adjusted"] for r in out["subgroups"]] == pytest.approx(expected)


def test_gap_closing_with_a_random_control():
    rng = np.random.default_rng(5)
    n = 120
    group = np.array(["hard", "easy"]).repeat(n // 2)
    dense = rng.uniform(0.5, 0.8, (2, n))
    hard = group == "hard"
    control = dense + rng.normal(0, 0.01, (2, n))
    attended = dense + np.where(hard, 0.1, 0.0) + rng.normal(0, 0.01, (2, n))
    out = gap_closing(dense, attended, {"g": group.tolist()}, control=control, resamples=1000, seed=0)
    rows = {r["value"]: r for r in out["subgroups"]}
    h, e = rows["hard"], rows["easy"]
    assert h["control_dice"] == pytest.approx(control[:, hard].mean())
    avc, cvd = h["attended_vs_control"], h["control_vs_dense"]
    assert avc["difference"] == pytest.approx((attended - control)[:, hard].mean())
    assert avc["difference"] > 0.08 and avc["difference_ci95"][0] > 0.05 and avc["significant"]
    assert cvd["difference_ci95"][0] < 0 < cvd["difference_ci95"][1] and not cvd["significant"]
    assert e["attended_vs_control"]["difference_ci95"][0] < 0 < e["attended_vs_control"]["difference_ci95"][1]
    for row in out["subgroups"]:
        for key in ("attended_vs_control", "control_vs_dense"):
            assert row[key]["p_adjusted"] >= row[key]["p_value"]
            assert row[key]["significant"] == (row[key]["p_adjusted"] < 0.05)
    assert set(out["overall"]["attended_vs_control"]) == {"difference", "difference_ci95", "p_value"}
    assert "control" in out["method"]


def test_gap_closing_claims_nothing_for_a_single_image_under_one_seed():
    dense = np.array([0.5, 0.5, 0.5, 0.5, 0.2])
    attended = np.array([0.6, 0.6, 0.6, 0.6, 0.9])
    result = gap_closing(dense, attended, {"site": ["a", "a", "a", "a", "lone"]}, resamples=500)
    lone = next(g for g in result["subgroups"] if g["value"] == "lone")
    assert lone["difference"] == pytest.approx(0.7)
    assert lone["difference_ci95"] == [None, None] and lone["p_value"] == 1.0 and not lone["significant"]
    many = next(g for g in result["subgroups"] if g["value"] == "a")
    assert many["difference_ci95"][0] is not None
