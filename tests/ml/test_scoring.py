import copy

import numpy as np
import pytest
import torch

from ml.models import build_model
from ml.prune import prune_model
from ml.scoring import HtlScores, binary_dice, score_disagreement, select_htl
from ml.train import FitConfig, fit

from .helpers import synthetic_decoded


def test_binary_dice_counts_empty_against_empty_as_agreement():
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[1, :2] = True
    b[1, :1] = True
    b[2, 0, 0] = True
    assert binary_dice(a, b).tolist() == pytest.approx([1.0, 2 * 4 / 12, 0.0])


def test_a_pruned_model_identical_to_the_dense_one_scores_zero(tmp_path):
    _, decoded = synthetic_decoded(tmp_path, n=32)
    torch.manual_seed(0)
    dense = build_model("unet", width=8)
    fit(dense, decoded, list(range(32)), FitConfig(epochs=6, batch_size=8))
    pruned, _ = prune_model(dense, 0.9)
    scores = score_disagreement(dense, {0.1: copy.deepcopy(dense), 0.9: pruned}, decoded, list(range(20)), batch_size=7)
    assert np.all(scores.per_sparsity[0.1] == 0)
    assert scores.per_sparsity[0.9].max() > 0
    assert np.allclose(scores.htl_score, scores.per_sparsity[0.9] / 2)


def test_selection_by_top_fraction_and_by_threshold():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 0.7, 0.2, 0.3, 0.8, 0.4])
    top = select_htl(scores, top_fraction=0.3)
    assert np.flatnonzero(top).tolist() == [1, 5, 8]
    assert np.flatnonzero(select_htl(scores, threshold=0.5)).tolist() == [1, 2, 3, 5, 8]
    assert select_htl(scores, top_fraction=0.01).sum() == 1


def test_only_eligible_images_are_htl_and_the_others_rank_last():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 0.7, 0.2, 0.3, 0.8, 0.4])
    eligible = np.array([True, False, True, True, True, False, True, True, True, True])  # 8 may be HTL
    assert np.flatnonzero(select_htl(scores, top_fraction=0.25, eligible=eligible)).tolist() == [2, 8]  # 0.25 x 8
    assert np.flatnonzero(select_htl(scores, threshold=0.5, eligible=eligible)).tolist() == [2, 3, 8]
    ranks = HtlScores(image_indices=list(range(10)), per_sparsity={}, htl_score=scores, eligible=eligible).ranks()
    assert sorted(ranks[~eligible]) == [9, 10] and ranks[8] == 1 and ranks[1] == 9


def test_ranks_start_at_one_for_the_hardest_and_break_ties_by_position():
    s = HtlScores(image_indices=[0, 1, 2, 3], per_sparsity={}, htl_score=np.array([0.2, 0.9, 0.2, 0.5]))
    assert s.ranks().tolist() == [3, 1, 4, 2]


def test_ties_at_the_htl_cut_fall_by_a_seeded_order_not_by_position():
    from ml.scoring import seeded_tiebreak

    scores = np.zeros(100)
    scores[:5] = 1.0  # five clear, 95 tied
    top = select_htl(scores, top_fraction=0.1, tiebreak=seeded_tiebreak(100, 0))
    assert top[:5].all() and top.sum() == 10
    assert np.flatnonzero(top[5:]).tolist() != [0, 1, 2, 3, 4]  # not the next five by position (image id)
    assert (select_htl(scores, top_fraction=0.1, tiebreak=seeded_tiebreak(100, 0)) == top).all()
    assert not (select_htl(scores, top_fraction=0.1, tiebreak=seeded_tiebreak(100, 1)) == top).all()
    ranks = HtlScores(list(range(100)), {}, scores, tiebreak=seeded_tiebreak(100, 0)).ranks()
    assert sorted(ranks[:5]) == [1, 2, 3, 4, 5] and set(np.flatnonzero(ranks <= 10)) == set(np.flatnonzero(top))
