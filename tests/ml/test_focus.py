"""ml.focus: the pre-registered endpoint, its interval and its verdict."""

import numpy as np
import pytest
from scipy import stats

from ml import focus


def test_the_interval_carries_the_seed_variance_with_t_over_seeds():
    # every image moves alike within a seed: all the uncertainty is between seeds
    a = np.array([[0.9] * 50, [0.8] * 50, [0.85] * 50])
    b = np.full((3, 50), 0.8)
    out = focus.paired_difference(a, b, clusters=None)
    per_seed = np.array([0.1, 0.0, 0.05])
    se = per_seed.std(ddof=1) / np.sqrt(3)
    assert out["difference"] == pytest.approx(0.05) and out["se_images"] == pytest.approx(0.0)
    half = stats.t(2).ppf(0.975) * se
    assert out["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert out["p_one_sided"] == pytest.approx(stats.t(2).sf(0.05 / se))
    # three seeds that agree this little leave the difference unproven, however many images agree
    assert out["ci95"][0] < 0 < out["p_one_sided"] - 0.05


def test_with_one_seed_the_images_carry_the_interval_and_clusters_count_once():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.02, 0.1, 400)
    out = focus.paired_difference(diff[None] + 0.5, np.full((1, 400), 0.5), clusters=None, resamples=4000)
    assert out["se_images"] == pytest.approx(0.1 / np.sqrt(400), rel=0.15) and out["se_seeds"] == 0.0
    # the same 400 values as 40 clusters of 10 identical images: the interval widens by about sqrt(10)
    grouped = np.repeat(diff[:40], 10)
    clustered = focus.paired_difference(
        grouped[None] + 0.5, np.full((1, 400), 0.5), clusters=[str(i // 10) for i in range(400)], resamples=4000
    )
    assert clustered["clusters"] == 40 and clustered["se_images"] == pytest.approx(0.1 / np.sqrt(40), rel=0.25)


def test_the_focus_set_is_the_enriched_groups_and_the_most_disputed_images():
    groups = {"site": ["rare", "common", "common", "rare", "common", "common", "common", "common", "common", "common"]}
    disagreement = np.array([0.0, 0.9, 0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    chosen, why = focus.focus_positions(groups, [("site", "rare")], disagreement, top_fraction=0.2)
    assert chosen.tolist() == [0, 1, 3, 4] and why["in_enriched_groups"] == 2 and why["most_disputed"] == 2
    # a flagged mask leaves the set, and every count says so
    kept, why = focus.focus_positions(
        groups, [("site", "rare")], disagreement, top_fraction=0.2, leave_out=np.arange(10) == 1
    )
    assert 1 not in kept.tolist() and why["excluded_label_issues"] == 1
    assert why["in_enriched_groups"] + why["most_disputed"] - why["both"] == len(kept)


def test_the_verdict_says_beat_only_when_the_one_sided_test_says_so():
    where = {"n": 40, "split": "test", "in_enriched_groups": 30, "enriched_groups": ["dx=bcc"], "most_disputed": 12}
    win = {"difference": 0.03, "ci95": [0.01, 0.05], "p_one_sided": 0.004, "seeds": 3}
    tie = {"difference": 0.01, "ci95": [-0.02, 0.04], "p_one_sided": 0.2, "seeds": 3}
    assert "attention beat the random control: +0.0300" in focus.verdict(where, win, tie)
    assert "attention did not beat the random control" in focus.verdict(where, tie, win)
    assert "no random control was trained" in focus.verdict(where, None, win)


def test_the_verdict_counts_in_words_that_agree():
    where = {"n": 1, "split": "test", "in_enriched_groups": 0, "enriched_groups": [], "most_disputed": 1}
    one_seed = {"difference": 0.01, "ci95": [-0.02, 0.04], "p_one_sided": 0.2, "seeds": 1}
    said = focus.verdict(where, one_seed, one_seed)
    assert "(1 test image: none in the groups the HTL set over-represents and the one image the pruned models" in said
    assert "p = 0.2, 1 seed " in said
    flagged = focus.verdict({**where, "n": 3, "most_disputed": 3, "excluded_label_issues": 2}, one_seed, one_seed)
    assert (
        "(3 test images: none in the groups the HTL set over-represents and the 3 the pruned models disagree on most, less 2 flagged masks)"
        in flagged
    )


def test_worst_decile_is_each_seeds_worst_tenth():
    dice = np.array([np.linspace(0, 1, 20), np.linspace(0.5, 1, 20)])
    assert focus.worst_decile(dice) == pytest.approx(
        np.mean([np.linspace(0, 1, 20)[:2].mean(), np.linspace(0.5, 1, 20)[:2].mean()])
    )
