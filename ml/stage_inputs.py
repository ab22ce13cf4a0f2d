"""What every stage reads (StageInputs): the spec, the decoded images and their split, the targets the
setting trains on, the model config, the device and the precision. Below the stages and the scorers,
which both take it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from contract.jobspec import JobSpec
from ml.data import DatasetIndex, DecodedDataset
from ml.models import ModelConfig
from ml.prune import recalibrate_batchnorm
from ml.setting import Targets, fit_in_setting
from ml.train import FitConfig


@dataclass(frozen=True)
class StageInputs:
    """What every stage reads: the spec, the decoded images and their split, the targets the setting
    trains on, the model config and the device."""

    spec: JobSpec
    index: DatasetIndex
    data: DecodedDataset
    val_idx: list[int]
    targets: Targets  # their train_idx is the training images'
    model_config: ModelConfig
    device: torch.device
    precision: str  # train.precision resolved for the device: fp32 or bf16
    encoder_weights: dict[str, torch.Tensor] | None = None  # model.weights, checked (ml.encoder_weights)

    def fresh_model(self) -> nn.Module:
        """A new model to train: its encoder starts from model.weights where the spec names them."""
        model = self.model_config.build()
        if self.encoder_weights is not None:
            model.encoder.load_state_dict(self.encoder_weights, strict=True)
        return model

    @property
    def train_idx(self) -> list[int]:
        return self.targets.train_idx

    def fit_config(self, seed: int, *, epochs: int | None = None, lr: float | None = None) -> FitConfig:
        t = self.spec.train
        return FitConfig(
            epochs=epochs or t.epochs,
            batch_size=t.batch_size,
            lr=lr or t.lr,
            weight_decay=t.weight_decay,
            schedule=t.schedule,
            augment=t.augment,
            seed=seed,
        )

    def fit(self, model: nn.Module, cfg: FitConfig, **kwargs) -> list[float]:
        return fit_in_setting(model, self.data, self.targets, self.spec, cfg, **kwargs)

    def reference(self, dense: nn.Module) -> nn.Module:
        """The dense model the pruned ones are compared with: dense itself, or with
        prune.bn_recalibration a copy whose BatchNorm statistics are re-estimated on the same
        unaugmented training images as theirs, so the two differ by the pruned weights alone (the
        dense model's own statistics come from augmented images in train mode: a shift that pruning
        did not cause)."""
        if not self.spec.prune.bn_recalibration:
            return dense
        return recalibrate_batchnorm(copy.deepcopy(dense), self.data, self.train_idx)

    def image_ids(self, indices: list[int]) -> list[str]:
        return [self.index.records[i].image_id for i in indices]
