"""hd95 and nsd: hand-computed on masks small enough to count, equal to MONAI's own metric functions
on larger ones, and defined (never NaN) where a side is empty."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from ml.boundary import boundary_metrics

pytestmark = pytest.mark.torch


def _pixels(shape, *points):
    mask = np.zeros(shape, dtype=bool)
    for r, c in points:
        mask[r, c] = True
    return mask


def test_single_pixels_four_apart():
    # a one-pixel mask is its own edge: every distance is 4
    m = boundary_metrics(_pixels((12, 12), (5, 5)), _pixels((12, 12), (5, 9)))
    assert m["hd95"] == pytest.approx(4.0) and m["nsd"] == 0.0
    assert boundary_metrics(_pixels((12, 12), (5, 5)), _pixels((12, 12), (5, 9)), tolerance=4)["nsd"] == 1.0


def test_a_far_stray_pixel():
    # prediction edges (5,5) and (5,12): distances to the mask 0 and 7; the mask's edge to the prediction: 0.
    # hd95 = the larger 95th percentile (linear interpolation, as MONAI): 0 + 0.95 * 7 = 6.65;
    # nsd at 2 pixels: 2 of the 3 edge pixels lie within it
    m = boundary_metrics(_pixels((16, 16), (5, 5)), _pixels((16, 16), (5, 5), (5, 12)))
    assert m["hd95"] == pytest.approx(6.65) and m["nsd"] == pytest.approx(2 / 3)


def test_identical_masks_score_perfectly():
    truth = np.zeros((20, 20), dtype=bool)
    truth[4:12, 6:15] = True
    assert boundary_metrics(truth, truth) == {"hd95": 0.0, "nsd": 1.0}


def test_empty_sides_are_defined():
    empty, lesion = np.zeros((30, 40), dtype=bool), _pixels((30, 40), (3, 3))
    assert boundary_metrics(empty, empty) == {"hd95": 0.0, "nsd": 1.0}
    for truth, pred in ((empty, lesion), (lesion, empty)):
        m = boundary_metrics(truth, pred)
        assert m == {"hd95": pytest.approx(50.0), "nsd": 0.0} and all(math.isfinite(v) for v in m.values())


def test_equal_to_monai_metric_functions():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for _ in range(6):
        r1, r2 = rng.uniform(5, 15, size=2)
        c1, c2 = rng.uniform(15, 33, size=(2, 2))
        truth = (yy - c1[0]) ** 2 + (xx - c1[1]) ** 2 < r1**2
        pred = ((yy - c2[0]) ** 2 + (xx - c2[1]) ** 2 < r2**2) | (rng.random((48, 48)) > 0.995)
        onehot = [torch.stack([torch.from_numpy(~m), torch.from_numpy(m)])[None].float() for m in (pred, truth)]
        hd95 = float(compute_hausdorff_distance(*onehot, percentile=95)[0, 0])
        nsd = float(compute_surface_dice(*onehot, class_thresholds=[2.0])[0, 0])
        m = boundary_metrics(truth, pred)
        assert m["hd95"] == pytest.approx(hd95, abs=1e-5) and m["nsd"] == pytest.approx(nsd, abs=1e-6)
