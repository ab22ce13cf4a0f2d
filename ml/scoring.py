"""Per-image HTL scores: how much each pruned model's binarized prediction disagrees with the dense
model's (1 - Dice), and their mean over sparsities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ml.data import DecodedDataset
from ml.train import binary_dice, iterate_batches, predict_each


@dataclass
class HtlScores:
    image_indices: list[int]  # positions in the decoded dataset
    per_sparsity: dict[float, np.ndarray]  # sparsity -> disagreement per image
    htl_score: np.ndarray  # mean over sparsities
    tiebreak: np.ndarray | None = None  # per image, the order among equal scores (default: position)
    eligible: np.ndarray | None = None  # per image, whether it may be HTL (default: every one); the others rank last

    def ranks(self) -> np.ndarray:
        """1 = hardest; ties broken by tiebreak (else position), so the ranking is deterministic; images
        that may not be HTL come after every one that may."""
        n = len(self.htl_score)
        last = np.zeros(n, dtype=bool) if self.eligible is None else ~self.eligible
        order = np.lexsort((_tiebreak(self.tiebreak, n), -self.htl_score, last))
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(1, len(order) + 1)
        return ranks


@torch.no_grad()
def score_disagreement(
    dense: nn.Module,
    pruned: dict[float, nn.Module],
    data: DecodedDataset,
    indices: list[int],
    *,
    batch_size: int = 64,
    progress: Callable[[float], None] | None = None,
    masks_out: np.ndarray | None = None,
) -> HtlScores:
    """Runs the dense model and every pruned model on each batch, so each image is loaded once.
    masks_out, an (images, 1 + pruned models, packed pixels) uint8 array (say a memmap), receives
    every binarized prediction bit-packed (np.packbits), dense first: what a gallery shows, kept
    rather than predicted again."""
    per_sparsity = {s: np.zeros(len(indices)) for s in pruned}
    done = 0
    for batch in iterate_batches(indices, batch_size):
        images, _ = data.batch(batch)
        reference, *predictions = (logits > 0 for logits in predict_each([dense, *pruned.values()], images))
        layers = [reference]
        for s, prediction in zip(pruned, predictions):
            agree = binary_dice(reference, prediction)
            per_sparsity[s][done : done + len(batch)] = (1 - agree).cpu().numpy()
            layers.append(prediction)
        if masks_out is not None:
            masks_out[done : done + len(batch)] = np.packbits(torch.stack(layers, 1).flatten(2).cpu().numpy(), axis=2)
        done += len(batch)
        if progress is not None:
            progress(done / len(indices))
    mean = np.mean(np.stack([per_sparsity[s] for s in sorted(per_sparsity)]), axis=0)
    return HtlScores(image_indices=list(indices), per_sparsity=per_sparsity, htl_score=mean)


def _tiebreak(key: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if key is None else np.asarray(key)


def seeded_tiebreak(n: int, seed: int) -> np.ndarray:
    """A seeded order among equal scores: otherwise the HTL cut would fall by image id, which
    carries meaning in some datasets (acquisition order, site prefixes)."""
    return np.random.default_rng([seed, 7919]).permutation(n)


def select_htl(
    scores: np.ndarray,
    *,
    top_fraction: float | None = None,
    threshold: float | None = None,
    tiebreak: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean HTL membership among the eligible images (default: all): the top top_fraction of them
    (at least one; ties at the cut go by tiebreak, else position), or score >= threshold."""
    if (top_fraction is None) == (threshold is None):
        raise ValueError("give exactly one of top_fraction and threshold")
    eligible = np.ones(len(scores), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if threshold is not None:
        return (scores >= threshold) & eligible
    k = max(1, int(round(top_fraction * int(eligible.sum()))))
    order = np.lexsort((_tiebreak(tiebreak, len(scores)), -scores, ~eligible))
    chosen = np.zeros(len(scores), dtype=bool)
    chosen[order[:k][eligible[order[:k]]]] = True
    return chosen
