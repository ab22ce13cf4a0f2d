"""Boundary metrics per image, beside Dice (Metrics Reloaded, Maier-Hein et al. 2024, recommends a
boundary metric with an overlap one): hd95 and nsd, from MONAI's surface distances.

- hd95: the 95th percentile Hausdorff distance, in pixels of the evaluated image: the larger of the
  two directed 95th percentiles (prediction edge to mask edge, mask edge to prediction edge), as
  monai.metrics.compute_hausdorff_distance(percentile=95) computes it.
- nsd: normalized surface Dice at a tolerance of NSD_TOLERANCE pixels: the share of both edges that
  lie within the tolerance of the other, as monai.metrics.compute_surface_dice computes it.

Both come from one call of MONAI's get_edge_surface_distance, so the edges and distance transforms
are computed once per pair. Where a side is empty, MONAI answers NaN or inf; here: both empty (the
model rightly finds nothing) hd95 0 and nsd 1; one empty, hd95 the image's diagonal (the farthest any
two pixels can be) and nsd 0. No value is ever NaN."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics.utils import get_edge_surface_distance

NSD_TOLERANCE = 2.0  # pixels of the evaluated image
BOUNDARY_METRICS = ("hd95", "nsd")


def boundary_metrics(truth: np.ndarray, pred: np.ndarray, *, tolerance: float = NSD_TOLERANCE) -> dict[str, float]:
    """truth and pred: boolean masks of one size (H, W)."""
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
    has_truth, has_pred = bool(truth.any()), bool(pred.any())
    if not has_truth and not has_pred:
        return {"hd95": 0.0, "nsd": 1.0}
    if not has_truth or not has_pred:
        return {"hd95": float(math.hypot(*truth.shape)), "nsd": 0.0}
    _, (pred_to_truth, truth_to_pred), _ = get_edge_surface_distance(
        torch.from_numpy(pred), torch.from_numpy(truth), distance_metric="euclidean", symmetric=True
    )
    hd95 = max(float(torch.quantile(d.double(), 0.95)) for d in (pred_to_truth, truth_to_pred))
    near = int((pred_to_truth <= tolerance).sum()) + int((truth_to_pred <= tolerance).sum())
    return {"hd95": hd95, "nsd": near / (len(pred_to_truth) + len(truth_to_pred))}
