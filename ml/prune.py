"""Magnitude (L1 unstructured) pruning of every conv and transposed-conv weight, on copies of the
dense model: one threshold over all layers (global) or one per layer (layerwise, as in Hooker et
al.'s pruning code). Optional fine-tuning with the masks kept on, BatchNorm statistics re-estimated
for the pruned weights, and a health report that says whether a pruned model still predicts."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from ml.data import DecodedDataset
from ml.metrics import auroc
from ml.models import prunable_layers
from ml.precision import autocast_for
from ml.train import binary_dice, iterate_batches, localize_and_classify, model_input, predict_logits

SCOPES = ("global", "layerwise")
# predicting less than this share of the dense model's foreground counts as predicting nothing
EMPTY_FOREGROUND_RATIO = 0.05
# covering more than this share of the dense model's background (on top of its foreground) counts as
# predicting everything: an all-foreground mask scores Dice 0.38 on HAM10000, which a Dice rule alone
# at 0.5 x the dense model's 0.92 would miss by only 0.08
FULL_BACKGROUND_SHARE = 0.5


@dataclass
class SparsityReport:
    requested: float
    achieved: float  # zeros / weights over all pruned layers
    layers: dict[str, float]  # per layer, fraction of zero weights

    @property
    def zeroed_layers(self) -> int:
        return sum(1 for v in self.layers.values() if v >= 1.0)

    def as_dict(self) -> dict:
        return {
            "requested": self.requested,
            "achieved": self.achieved,
            "layers": self.layers,
            "zeroed_layers": self.zeroed_layers,
        }


def kept_dense(model: nn.Module) -> set[str]:
    """What layerwise pruning leaves whole: the first convolution (a few hundred weights that every
    feature depends on) and the output heads (convolutions to a single channel: a U-Net's 16 output
    weights pruned by half is a different model, not a sparser one)."""
    layers = prunable_layers(model)
    heads = {name for name, m in layers if m.out_channels == 1}
    return ({layers[0][0]} if layers else set()) | heads


def apply_pruning_masks(dense: nn.Module, sparsity: float, scope: str = "global") -> nn.Module:
    """A copy of dense with pruning masks attached (weights not yet permanent). layerwise: every
    layer but kept_dense() pruned to the sparsity by its own threshold."""
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
    # pruning reshapes weights with view(): a channels_last copy must be made contiguous first
    model = copy.deepcopy(dense).to(memory_format=torch.contiguous_format)
    if scope == "global":
        layers = [module for _, module in prunable_layers(model)]
        prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        keep = kept_dense(model)
        for name, module in prunable_layers(model):
            if name not in keep:
                prune.l1_unstructured(module, "weight", amount=sparsity)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    for _, module in prunable_layers(model):
        if prune.is_pruned(module):
            prune.remove(module, "weight")
    return model


def sparsity_report(model: nn.Module, requested: float) -> SparsityReport:
    layers = {}
    zeros = total = 0
    for name, module in prunable_layers(model):
        w = module.weight
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
    return SparsityReport(requested=requested, achieved=zeros / total, layers=layers)


def prune_model(dense: nn.Module, sparsity: float, scope: str = "global") -> tuple[nn.Module, SparsityReport]:
    model = make_permanent(apply_pruning_masks(dense, sparsity, scope))
    return model.eval(), sparsity_report(model, sparsity)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, data: DecodedDataset, indices: list[int], batch_size: int = 32
) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance for the model's present weights:
    forward passes over the unaugmented images in train mode, with a cumulative average (momentum
    None), no gradient. Pruning changes what each layer sees; statistics left from the dense model are
    an accident of the order of operations, not a loss of capacity."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    model.train()
    try:
        for batch in iterate_batches(indices, batch_size):
            if len(batch) < 2:  # a batch of one has no variance to estimate
                continue
            images, _ = data.batch(batch)
            with autocast_for(model, device):
                model(model_input(images, device))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model


@dataclass
class Prediction:
    """What a model makes of the validation images: mean Dice against the masks (None without masks),
    the mean share of pixels it calls foreground, and for a classifier its AUROC (None without
    labels of both classes)."""

    dice: float | None
    foreground: float
    per_image_dice: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    auroc: float | None = None


@torch.no_grad()
def validation_prediction(
    model: nn.Module,
    data: DecodedDataset,
    indices: list[int],
    has_target: np.ndarray,
    batch_size: int = 64,
    labels: np.ndarray | None = None,
) -> Prediction:
    """has_target aligns with indices: which images' masks may be compared against; labels (a
    classifier's image labels, NaN unknown) too."""
    classifier = labels is not None and hasattr(model, "classify")
    dice, foreground, probs = [], [], []
    for start, batch in zip(range(0, len(indices), batch_size), iterate_batches(indices, batch_size)):
        images, masks = data.batch(batch)
        if classifier:
            maps, logits = localize_and_classify([model], images)
            pred = maps[0] > 0
            probs.append(torch.sigmoid(logits[0]).numpy())
        else:
            pred = predict_logits(model, images) > 0
        foreground.append(pred.flatten(1).float().mean(1).cpu().numpy())
        d = binary_dice(pred.cpu(), masks.bool()).numpy()
        dice.append(np.where(has_target[start : start + len(batch)], d, np.nan))
    per_image = np.concatenate(dice) if dice else np.zeros(0)
    known = per_image[np.isfinite(per_image)]
    auc = None
    if classifier and probs:
        labelled = ~np.isnan(labels)
        auc = auroc(np.concatenate(probs)[labelled], labels[labelled])
    return Prediction(
        dice=float(known.mean()) if known.size else None,
        foreground=float(np.concatenate(foreground).mean()) if foreground else 0.0,
        per_image_dice=per_image,
        auroc=auc,
    )


def health(report: SparsityReport, pruned: Prediction, dense: Prediction, *, degenerate_fraction: float) -> dict:
    """The sparsity report with the pruned model's validation Dice and foreground next to the dense
    model's, and whether the pruned model is degenerate, on either side: it predicts (nearly) no
    foreground where the dense model does, or (nearly) everything (over FULL_BACKGROUND_SHARE of the
    dense model's background on top of its foreground), or its Dice falls below degenerate_fraction
    of the dense model's; for a classifier, also when its AUROC keeps under degenerate_fraction of
    the dense model's margin over chance."""
    reasons = []
    if dense.foreground > 0 and pruned.foreground < EMPTY_FOREGROUND_RATIO * dense.foreground:
        reasons.append(
            f"predicts {pruned.foreground:.4f} of pixels as foreground, under {EMPTY_FOREGROUND_RATIO:g} of the dense model's {dense.foreground:.4f}"
        )
    ceiling = dense.foreground + FULL_BACKGROUND_SHARE * (1 - dense.foreground)
    if dense.foreground < 1 and pruned.foreground > ceiling:
        reasons.append(
            f"predicts {pruned.foreground:.4f} of pixels as foreground, over {ceiling:.4f} (the dense model's "
            f"{dense.foreground:.4f} plus {FULL_BACKGROUND_SHARE:g} of the rest): (nearly) everything"
        )
    if pruned.dice is not None and dense.dice is not None and pruned.dice < degenerate_fraction * dense.dice:
        reasons.append(
            f"validation Dice {pruned.dice:.4f} is under {degenerate_fraction:g} x the dense model's {dense.dice:.4f}"
        )
    # (a dense classifier no better than chance has no margin to lose: its maps are all there is)
    if (
        pruned.auroc is not None
        and dense.auroc is not None
        and dense.auroc > 0.5
        and pruned.auroc - 0.5 < degenerate_fraction * (dense.auroc - 0.5)
    ):
        reasons.append(
            f"its classifier's AUROC {pruned.auroc:.4f} kept under {degenerate_fraction:g} of the dense model's "
            f"{dense.auroc:.4f} margin over chance (0.5): it no longer tells the classes apart"
        )
    return {
        **report.as_dict(),
        "validation_dice": pruned.dice,
        "dense_validation_dice": dense.dice,
        "foreground": pruned.foreground,
        "dense_foreground": dense.foreground,
        **({"auroc": pruned.auroc, "dense_auroc": dense.auroc} if pruned.auroc is not None else {}),
        "degenerate": bool(reasons),
        "degenerate_reasons": reasons,
    }
