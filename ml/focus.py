"""The one pre-registered endpoint of a job: did attention beat the random control where it should
matter?

The focus set is fixed before any held-out label is read: the held-out images (test, else
validation) in the subgroups enriched among the HTL images (adjusted p < 0.05, enrichment > 1), plus
the held-out images the pruned models disagree with the dense model on most (the HTL rule's share of
them; a disagreement reads no label). On it, attended - control (and attended - dense) is one paired
difference per image, averaged over seeds, with an interval that carries both sources of chance:

    se^2 = s_seeds^2 / S + se_images^2
  where s_seeds is the standard deviation over the S seeds of each seed's mean difference (how much
  retraining moves it), and se_images the cluster bootstrap standard error of the seed-averaged
  per-image differences (how much another draw of test lesions would). The 95% interval and the
  one-sided p-value (H1: difference > 0) use Student's t with S - 1 degrees of freedom (normal for one
  seed, which carries no seed variance and says so). A bootstrap that resamples 3 seeds with
  replacement would understate the seed variance (3 seeds give 10 distinct resamples)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ml.subgroups import _cluster_codes, over_represented

ALPHA = 0.05


def focus_positions(
    groups: dict[str, list[str]],
    enriched: list[tuple[str, str]],
    disagreement: np.ndarray,
    top_fraction: float,
    leave_out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Which held-out images (positions into the split's images with a mask) form the focus set, and
    why: in an enriched group, or among the top_fraction the pruned models disagree on most; less
    those in leave_out (the label check's issues), which every count then leaves out too."""
    n = len(disagreement)
    out = np.zeros(n, dtype=bool) if leave_out is None else np.asarray(leave_out, dtype=bool)
    in_group = np.zeros(n, dtype=bool)
    for attribute, value in enriched:
        labels = groups.get(attribute)
        if labels is not None:
            in_group |= np.asarray(labels) == value
    k = max(1, int(round(top_fraction * n))) if n else 0
    order = np.lexsort((np.arange(n), -disagreement))
    disputed = np.zeros(n, dtype=bool)
    disputed[order[:k]] = True
    chosen = in_group | disputed
    left_out = int((chosen & out).sum())
    in_group, disputed, chosen = in_group & ~out, disputed & ~out, chosen & ~out
    return np.flatnonzero(chosen), {
        "enriched_groups": [f"{a}={v}" for a, v in enriched],
        "in_enriched_groups": int(in_group.sum()),
        "most_disputed": int(disputed.sum()),
        "both": int((in_group & disputed).sum()),
        "excluded_label_issues": left_out,
    }


def paired_difference(
    a: np.ndarray, b: np.ndarray, *, clusters: list[str] | None, resamples: int = 2000, seed: int = 0
) -> dict:
    """a - b over images (seeds, images): the mean, its 95% interval and one-sided p-value (see the
    module's docstring)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n_seeds, n = diff.shape
    if n == 0:
        return {"n": 0, "difference": None, "ci95": None, "p_one_sided": None}
    per_seed = diff.mean(axis=1)
    per_image = diff.mean(axis=0)
    codes = _cluster_codes(clusters, n)
    k = int(codes.max()) + 1
    sums = np.bincount(codes, weights=per_image, minlength=k)
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(resamples, k))
    boot = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    se_images = float(boot.std(ddof=1)) if k > 1 else 0.0
    s_seeds = float(per_seed.std(ddof=1)) if n_seeds > 1 else 0.0
    se = float(np.sqrt(s_seeds**2 / n_seeds + se_images**2))
    mean = float(per_seed.mean())
    dist = stats.t(n_seeds - 1) if n_seeds > 1 else stats.norm()
    if se == 0.0:
        ci, p = [mean, mean], (0.0 if mean > 0 else 1.0)
    else:
        half = float(dist.ppf(0.975)) * se
        ci, p = [mean - half, mean + half], float(dist.sf(mean / se))
    return {
        "n": int(n),
        "clusters": k,
        "seeds": int(n_seeds),
        "difference": mean,
        "ci95": ci,
        "p_one_sided": p,
        "per_seed": per_seed.tolist(),
        "se_seeds": s_seeds / np.sqrt(n_seeds),
        "se_images": se_images,
    }


def worst_decile(dice: np.ndarray) -> float:
    """Mean Dice over each seed's worst tenth of the images (at least one), averaged over seeds."""
    dice = np.atleast_2d(np.asarray(dice, dtype=np.float64))
    k = max(1, int(np.ceil(0.1 * dice.shape[1])))
    return float(np.mean([np.sort(row)[:k].mean() for row in dice]))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def verdict(focus: dict, versus_control: dict | None, versus_dense: dict) -> str:
    """One sentence a user can act on."""
    groups = focus["enriched_groups"]
    named = f" ({', '.join(groups[:4])}{'...' if len(groups) > 4 else ''})" if groups else ""
    disputed = focus["most_disputed"]
    images = _count(focus["n"], focus["split"] + " image")
    where = (
        f"On the focus set ({images}: "
        f"{focus['in_enriched_groups'] or 'none'} in the groups the HTL set over-represents{named}"
        f" and {'the one image' if disputed == 1 else f'the {disputed}'} the pruned models disagree on most"
        + (
            f", less {_count(focus['excluded_label_issues'], 'flagged mask')}"
            if focus.get("excluded_label_issues")
            else ""
        )
        + ")"
    )
    if focus["n"] == 0:
        return "There was no focus set (no held-out image with a mask), so nothing says whether attention helped."

    def said(c: dict) -> str:
        return (
            f"{c['difference']:+.4f} Dice [95%: {c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], one-sided p = {c['p_one_sided']:.3g}, "
            f"{_count(c['seeds'], 'seed')}"
        )

    if versus_control is None:
        beat = versus_dense["p_one_sided"] < ALPHA and versus_dense["difference"] > 0
        return (
            f"{where}, the attended model {'beat' if beat else 'did not beat'} the dense model ({said(versus_dense)}); "
            "no random control was trained (attention.control 'none'), so this does not show that the HTL images "
            "were worth more than any others."
        )
    beat = versus_control["p_one_sided"] < ALPHA and versus_control["difference"] > 0
    single = (
        " One seed: the interval carries no seed variance; train more seeds before acting on it."
        if versus_control["seeds"] == 1
        else ""
    )
    return (
        f"{where}, attention {'beat' if beat else 'did not beat'} the random control: {said(versus_control)}"
        f" (attended - dense {versus_dense['difference']:+.4f}).{single}"
    )


def focus_report(
    *,
    split: str,
    image_ids: list[str],
    dice: dict[str, np.ndarray],
    disagreement: np.ndarray,
    groups: dict[str, list[str]],
    enrichment: dict,
    label_issue: np.ndarray,
    clusters: list[str] | None,
    top_fraction: float,
    seed: int,
    cluster_name: str | None,
) -> dict:
    """The focus set of one held-out split and the comparisons on it. dice: per base model ('dense',
    'attended', 'control' when trained), (seeds, images) per-image Dice over the split's images with a
    mask, which image_ids, disagreement (mean over seeds and ranked sparsities), groups, label_issue and
    clusters align with. Images whose mask the label check flagged are left out: on a wrong mask no
    model can be right."""
    kept, why = focus_positions(
        groups, over_represented(enrichment), disagreement, top_fraction, leave_out=np.asarray(label_issue, dtype=bool)
    )
    focus = {
        "split": split,
        "n": int(len(kept)),
        "images": [image_ids[i] for i in kept],
        **why,
        "method": (
            "held-out images in the groups enriched among the HTL images (Benjamini-Hochberg adjusted p < 0.05, "
            f"enrichment > 1) or among the top {top_fraction:g} by the pruned models' disagreement with the dense "
            "model (no label read), less the label check's issues; chosen before any of their labels is read. "
            "Differences: paired per image, mean over seeds; 95% interval and one-sided p from Student's t "
            "(seeds - 1 degrees of freedom) on se^2 = var over seeds / seeds + the cluster-bootstrap variance of "
            f"the seed-averaged differences (clusters: {cluster_name or 'images'})"
        ),
    }
    cl = None if clusters is None else [clusters[i] for i in kept]

    def compare(a: str, b: str) -> dict:
        return {**paired_difference(dice[a][:, kept], dice[b][:, kept], clusters=cl, seed=seed), "split": split}

    versus_dense = compare("attended", "dense")
    versus_control = compare("attended", "control") if "control" in dice else None
    out = {
        "focus": focus,
        "attended_vs_dense": versus_dense,
        "attended_vs_control": versus_control,
        "worst_decile": {
            base: {"all": worst_decile(values), "focus": worst_decile(values[:, kept]) if len(kept) else None}
            for base, values in dice.items()
        },
    }
    out["verdict"] = verdict(focus, versus_control, versus_dense) if len(kept) else verdict(focus, None, versus_dense)
    return out
