"""Remedies beside oversampling the HTL set (attention.strategy), each with a random control treated
the same way:

- jtt, Just Train Twice (Liu et al., ICML 2021): the error set is the training images the dense model
  localizes worst, by its own Dice on them (eval mode, unaugmented; averaged over the dense seeds),
  as many as the HTL set; they are drawn attention.factor times as often (JTT up-samples). Its
  control draws as many random images and up-samples them alike.
- group_balance: the training subgroups the enrichment analysis flags (over-represented among the
  HTL images, Benjamini-Hochberg adjusted p < 0.05; found on the training split only) are sampled so
  that each weighs as much as all the images in no flagged group (group-balanced sampling, as in
  Sagawa et al. 2020 and Idrissi et al. 2022). Its control balances random groups of the
  same sizes and overlap, drawn from the same pool.
- group_dro: online group DRO over the same flagged groups and the rest (GroupDRO below); its
  control: the same over random groups of the same sizes and overlap.
- topk_loss: in each batch only its hardest samples carry the loss (TopKLoss below); its control:
  as many random samples of each batch."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ml.prune import validation_prediction
from ml.stage_inputs import StageInputs


def training_dice(inputs: StageInputs, dense_models: list[nn.Module]) -> np.ndarray:
    """Each training image's Dice under the dense models (eval mode, unaugmented images), averaged
    over them; NaN where the image has no mask to compare with."""
    has_target = inputs.targets.localizable(inputs.train_idx)
    per_model = [
        validation_prediction(model, inputs.data, inputs.train_idx, has_target).per_image_dice for model in dense_models
    ]
    return np.mean(np.stack(per_model), axis=0)


def error_set(dice: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """JTT's error set: positions of the k eligible images with the lowest Dice (ties by position),
    in position order."""
    candidates = np.flatnonzero(eligible & np.isfinite(dice))
    worst = candidates[np.lexsort((candidates, dice[candidates]))][:k]
    return np.sort(worst)


def group_members(
    groups: list[tuple[str, str]], subgroups: list[dict[str, str]], eligible: np.ndarray
) -> list[np.ndarray]:
    """Per flagged group, the positions of its eligible training images (subgroups: each training
    image's subgroup per attribute, in position order)."""
    return [
        np.flatnonzero(np.array([s.get(attribute) == value for s in subgroups]) & eligible)
        for attribute, value in groups
    ]


def balance_weights(members: list[np.ndarray], n: int) -> np.ndarray:
    """Sampling weights over n training images: the images in no group weigh 1 each, and each group's
    images weigh (images in no group) / (the group's size), so every group draws as much as the rest
    together. An image in several groups takes its largest weight. With no image outside every group
    there is nothing to balance against: every weight stays 1."""
    weights = np.ones(n)
    in_any = np.zeros(n, dtype=bool)
    for m in members:
        in_any[m] = True
    rest = int((~in_any).sum())
    if rest == 0:
        return weights
    grouped = np.zeros(n)
    for m in members:
        if len(m):
            grouped[m] = np.maximum(grouped[m], rest / len(m))
    weights[in_any] = grouped[in_any]
    return weights


def random_groups_like(members: list[np.ndarray], pool: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Random groups shaped like members: the images of all the groups are mapped one to one onto as
    many images drawn at random from pool, and each group is carried through that map, so the
    random groups have the same sizes and overlap as the real ones."""
    union = np.unique(np.concatenate(members)) if members else np.zeros(0, dtype=int)
    drawn = rng.choice(pool, size=len(union), replace=False)
    image_of = dict(zip(union.tolist(), drawn.tolist()))
    return [np.sort(np.array([image_of[j] for j in m.tolist()], dtype=int)) for m in members]


# --- remedies that weigh each batch as it comes (fit's batch_weighting) --------------------------
GROUP_DRO_STEP = 0.01  # Sagawa et al.'s eta_q for their vision tasks


class TopKLoss:
    """attention.strategy topk_loss, online hard example mining (Shrivastava et al. 2016) at the
    sample level: in each batch only the top_fraction of samples with the highest loss carry the loss.
    The control (random=True): as many samples of each batch, drawn at random, carry it."""

    def __init__(self, top_fraction: float, *, random: bool, seed: int):
        self.top_fraction = top_fraction
        self.random = random
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, positions: np.ndarray, loss: torch.Tensor) -> torch.Tensor:
        k = max(1, math.ceil(self.top_fraction * len(loss)))
        chosen = torch.randperm(len(loss), generator=self.g)[:k] if self.random else torch.topk(loss.cpu(), k).indices
        weights = torch.zeros(len(loss))
        weights[chosen] = 1.0
        return weights


class GroupDRO:
    """attention.strategy group_dro, online group DRO (Sagawa et al., ICLR 2020, Algorithm 1): a weight
    q_g per group, raised each step by exp(step * the group's mean loss in the batch) and normalized;
    the batch loss is sum_g q_g * (group g's mean loss), given to fit as per-sample weights q_g / (the
    group's count in the batch), which fit normalizes over the groups present. group_of: each training
    position's group (0: the images in no flagged group)."""

    def __init__(self, group_of: np.ndarray, *, step: float = GROUP_DRO_STEP):
        self.group_of = torch.as_tensor(group_of, dtype=torch.long)
        self.q = torch.full((int(self.group_of.max()) + 1,), 1.0 / (int(self.group_of.max()) + 1))
        self.step = step

    def __call__(self, positions: np.ndarray, loss: torch.Tensor) -> torch.Tensor:
        groups = self.group_of[torch.as_tensor(positions, dtype=torch.long)]
        loss = loss.detach().float().cpu()
        counts = torch.bincount(groups, minlength=len(self.q)).float()
        sums = torch.bincount(groups, weights=loss, minlength=len(self.q))
        present = counts > 0
        means = torch.where(present, sums / counts.clamp_min(1), torch.zeros_like(sums))
        self.q = self.q * torch.exp(self.step * means)
        self.q = self.q / self.q.sum()
        return self.q[groups] / counts[groups]


def group_index(members: list[np.ndarray], n: int) -> np.ndarray:
    """Each of n training positions' group for group DRO: 1 + the first group holding it, 0 for the rest."""
    group_of = np.zeros(n, dtype=np.int64)
    for g in range(len(members) - 1, -1, -1):  # the first listed group wins where groups overlap
        group_of[members[g]] = g + 1
    return group_of
