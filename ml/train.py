"""Training: BCE + soft Dice per sample, per-sample loss weights, optional oversampling, AdamW with a
one-cycle or cosine schedule, channels_last, bfloat16 autocast where the model's precision says so
(ml.precision; the loss stays float32). Seeded and deterministic on CPU for a given thread count."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.data import DecodedDataset, PairedAugment, to_model_input
from ml.precision import autocast_for, set_precision

# fraction of this fit done, latest batch loss
StepProgress = Callable[[float, float], None]
# (epoch index, the model as it stands after that epoch): called in eval mode, training resumes after
EpochEnd = Callable[[int, nn.Module], None]


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    augment: bool = True
    seed: int = 0


class TrainingRecord:
    """Per training sample and epoch, what the model made of it in its training step (augmented view,
    train mode): its success in [0, 1] (Dice of the binarized mask; for a classifier, whether the
    label was right). NaN where a sample was not drawn (or has no target) that epoch. Feeds the
    forgetting and dynamic-Dice scorers."""

    def __init__(self, n: int, epochs: int):
        self.dice = np.full((n, epochs), np.nan, dtype=np.float32)

    def add(self, positions: np.ndarray, epoch: int, success: torch.Tensor) -> None:
        self.dice[positions, epoch] = success.detach().float().cpu().numpy()


@dataclass
class StepOutput:
    loss: torch.Tensor  # per sample
    success: torch.Tensor  # per sample, in [0, 1]
    error: torch.Tensor  # per sample, L2 norm of p - y over pixels / sqrt(pixels): the root-mean-square error


# (model, model input, masks, dataset indices) -> per-sample loss, success and error
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, np.ndarray], StepOutput]
# (the batch's positions in the training list, its per-sample loss, detached) -> per-sample weights,
# multiplied into the loss weights: remedies that weigh each batch as it comes (ml.remedies)
BatchWeighting = Callable[[np.ndarray, torch.Tensor], torch.Tensor]


def binary_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of boolean (N, ...) tensors; two empty masks agree fully (1)."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    inter = (a * b).sum(1)
    denom = a.sum(1) + b.sum(1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))


def segmentation_objective(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, _indices: np.ndarray) -> StepOutput:
    with autocast_for(model, x.device):
        logits = model(x)
    loss = per_sample_loss(logits, masks)
    with torch.no_grad():
        prob = torch.sigmoid(logits.float()).flatten(1)
        error = (prob - masks.flatten(1).float()).square().mean(1).sqrt()
    return StepOutput(loss, binary_dice(prob > 0.5, masks.bool()), error)


class ClassificationObjective:
    """Image-level labels (1 positive, 0 negative, NaN unknown: no loss) for a CamClassifier, with
    positives weighted by the negatives-to-positives ratio so a rare class still counts."""

    def __init__(self, labels: np.ndarray, pos_weight: float):
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.pos_weight = pos_weight

    def __call__(self, model: nn.Module, x: torch.Tensor, _masks: torch.Tensor, indices: np.ndarray) -> StepOutput:
        y = self.labels[torch.as_tensor(indices)].to(x.device)
        known = ~torch.isnan(y)
        target = torch.nan_to_num(y, nan=0.0)
        with autocast_for(model, x.device):
            logit = model.classify(x)
        weight = torch.where(target > 0.5, self.pos_weight, 1.0) * known
        loss = F.binary_cross_entropy_with_logits(logit.float(), target, reduction="none") * weight
        with torch.no_grad():
            prob = torch.sigmoid(logit.float())
            success = ((prob > 0.5).float() == target).float()
            error = (prob - target).abs()
            nan = torch.full_like(prob, float("nan"))
        return StepOutput(loss, torch.where(known, success, nan), torch.where(known, error, nan))


def per_sample_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """BCE (mean over pixels) + soft Dice loss, one value per sample."""
    target = masks.float()
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = (2 * (prob * flat).sum(1) + eps) / (prob.sum(1) + flat.sum(1) + eps)
    return bce + (1 - dice)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def prepare_for_device(model: nn.Module, device: str | torch.device, *, precision: str) -> nn.Module:
    """The model on its device in channels_last, its forward passes in this resolved precision (fp32 or bf16)."""
    return set_precision(model.to(device=device, memory_format=torch.channels_last), precision)


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """A batch moves to the device before augmentation, which then runs there."""
    return tuple(t.to(device, non_blocking=True) for t in batch)


def model_input(images_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = to_model_input(images_u8.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last)


def _draws(
    n: int, steps: int, batch_size: int, sampling_weights: np.ndarray | None, g: torch.Generator
) -> Iterator[torch.Tensor]:
    """Positions into the training list for each step. Uniform: a fresh permutation per epoch.
    Weighted: draws with replacement in proportion to sampling_weights, the same number of steps."""
    if sampling_weights is None:
        order = torch.randperm(n, generator=g)
        for s in range(steps):
            yield order[s * batch_size : (s + 1) * batch_size]
        return
    probs = torch.as_tensor(sampling_weights, dtype=torch.float64)
    picks = torch.multinomial(probs, steps * batch_size, replacement=True, generator=g)
    for s in range(steps):
        yield picks[s * batch_size : (s + 1) * batch_size]


def optimizer_and_schedule(model: nn.Module, cfg: FitConfig, total_steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        # OneCycleLR divides by its warm-up's length, pct_start * total_steps - 1: zero at 5 steps at 0.2
        pct_start = 0.4 if total_steps == 5 else 0.2
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct_start)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    return opt, sched


def steps_per_epoch(n: int, batch_size: int) -> int:
    # drop the ragged last batch (a batch of one breaks BatchNorm); never fewer than one step
    return max(1, n // batch_size)


def fit(
    model: nn.Module,
    data: DecodedDataset,
    indices: list[int],
    cfg: FitConfig,
    *,
    loss_weights: np.ndarray | None = None,
    sampling_weights: np.ndarray | None = None,
    progress: StepProgress | None = None,
    record: TrainingRecord | None = None,
    objective: Objective = segmentation_objective,
    on_epoch_end: EpochEnd | None = None,
    batch_weighting: BatchWeighting | None = None,
) -> list[float]:
    """Train in place on data[indices]; loss_weights and sampling_weights align with indices.
    Returns the mean training loss of each epoch; with record, also fills per-sample dynamics."""
    device = device_of(model)
    positions = np.asarray(indices)
    n = len(positions)
    batch_size = min(cfg.batch_size, n)
    steps = steps_per_epoch(n, batch_size)
    total = steps * cfg.epochs
    weights = torch.ones(n) if loss_weights is None else torch.as_tensor(loss_weights, dtype=torch.float32)

    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + 1)  # augmentation and dropout draw from the global generator
    augment = PairedAugment() if cfg.augment else None
    opt, sched = optimizer_and_schedule(model, cfg, total)

    model.train()
    epoch_losses = []
    done = 0
    for epoch in range(cfg.epochs):
        running = 0.0
        for pick in _draws(n, steps, batch_size, sampling_weights, g):
            images, masks = to_device(data.batch(positions[pick.numpy()]), device)
            if augment is not None:
                images, masks = augment(images, masks)
            w = weights[pick].to(device)
            out = objective(model, model_input(images, device), masks, positions[pick.numpy()])
            if batch_weighting is not None:
                w = w * batch_weighting(pick.numpy(), out.loss.detach()).to(device)
            loss = (out.loss * w).sum() / w.sum().clamp_min(1e-8)
            if record is not None:
                record.add(pick.numpy(), epoch, out.success)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            done += 1
            if progress is not None:
                progress(done / total, loss.item())
        epoch_losses.append(running / steps)
        if on_epoch_end is not None:
            model.eval()
            on_epoch_end(epoch, model)
            model.train()
    model.eval()
    return epoch_losses


def iterate_batches(indices: list[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])


@torch.no_grad()
def predict_logits(model: nn.Module, images_u8: torch.Tensor) -> torch.Tensor:
    return predict_each([model], images_u8)[0]


@torch.no_grad()
def predict_each(models: list[nn.Module], images_u8: torch.Tensor) -> list[torch.Tensor]:
    """Every model's logits for one batch, the input prepared once per device."""
    inputs: dict[torch.device, torch.Tensor] = {}
    out = []
    for model in models:
        device = device_of(model)
        if device not in inputs:
            inputs[device] = model_input(images_u8, device)
        with autocast_for(model, device):
            out.append(model(inputs[device]).float())
    return out


@torch.no_grad()
def localize_and_classify(
    models: list[nn.Module], images_u8: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """CAM classifiers (ml.models.CamClassifier): each model's map, as its forward answers it, and its
    classification logit (on the CPU), from one pass; forward and classify would each run the network."""
    inputs: dict[torch.device, torch.Tensor] = {}
    maps, logits = [], []
    for model in models:
        device = device_of(model)
        if device not in inputs:
            inputs[device] = model_input(images_u8, device)
        with autocast_for(model, device):
            scaled, logit = model.cam(inputs[device])
            maps.append((scaled - model.cam_threshold).float())
        logits.append(logit.float().cpu())
    return maps, logits
