"""Semi-supervised training: labeled images take the supervised loss; unlabeled ones learn from an
exponential-moving-average teacher (Tarvainen & Valpola, 2017), either by consistency (mean squared
difference of the student's and the teacher's probabilities on differently perturbed views) or by
the teacher's confident pixels as pseudo-labels. Each step draws half its batch from each pool, so a
step costs what a supervised one does. The teacher's weights are the result."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.data import DecodedDataset, PairedAugment
from ml.precision import autocast_for
from ml.train import (
    EpochEnd,
    FitConfig,
    StepProgress,
    TrainingRecord,
    _draws,
    device_of,
    model_input,
    optimizer_and_schedule,
    segmentation_objective,
    steps_per_epoch,
    to_device,
)

RAMP_UP_FRACTION = 0.3
NOISE_STD = 0.1


def ramp_up(step: int, total: int) -> float:
    """Sigmoid ramp-up of the unlabeled weight over the first 30% of training."""
    length = max(1, int(RAMP_UP_FRACTION * total))
    t = min(step, length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


def _perturb(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Photometric only (noise, brightness), so student and teacher views stay pixel-aligned."""
    noise = torch.randn(x.shape, generator=g).to(x.device) * NOISE_STD
    gain = 1.0 + 0.1 * (torch.rand((x.shape[0], 1, 1, 1), generator=g).to(x.device) - 0.5)
    return (x * gain + noise).contiguous(memory_format=torch.channels_last)


def ema_decay_at(step: int, decay: float) -> float:
    """The teacher follows the student closely at first (the original mean teacher's warm-up), so a
    short run does not end with a teacher that is still mostly its random initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def _update_teacher(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def _unlabeled_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, method: str, confidence: float
) -> torch.Tensor:
    s = torch.sigmoid(student_logits.float()).flatten(1)
    t = torch.sigmoid(teacher_logits.float()).flatten(1)
    if method == "mean_teacher":
        return ((s - t) ** 2).mean(1)
    confident = ((t >= confidence) | (t <= 1 - confidence)).float()
    bce = F.binary_cross_entropy_with_logits(student_logits.float().flatten(1), (t >= 0.5).float(), reduction="none")
    return (bce * confident).sum(1) / confident.sum(1).clamp_min(1.0)


def _endless_draws(pool: np.ndarray, weights: dict[int, float] | None, half: int, g: torch.Generator):
    """Batches of up to `half` images of the pool, forever, epoch after epoch (weighted draws with weights)."""
    w = None if weights is None else np.array([weights[int(i)] for i in pool])
    size = min(half, len(pool))
    while True:
        for pick in _draws(len(pool), steps_per_epoch(len(pool), size), size, w, g):
            yield pool[pick.numpy()]


def _semi_loss(
    model: nn.Module,
    teacher: nn.Module,
    data: DecodedDataset,
    lab: np.ndarray,
    unl: np.ndarray,
    *,
    augment: PairedAugment | None,
    weight_of: Callable[[np.ndarray], torch.Tensor],
    g: torch.Generator,
    method: str,
    confidence: float,
):
    """One step's supervised loss on the labeled half (weighted), its objective output, and the
    unlabeled half's consistency loss against the teacher (weighted)."""
    device = device_of(model)
    images, masks = to_device(data.batch(lab), device)
    if augment is not None:
        images, masks = augment(images, masks)
    out = segmentation_objective(model, model_input(images, device), masks, lab)
    w_l = weight_of(lab)
    sup = (out.loss * w_l).sum() / w_l.sum().clamp_min(1e-8)
    u_images, u_masks = to_device(data.batch(unl), device)
    if augment is not None:
        u_images, _ = augment(u_images, u_masks)
    x = model_input(u_images, device)
    with torch.no_grad(), autocast_for(teacher, device):
        teacher_logits = teacher(_perturb(x, g))
    with autocast_for(model, device):
        student_logits = model(_perturb(x, g))
    w_u = weight_of(unl)
    unsup = (_unlabeled_loss(student_logits, teacher_logits, method, confidence) * w_u).sum() / w_u.sum().clamp_min(
        1e-8
    )
    return sup, unsup, out


def _weights_of(loss_weights: dict[int, float] | None, device: torch.device, idx: np.ndarray) -> torch.Tensor:
    if not loss_weights:
        return torch.ones(len(idx), device=device)
    return torch.tensor([loss_weights[int(i)] for i in idx], device=device)


def _optimize(opt, sched, loss: torch.Tensor) -> float:
    """One optimizer and schedule step on the loss; answers its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def _with_teacher_in_eval(on_epoch_end: EpochEnd, epoch: int, teacher: nn.Module) -> None:
    teacher.eval()
    on_epoch_end(epoch, teacher)
    teacher.train()


def _semi_setup(model, data, labeled, unlabeled, cfg: FitConfig, loss_weights, sampling_weights, *, method, confidence):
    """The teacher (a copy of the model), optimizer and schedule, the endless labeled and unlabeled
    draws, one step's loss function and the steps per epoch; seeded in this order (a change here
    changes every semi-supervised result)."""
    half = max(1, cfg.batch_size // 2)
    steps = steps_per_epoch(len(labeled) + len(unlabeled), 2 * half)
    total = steps * cfg.epochs
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + 1)
    augment = PairedAugment() if cfg.augment else None
    teacher = copy.deepcopy(model)
    teacher.train()
    opt, sched = optimizer_and_schedule(model, cfg, total)
    lab_draws = _endless_draws(np.asarray(labeled), sampling_weights, half, g)
    unl_draws = _endless_draws(np.asarray(unlabeled), sampling_weights, half, g)
    weight_of = functools.partial(_weights_of, loss_weights, device_of(model))
    step_loss = functools.partial(
        _semi_loss,
        model,
        teacher,
        data,
        augment=augment,
        weight_of=weight_of,
        g=g,
        method=method,
        confidence=confidence,
    )
    return teacher, opt, sched, (lab_draws, unl_draws), step_loss, steps


def fit_semi(
    model: nn.Module,
    data: DecodedDataset,
    labeled: list[int],
    unlabeled: list[int],
    cfg: FitConfig,
    *,
    method: str = "pseudo_label",
    unlabeled_weight: float = 1.0,
    ema_decay: float = 0.99,
    confidence: float = 0.9,
    loss_weights: dict[int, float] | None = None,
    sampling_weights: dict[int, float] | None = None,
    progress: StepProgress | None = None,
    record: TrainingRecord | None = None,
    record_positions: dict[int, int] | None = None,
    on_epoch_end: EpochEnd | None = None,
) -> list[float]:
    """Trains model in place (ending with the teacher's weights). Weights are per dataset index;
    record_positions maps a dataset index to its row in record (labeled images only are recorded)."""
    if not unlabeled:
        raise ValueError("semi-supervised training needs unlabeled images")
    teacher, opt, sched, draws, step_loss, steps = _semi_setup(
        model, data, labeled, unlabeled, cfg, loss_weights, sampling_weights, method=method, confidence=confidence
    )
    total = steps * cfg.epochs
    model.train()
    epoch_losses, done = [], 0
    for epoch in range(cfg.epochs):
        running = 0.0
        for _ in range(steps):
            lab, unl = next(draws[0]), next(draws[1])
            sup, unsup, out = step_loss(lab, unl)
            loss = _optimize(opt, sched, sup + unlabeled_weight * ramp_up(done, total) * unsup)
            _update_teacher(teacher, model, ema_decay_at(done, ema_decay))
            if record is not None and record_positions is not None:
                record.add(np.array([record_positions[int(i)] for i in lab]), epoch, out.success)
            running += loss
            done += 1
            if progress is not None:
                progress(done / total, loss)
        epoch_losses.append(running / steps)
        if on_epoch_end is not None:  # the teacher is the model kept in the end
            _with_teacher_in_eval(on_epoch_end, epoch, teacher)
    model.load_state_dict(teacher.state_dict())
    model.eval()
    return epoch_losses
