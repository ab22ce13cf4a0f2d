"""Hardness scores other than pruning disagreement, each per training image, higher = harder:

- loss: the dense model's BCE + soft-Dice loss on the (unaugmented) image after training;
- el2n: the error L2 norm of Paul et al. (2021), ||p - y||_2 of the dense model's prediction on the
  unaugmented image, in eval mode, at the end of an early epoch (EL2N_EPOCH_FRACTION of training,
  at least the first epoch). A mask's error vector has a component per pixel, so the norm is divided
  by sqrt(pixel count): the root-mean-square error, comparable across image sizes. For a classifier
  it is |p - y|. Paul et al. average over several initializations; here each dense seed scores and
  the seeds' scores are averaged;
- forgetting: forgetting events (Toneva et al., 2019): how often the image's training Dice fell below
  a threshold after having been at or above it, counted on its training steps. An image never learned
  (never at or above the threshold) counts as most forgotten: Toneva et al. give it an infinite
  count; here it gets the number of epochs, more than any learned image can reach;
- dynamic_dice: 1 - its training Dice averaged over the epochs ("Data-Centric Diet" for medical
  segmentation), so an image learned late or never scores high;
- mc_dropout: disagreement (1 - Dice) between the dense prediction and predictions with test-time
  channel dropout on every convolution's output, averaged over samples. The models are trained
  without dropout, so this is dropout used as a perturbation, as pruning is.

And agreement between scorers: Spearman correlation of the rankings and overlap of the top sets."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from contract.scorers import MC_DROPOUT_SAMPLES
from ml.data import DecodedDataset
from ml.models import prunable_layers
from ml.scoring import binary_dice
from ml.train import device_of, iterate_batches, model_input, predict_logits, segmentation_objective

FORGETTING_THRESHOLD = 0.5
EL2N_EPOCH_FRACTION = 0.2
MC_DROPOUT_P = 0.1


def forgetting_events(dice: np.ndarray, threshold: float = FORGETTING_THRESHOLD) -> np.ndarray:
    """dice: (n, epochs), NaN where not seen. A forgetting event is a step from learned
    (>= threshold) to not learned, between consecutive epochs in which the image was seen. Never
    learned: the number of epochs (at most epochs / 2 events can happen). Never seen: NaN."""
    out = np.zeros(dice.shape[0])
    for i, row in enumerate(dice):
        seen = row[~np.isnan(row)] >= threshold
        if seen.size == 0:
            out[i] = np.nan
        elif not seen.any():
            out[i] = dice.shape[1]
        else:
            out[i] = np.count_nonzero(seen[:-1] & ~seen[1:])
    return out


def dynamic_dice(dice: np.ndarray) -> np.ndarray:
    """NaN for an image never recorded (no target)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" for those rows
        return 1.0 - np.nanmean(dice, axis=1)


def el2n_epoch(epochs: int, fraction: float = EL2N_EPOCH_FRACTION) -> int:
    """The (0-based) epoch after which EL2N is read: the end of the first `fraction` of training."""
    return max(1, math.ceil(fraction * epochs)) - 1


def from_dynamics(dice: np.ndarray) -> dict[str, np.ndarray]:
    """The scorers read off a TrainingRecord's success array (n, epochs)."""
    return {"forgetting": forgetting_events(dice), "dynamic_dice": dynamic_dice(dice)}


@torch.no_grad()
def error_norm(
    model: nn.Module, data: DecodedDataset, indices: list[int], objective=segmentation_objective, batch_size: int = 64
) -> np.ndarray:
    """EL2N as of now: the objective's per-sample error norm on unaugmented images, in eval mode."""
    return _per_sample(model, data, indices, objective, batch_size, lambda out: out.error)


@torch.no_grad()
def final_loss(
    model: nn.Module, data: DecodedDataset, indices: list[int], objective=segmentation_objective, batch_size: int = 64
) -> np.ndarray:
    """The training objective's per-sample loss, in eval mode on unaugmented images."""
    return _per_sample(model, data, indices, objective, batch_size, lambda out: out.loss)


def _per_sample(model, data, indices, objective, batch_size, read) -> np.ndarray:
    model.eval()
    device = device_of(model)
    out = []
    for batch in iterate_batches(indices, batch_size):
        images, masks = data.batch(batch)
        result = objective(model, model_input(images, device), masks.to(device), np.asarray(batch))
        out.append(read(result).float().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def mc_dropout_disagreement(
    model: nn.Module,
    data: DecodedDataset,
    indices: list[int],
    *,
    p: float = MC_DROPOUT_P,
    samples: int = MC_DROPOUT_SAMPLES,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    heads = {id(m) for _, m in prunable_layers(model)[-1:]}  # leave the output layer alone
    active = {"on": False}

    def drop(module, _inputs, output):
        if active["on"] and id(module) not in heads:
            return F.dropout2d(output, p=p, training=True)
        return output

    hooks = [m.register_forward_hook(drop) for _, m in prunable_layers(model)]
    torch.manual_seed(seed)
    try:
        out = []
        for batch in iterate_batches(indices, batch_size):
            images, _ = data.batch(batch)
            active["on"] = False
            reference = predict_logits(model, images) > 0
            active["on"] = True
            total = torch.zeros(len(batch), device=reference.device)
            for _ in range(samples):
                total += 1 - binary_dice(reference, predict_logits(model, images) > 0)
            out.append((total / samples).cpu().numpy())
        return np.concatenate(out)
    finally:
        for h in hooks:
            h.remove()


def agreement(scores: dict[str, np.ndarray], top_fraction: float) -> list[dict]:
    """Per pair of scorers: Spearman correlation of the scores and the overlap |A & B| / k of their
    top-k sets, k = top_fraction of the images (at least one)."""
    names = list(scores)
    finite = np.all([np.isfinite(v) for v in scores.values()], axis=0)  # images every scorer scored
    scores = {name: np.asarray(v)[finite] for name, v in scores.items()}
    n = int(finite.sum())
    k = max(1, int(round(top_fraction * n)))
    tops = {name: set(np.lexsort((np.arange(n), -scores[name]))[:k].tolist()) for name in names}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rho = spearmanr(scores[a], scores[b]).statistic if n > 2 else float("nan")
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "spearman": None if not np.isfinite(rho) else float(rho),
                    "top_overlap": len(tops[a] & tops[b]) / k,
                    "top_k": k,
                }
            )
    return rows
