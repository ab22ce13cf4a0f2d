"""Per-image localization metrics (the ISIC challenge's conventions: empty vs empty scores 1) and
their aggregation overall and per subgroup of metadata attributes."""

from __future__ import annotations

import math
import re

import numpy as np

from contract.results import MetricValue

METRICS = ("dice", "jaccard", "threshold_jaccard", "box_iou", "sensitivity", "specificity")
ISIC_JACCARD_THRESHOLD = 0.65
MISSING = {"", "unknown", "nan", "na", "n/a", "none", "null"}
UNKNOWN = "unknown"
MAX_CATEGORIES = 20  # a categorical column with more distinct values is an id, not a subgroup
AGE_COLUMN = re.compile(r"(^|[^a-z])age([^a-z]|$)")  # age, age_approximate, patient_age; not image


def _ratio(num, den) -> float:
    return 1.0 if den == 0 else float(num / den)


def _boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mask of an (M, H, W) stack: (top, left, bottom, right) inclusive, and whether it is empty."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    empty = ~rows.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom = masks.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    right = masks.shape[2] - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([top, left, bottom, right], axis=1), empty


def _box_ious(truth: np.ndarray, preds: np.ndarray) -> np.ndarray:
    a, a_empty = (x[0] for x in _boxes(truth[None]))
    b, b_empty = _boxes(preds)
    ih = np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]) + 1
    iw = np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]) + 1
    inter = np.maximum(ih, 0) * np.maximum(iw, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iou = inter / np.maximum(area_a + area_b - inter, 1)
    # no box on either side: 1 when both are empty, 0 when one is
    return np.where(a_empty | b_empty, (a_empty & b_empty).astype(float), iou)


def box_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(_box_ious(truth.astype(bool), pred.astype(bool)[None])[0])


def stack_metrics(truth: np.ndarray, preds: np.ndarray) -> list[dict[str, float]]:
    """The metrics of several predictions of one image at once: truth (H, W), preds (M, H, W), boolean."""
    if truth.shape != preds.shape[1:]:
        raise ValueError(f"truth {truth.shape} and prediction {preds.shape[1:]} differ in size")
    truth = truth.astype(bool, copy=False)
    preds = preds.astype(bool, copy=False)
    tp = np.count_nonzero(preds & truth, axis=(1, 2))
    fp = np.count_nonzero(preds, axis=(1, 2)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = truth.size - tp - fp - fn
    boxes = _box_ious(truth, preds)
    out = []
    for m in range(preds.shape[0]):
        jaccard = _ratio(tp[m], tp[m] + fp[m] + fn[m])
        out.append(
            {
                "dice": _ratio(2 * tp[m], 2 * tp[m] + fp[m] + fn[m]),
                "jaccard": jaccard,
                "threshold_jaccard": jaccard if jaccard >= ISIC_JACCARD_THRESHOLD else 0.0,
                "box_iou": float(boxes[m]),
                "sensitivity": _ratio(tp[m], tp[m] + fn[m]),
                "specificity": _ratio(tn[m], tn[m] + fp[m]),
            }
        )
    return out


def image_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """truth and pred: boolean masks of one size."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
    return stack_metrics(truth, pred[None])[0]


def _as_number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _fmt(x: float) -> str:
    return f"{x:g}"


def subgroup_labels(column: str, values: list[str]) -> list[str]:
    """One label per value: categorical values as they are; numeric columns in bands (age: 20-year
    bands, others: quartiles); missing values (empty, 'unknown', ...) as 'unknown'."""
    present = [v for v in values if v.strip().lower() not in MISSING]
    numbers = [_as_number(v) for v in present]
    numeric = bool(present) and all(x is not None for x in numbers) and len(set(numbers)) > 6
    if not numeric:
        return [v if v.strip().lower() not in MISSING else UNKNOWN for v in values]
    if AGE_COLUMN.search(column.lower()):
        edges = list(range(0, int(max(numbers)) // 20 * 20 + 21, 20))
    else:
        edges = sorted(set(np.quantile(np.asarray(numbers), [0, 0.25, 0.5, 0.75, 1.0]).tolist()))
    labels = []
    for v in values:
        x = _as_number(v) if v.strip().lower() not in MISSING else None
        if x is None:
            labels.append(UNKNOWN)
            continue
        i = max(0, min(int(np.searchsorted(edges, x, side="right")) - 1, len(edges) - 2))
        last = i == len(edges) - 2
        labels.append(f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{']' if last else ')'}")
    return labels


def usable_attributes(columns: list[str], rows: list[dict[str, str]], *, exclude: set[str]) -> list[str]:
    """Default attributes: every column except excluded ones and id-like categorical columns."""
    chosen = []
    for column in columns:
        if column in exclude:
            continue
        values = [r.get(column, "") for r in rows]
        labels = set(subgroup_labels(column, values))
        if len(labels) <= MAX_CATEGORIES:
            chosen.append(column)
    return chosen


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Means of every metric the per-image entries carry (METRICS, and e.g. pointing)."""
    if not per_image:
        return {}
    names = [k for k in per_image[0] if k != "image_id"]
    return {m: float(np.mean([p[m] for p in per_image])) for m in names}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None without both classes."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aggregate(per_image: list[dict[str, float]], groups: dict[str, list[str]]) -> dict:
    """Overall means, and per attribute and subgroup label the count and means.
    groups maps an attribute to one label per image, aligned with per_image."""
    out = {"n": len(per_image), "overall": mean_metrics(per_image), "subgroups": {}}
    for attribute, labels in groups.items():
        by_label: dict[str, list[dict[str, float]]] = {}
        for label, metrics in zip(labels, per_image):
            by_label.setdefault(label, []).append(metrics)
        out["subgroups"][attribute] = {
            label: {"n": len(items), **mean_metrics(items)} for label, items in sorted(by_label.items())
        }
    return out


def metric_values(models: dict[str, dict]) -> list[MetricValue]:
    """A report's models (metrics.json 'models': per model its validation report, the test report
    under 'test') as one value per model, split, subgroup (or none: overall) and metric; a weak
    model's classifier adds its AUROC overall."""
    values = []
    for model, entry in models.items():
        for split, report in (("validation", entry), ("test", entry.get("test"))):
            if report is None:
                continue
            values += [
                MetricValue(model, split, None, None, name, value, report["n"])
                for name, value in report["overall"].items()
            ]
            classification = report.get("classification")
            if classification and classification["auroc"] is not None:
                values.append(
                    MetricValue(model, split, None, None, "auroc", classification["auroc"], classification["n"])
                )
            for attribute, groups in report["subgroups"].items():
                for label, stats in groups.items():
                    values += [
                        MetricValue(model, split, attribute, label, name, value, stats["n"])
                        for name, value in stats.items()
                        if name != "n"
                    ]
    return values
