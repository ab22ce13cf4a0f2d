"""The three settings in one place: what each image is trained on (its mask; in the semi-supervised
setting only for the images whose mask is kept; in the weakly supervised setting its image label)
and how a model is fitted to that."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from contract.jobspec import JobSpec, SpecError
from ml.data import DatasetIndex, DecodedDataset
from ml.metrics import MISSING
from ml.semi import fit_semi
from ml.train import ClassificationObjective, FitConfig, fit, segmentation_objective

WEAK, SEMI = "weakly_supervised", "semi_supervised"


@dataclass(frozen=True)
class Targets:
    """Per image of the dataset: whether its mask may be used, and (weak) its label; per training
    image (aligned with train_idx): whether it carries the target its setting trains on."""

    setting: str
    train_idx: list[int]
    mask_known: np.ndarray
    image_labels: np.ndarray | None
    train_labeled: np.ndarray

    @property
    def weak(self) -> bool:
        return self.setting == WEAK

    def localizable(self, indices) -> np.ndarray:
        """Per image of indices: whether its predicted mask is scored against its mask. It needs a
        mask it may use; in the weakly supervised setting it must also be a positive: the map is the
        positive class's, and a negative image holds nothing it should find."""
        return self.mask_known[indices] & self._may_localize(indices)

    @property
    def train_rankable(self) -> np.ndarray:
        """Per training image: whether it may be in the HTL set. In the weakly supervised setting only
        the positives: the maps are the positive class's, so on a negative image their disagreement
        measures noise, not how hard the lesion is to localize."""
        return self._may_localize(self.train_idx)

    def _may_localize(self, indices) -> np.ndarray:
        """Weakly supervised: the positives (the maps are the positive class's); else every image."""
        if not self.weak:
            return np.ones(len(indices), dtype=bool)
        return self.image_labels[indices] == 1

    def objective(self):
        """The per-sample loss the setting trains with: the segmentation loss, or for image labels a
        classification loss weighted by the training set's class balance."""
        if not self.weak:
            return segmentation_objective
        train = self.image_labels[self.train_idx]
        return ClassificationObjective(
            self.image_labels, pos_weight=float(np.sum(train == 0)) / max(1.0, float(np.nansum(train)))
        )


def make_targets(index: DatasetIndex, spec: JobSpec, train_idx: list[int]) -> Targets:
    image_labels = _image_labels(index, spec, train_idx) if spec.setting == WEAK else None
    mask_known = _masks_known(index, spec, train_idx)
    train_labeled = ~np.isnan(image_labels[train_idx]) if image_labels is not None else mask_known[train_idx]
    return Targets(spec.setting, list(train_idx), mask_known, image_labels, train_labeled)


def _image_labels(index: DatasetIndex, spec: JobSpec, train_idx: list[int]) -> np.ndarray:
    """1 for a positive value of weak.label_column, 0 for another value, NaN when missing."""
    column, positive = spec.weak.label_column, set(spec.weak.positive)
    values = [r.attributes.get(column, "").strip() for r in index.records]
    labels = np.array([np.nan if v.lower() in MISSING else float(v in positive) for v in values])
    train = labels[train_idx]
    n_pos, n_neg = int(np.nansum(train)), int(np.sum(train == 0))
    if n_pos == 0 or n_neg == 0:
        raise SpecError(
            "weak.positive",
            f"the training images hold {n_pos} positives and {n_neg} negatives of {column} in {sorted(positive)}; both are needed",
        )
    return labels


def _masks_known(index: DatasetIndex, spec: JobSpec, train_idx: list[int]) -> np.ndarray:
    """Per image, whether its mask may be used: semi.labeled_fraction hides the masks of all but a
    seeded fraction of the training images (validation images always keep theirs)."""
    known = np.array([r.mask_path is not None for r in index.records])
    if spec.setting != SEMI:
        return known
    fraction = spec.semi.labeled_fraction
    if fraction is not None:
        with_mask = [i for i in train_idx if known[i]]
        keep = max(2, int(round(fraction * len(with_mask))))
        kept = set(random.Random(spec.split.seed).sample(with_mask, min(keep, len(with_mask))))
        for i in with_mask:
            known[i] = i in kept
    n_labeled = int(known[train_idx].sum())
    if n_labeled < 2 or n_labeled == len(train_idx):
        raise SpecError(
            "semi.labeled_fraction",
            f"{n_labeled} of {len(train_idx)} training images keep a mask; semi_supervised needs at least 2 "
            "with and at least 1 without (set semi.labeled_fraction below 1, or upload images without masks)",
        )
    return known


def fit_in_setting(
    model,
    data: DecodedDataset,
    targets: Targets,
    spec: JobSpec,
    cfg: FitConfig,
    *,
    loss_weights=None,
    sampling_weights=None,
    progress=None,
    record=None,
    on_epoch_end=None,
    batch_weighting=None,
) -> list[float]:
    """Trains on the training images as the setting says (semi-supervised: the images without a mask
    through fit_semi's unlabeled loss); weights align with targets.train_idx. Answers the epoch losses."""
    train_idx = targets.train_idx
    if batch_weighting is not None and targets.setting == SEMI:
        raise ValueError("a batch weighting (group_dro, topk_loss) is not available in the semi_supervised setting")
    if targets.setting != SEMI:
        return fit(
            model,
            data,
            train_idx,
            cfg,
            loss_weights=loss_weights,
            sampling_weights=sampling_weights,
            progress=progress,
            record=record,
            objective=targets.objective(),
            on_epoch_end=on_epoch_end,
            batch_weighting=batch_weighting,
        )
    labeled = [i for i, known in zip(train_idx, targets.train_labeled) if known]
    unlabeled = [i for i, known in zip(train_idx, targets.train_labeled) if not known]
    by_index = lambda w: None if w is None else dict(zip(train_idx, map(float, w)))  # noqa: E731
    semi = spec.semi
    return fit_semi(
        model,
        data,
        labeled,
        unlabeled,
        cfg,
        method=semi.method,
        unlabeled_weight=semi.unlabeled_weight,
        ema_decay=semi.ema_decay,
        confidence=semi.confidence,
        loss_weights=by_index(loss_weights),
        sampling_weights=by_index(sampling_weights),
        progress=progress,
        record=record,
        record_positions={i: row for row, i in enumerate(train_idx)},
        on_epoch_end=on_epoch_end,
    )
