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
  same sizes and overlap, drawn from the same pool."""

from __future__ import annotations

import numpy as np
from torch import nn

from ml.prune import validation_prediction
from ml.stage_inputs import StageInputs

LABEL_CHECK_ATTRIBUTE = "label_check"  # an image's own label check is no subgroup to balance


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


def flagged_groups(enrichment: dict) -> list[tuple[str, str]]:
    """(attribute, value) of every subgroup over-represented among the HTL images (significant after
    Benjamini-Hochberg, enrichment > 1), the label check's own grouping left out."""
    return [
        (g["attribute"], g["value"])
        for g in enrichment.get("groups", [])
        if g.get("significant") and (g.get("enrichment") or 0) > 1 and g["attribute"] != LABEL_CHECK_ATTRIBUTE
    ]


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
