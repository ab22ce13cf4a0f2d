"""The label check: does each mask agree with what a model that never saw it predicts?

Out-of-sample predictions by K-fold cross-fitting (Northcutt et al., "Confident Learning", JAIR
2021, section 4: K models, each trained without one fold, predict that fold), folds dealt by the
split's group column so that no lesion is on both sides. Each image's label quality is computed from
its mask and its out-of-sample lesion probabilities (see label_quality); a label issue is an image
whose mask the out-of-sample model contradicts with confidence (see flag_label_issues)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from contract.jobspec import JobSpec
from ml.data import DatasetIndex, DecodedDataset
from ml.setting import Targets
from ml.stage_inputs import StageInputs
from ml.train import fit, iterate_batches, predict_each, prepare_for_device

CONFIDENT = 0.9  # a pixel's out-of-sample probability past which the model contradicts a label with confidence


def cross_fitting_folds(train_idx: list[int], groups: list[str], k: int, seed: int) -> list[list[int]]:
    """train_idx dealt into k folds of about equal size; images of one group (groups aligns with
    train_idx; '' is a group of its own) share a fold. Seeded."""
    by_group: dict[str, list[int]] = {}
    for i, g in zip(train_idx, groups):
        by_group.setdefault(g if g else f"\0{i}", []).append(i)
    keys = sorted(by_group)
    random.Random(seed).shuffle(keys)
    # largest groups first, each to the currently smallest fold: sizes stay within a group of each other
    keys.sort(key=lambda key: -len(by_group[key]))
    folds: list[list[int]] = [[] for _ in range(k)]
    for key in keys:
        min(folds, key=len).extend(by_group[key])
    return [sorted(f) for f in folds]


@torch.no_grad()
def lesion_probabilities(
    models: list[nn.Module], data: DecodedDataset, indices: list[int], *, batch_size: int = 64
) -> np.ndarray:
    """(len(indices), S, S) float16: the models' mean lesion probability per pixel."""
    size = data.images.shape[-1]
    out = np.zeros((len(indices), size, size), dtype=np.float16)
    done = 0
    for batch in iterate_batches(indices, batch_size):
        images, _ = data.batch(batch)
        probs = torch.stack([torch.sigmoid(logits) for logits in predict_each(models, images)]).mean(0)
        out[done : done + len(batch)] = probs[:, 0].cpu().numpy().astype(np.float16)
        done += len(batch)
    return out


@dataclass(frozen=True)
class LabelQuality:
    """Per image: quality in [0, 1] (1: the out-of-sample model confirms every pixel of the mask),
    the share of the mask-or-prediction area it contradicts with confidence, and the Dice of its
    thresholded prediction against the mask."""

    quality: np.ndarray
    contradicted: np.ndarray
    oos_dice: np.ndarray


def label_quality(masks: np.ndarray, probs: np.ndarray) -> LabelQuality:
    """masks (N, S, S) in {0, 1}; probs (N, S, S) out-of-sample lesion probabilities.

    Confident learning's rule, per pixel: a label is contradicted when the model gives the other
    class a probability over CONFIDENT. Per image, over the region that matters (the mask or the
    confident prediction, so that a small lesion on a large background still counts):
      contradicted = (mask pixels with p < 1 - CONFIDENT + background pixels with p > CONFIDENT) / region
      quality = 1 - contradicted
    An uncertain model (a faint lesion) contradicts little: it is hard, not wrong."""
    m = masks.astype(bool)
    p = probs.astype(np.float32)
    against_lesion = m & (p < 1 - CONFIDENT)
    against_background = ~m & (p > CONFIDENT)
    region = (m | (p > CONFIDENT)).reshape(len(m), -1).sum(1)
    contradicted = (against_lesion | against_background).reshape(len(m), -1).sum(1) / np.maximum(region, 1)
    predicted = p > 0.5
    inter = (predicted & m).reshape(len(m), -1).sum(1)
    total = predicted.reshape(len(m), -1).sum(1) + m.reshape(len(m), -1).sum(1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    return LabelQuality(quality=1 - contradicted, contradicted=contradicted, oos_dice=dice)


def flag_label_issues(quality: np.ndarray, *, max_quality: float) -> np.ndarray:
    """A label issue: the out-of-sample model contradicts, with confidence, more of the image's
    region than it confirms (quality below max_quality)."""
    return quality < max_quality


# --- the stage ---------------------------------------------------------------------------------------
@dataclass
class FoldCheck:
    """One fold's out-of-sample check: the dataset positions it checked, their quality, and their
    thresholded out-of-sample predictions bit-packed (np.packbits over S*S pixels), for overlays."""

    fold: int
    indices: list[int]
    quality: LabelQuality
    predicted: np.ndarray


def checked_images(targets: Targets) -> list[int]:
    """The training images whose mask training may use: the ones the label check checks."""
    return [i for i, labeled in zip(targets.train_idx, targets.train_labeled) if labeled]


def fold_of_checked(index: DatasetIndex, spec: JobSpec, targets: Targets) -> list[list[int]]:
    checked = checked_images(targets)
    column = spec.split.group_column
    groups = [index.records[i].attributes.get(column, "") if column else "" for i in checked]
    return cross_fitting_folds(checked, groups, spec.label_check.folds, spec.split.seed)


def fold_seed(spec: JobSpec, fold: int) -> int:
    return spec.train.seed_list()[0] + 1 + fold


def check_fold(
    inputs: StageInputs, fold: int, *, progress: Callable[[float, float | None], None] | None = None
) -> FoldCheck:
    """Trains a model (supervised, on the masks training may use) without this fold's images and
    checks their masks against its predictions."""
    spec = inputs.spec
    folds = fold_of_checked(inputs.index, spec, inputs.targets)
    held = folds[fold]
    rest = [i for k, f in enumerate(folds) if k != fold for i in f]
    seed = fold_seed(spec, fold)
    torch.manual_seed(seed)
    model = prepare_for_device(inputs.fresh_model(), inputs.device, precision=inputs.precision)
    fit(model, inputs.data, rest, inputs.fit_config(seed, epochs=spec.label_check.epochs), progress=progress)
    return check_with([model], inputs.data, held, fold=fold)


def check_with(models: list[nn.Module], data: DecodedDataset, indices: list[int], *, fold: int = -1) -> FoldCheck:
    """The masks of these images against the models' mean prediction (models that never saw them)."""
    probs = lesion_probabilities(models, data, indices)
    quality = label_quality(data.masks[indices, 0], probs)
    predicted = np.packbits((probs > 0.5).reshape(len(indices), -1), axis=1)
    return FoldCheck(fold, list(indices), quality, predicted)
