"""Who is weak: which subgroups the HTL set over-represents (enrichment with an interval and a
corrected p-value), image-derived properties to group by, and whether attention closed each
subgroup's gap (dense vs attended Dice with a bootstrap interval over images)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import fisher_exact, norm

from ml.data import DecodedDataset
from ml.metrics import subgroup_labels

Z95 = float(norm.ppf(0.975))
ALPHA = 0.05
IMAGE_PROPERTIES = ("image:lesion_area", "image:lesion_contrast", "image:brightness")


def image_properties(data: DecodedDataset, indices: list[int], mask_known: np.ndarray | None = None) -> dict[str, list[str]]:
    """Per image, as strings for banding: lesion area fraction, lesion/skin contrast (absolute
    difference of mean grey level inside and outside the mask, 0..1) and mean brightness (0..1).
    Computed on the decoded image and its mask; empty where there is no (usable) mask or no lesion."""
    area, contrast, brightness = [], [], []
    for i in indices:
        image = data.images[i].astype(np.float32).mean(axis=0) / 255.0
        brightness.append(f"{image.mean():.4f}")
        if not data.has_mask[i] or (mask_known is not None and not mask_known[i]):
            area.append("")
            contrast.append("")
            continue
        mask = data.masks[i][0].astype(bool)
        area.append(f"{mask.mean():.4f}")
        if mask.all() or not mask.any():
            contrast.append("")
        else:
            contrast.append(f"{abs(image[mask].mean() - image[~mask].mean()):.4f}")
    return dict(zip(IMAGE_PROPERTIES, (area, contrast, brightness)))


def band_properties(properties: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: subgroup_labels(name, values) for name, values in properties.items()}


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Adjusted p-values controlling the false discovery rate across all tests given."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = running
    return adjusted.tolist()


def enrichment(groups: dict[str, list[str]], is_htl: np.ndarray) -> dict:
    """For each attribute and value: count, HTL count and rate, enrichment = rate / overall rate with
    a 95% interval (Wilson interval of the group's rate over the overall rate, which the HTL rule
    fixes), Fisher's exact two-sided p-value of the group against the rest, and Benjamini-Hochberg
    adjusted p-values across every group of every attribute."""
    is_htl = np.asarray(is_htl, dtype=bool)
    n_all, k_all = len(is_htl), int(is_htl.sum())
    overall = k_all / n_all if n_all else 0.0
    rows = []
    for attribute, labels in groups.items():
        labels = np.asarray(labels)
        for value in sorted(set(labels.tolist())):
            inside = labels == value
            n, k = int(inside.sum()), int(is_htl[inside].sum())
            rest_n, rest_k = n_all - n, k_all - k
            table = [[k, n - k], [rest_k, rest_n - rest_k]]
            p = float(fisher_exact(table, alternative="two-sided").pvalue) if rest_n > 0 else 1.0
            lo, hi = wilson_interval(k, n)
            rows.append({
                "attribute": attribute, "value": value, "n": n, "htl": k, "htl_rate": k / n if n else 0.0,
                "enrichment": (k / n) / overall if n and overall else None,
                "enrichment_ci95": [lo / overall, hi / overall] if overall else None,
                "p_value": p,
            })
    for row, adjusted in zip(rows, benjamini_hochberg([r["p_value"] for r in rows]) if rows else []):
        row["p_adjusted"] = adjusted
        row["significant"] = adjusted < ALPHA
    return {
        "n": n_all, "htl": k_all, "htl_rate": overall,
        "method": "Fisher's exact test (group vs rest, two-sided); Benjamini-Hochberg across all groups; "
                  "enrichment interval: Wilson 95% interval of the group's HTL rate / overall rate",
        "groups": rows,
    }


def gap_closing(
    dense_dice: np.ndarray, attended_dice: np.ndarray, groups: dict[str, list[str]], *,
    resamples: int = 2000, seed: int = 0,
) -> dict:
    """Per subgroup of validation images: mean dense and attended Dice, their paired difference and
    its bootstrap 95% interval (images resampled with replacement within the group)."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(attended_dice) - np.asarray(dense_dice)

    def summarize(mask: np.ndarray) -> dict:
        d = diff[mask]
        n = int(mask.sum())
        boot = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1) if n else np.array([np.nan])
        return {
            "n": n, "dense_dice": float(np.mean(np.asarray(dense_dice)[mask])),
            "attended_dice": float(np.mean(np.asarray(attended_dice)[mask])),
            "difference": float(d.mean()),
            "difference_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        }

    out = {"overall": summarize(np.ones(len(diff), dtype=bool)), "subgroups": []}
    for attribute, labels in groups.items():
        labels = np.asarray(labels)
        for value in sorted(set(labels.tolist())):
            out["subgroups"].append({"attribute": attribute, "value": value, **summarize(labels == value)})
    return out
