"""Global magnitude (L1 unstructured) pruning of every conv and transposed-conv weight, on copies
of the dense model, made permanent; optional fine-tuning with the masks kept on."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from ml.models import prunable_layers


@dataclass
class SparsityReport:
    requested: float
    achieved: float  # zeros / weights over all pruned layers
    layers: dict[str, float]  # per layer, fraction of zero weights

    def as_dict(self) -> dict:
        return {"requested": self.requested, "achieved": self.achieved, "layers": self.layers}


def apply_pruning_masks(dense: nn.Module, sparsity: float) -> nn.Module:
    """A copy of dense with pruning masks attached (weights not yet permanent)."""
    # pruning reshapes weights with view(): a channels_last copy must be made contiguous first
    model = copy.deepcopy(dense).to(memory_format=torch.contiguous_format)
    params = [(module, "weight") for _, module in prunable_layers(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
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


def prune_model(dense: nn.Module, sparsity: float) -> tuple[nn.Module, SparsityReport]:
    model = make_permanent(apply_pruning_masks(dense, sparsity))
    return model.eval(), sparsity_report(model, sparsity)
