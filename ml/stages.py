"""The stages as plain functions: each takes the run's inputs (StageInputs), models and what the
stage before it produced, and returns a typed result. They know nothing of run folders, names on
disk or units: ml.pipeline.Run loads their inputs, saves what they return and resumes between them."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from contract.results import ImageScore
from contract.roster import sparsity_key
from ml import hardness, remedies, subgroups
from ml.prune import (
    apply_pruning_masks,
    health,
    make_permanent,
    recalibrate_batchnorm,
    sparsity_report,
    validation_prediction,
)
from ml.scorers import DenseSeed, score_others
from ml.scoring import HtlScores, score_disagreement, seeded_tiebreak, select_htl
from ml.stage_inputs import StageInputs
from ml.train import BatchWeighting, TrainingRecord, prepare_for_device

FINETUNE_LR_DIVISOR = 10.0

Fraction = Callable[[float], None]  # the share of this call's work done
FractionAndLoss = Callable[[float, float | None], None]


class DegenerateError(RuntimeError):
    """Every pruned model collapsed: nothing is left to rank the images by."""


# --- dense, attended and control models ----------------------------------------------------------
@dataclass
class TrainedModel:
    model: nn.Module
    epoch_losses: list[float]
    validation_dice: list[float | None] | None = None  # per epoch (dense models: the curve)
    dynamics: dict[str, np.ndarray] | None = None  # 'dice' per training image and epoch; 'el2n' when asked


def train_model(
    inputs: StageInputs,
    seed: int,
    *,
    loss_weights: np.ndarray | None = None,
    sampling_weights: np.ndarray | None = None,
    record_dynamics: bool = False,
    progress: FractionAndLoss | None = None,
    start: nn.Module | None = None,
    batch_weighting: BatchWeighting | None = None,
) -> TrainedModel:
    """A fresh model trained from seed; weights align with inputs.train_idx. record_dynamics (the
    dense models): the validation curve, and what the dynamics scorers read off the training.
    start: fine-tune a copy of this model instead (attention.mode fine_tune: attention's
    finetune_epochs at train.lr x finetune_lr_factor)."""
    spec = inputs.spec
    torch.manual_seed(seed)
    model = prepare_for_device(
        inputs.fresh_model() if start is None else copy.deepcopy(start),
        inputs.device,
        precision=inputs.precision,
    )
    weighing = {"loss_weights": loss_weights, "sampling_weights": sampling_weights, "batch_weighting": batch_weighting}
    if start is not None:
        a = spec.attention
        cfg = inputs.fit_config(seed, epochs=a.finetune_epochs, lr=spec.train.lr * a.finetune_lr_factor)
        return TrainedModel(model, inputs.fit(model, cfg, progress=progress, **weighing))
    record = TrainingRecord(len(inputs.train_idx), spec.train.epochs) if record_dynamics else None
    curve: list[float | None] = []
    early_error: dict[str, np.ndarray] = {}

    def on_epoch_end(epoch: int, current: nn.Module) -> None:
        curve.append(
            validation_prediction(current, inputs.data, inputs.val_idx, inputs.targets.localizable(inputs.val_idx)).dice
        )
        if epoch == hardness.el2n_epoch(spec.train.epochs) and "el2n" in spec.scorers:
            early_error["el2n"] = hardness.error_norm(
                current, inputs.data, inputs.train_idx, inputs.targets.objective()
            )

    losses = inputs.fit(
        model,
        inputs.fit_config(seed),
        record=record,
        on_epoch_end=on_epoch_end if record_dynamics else None,
        progress=progress,
        **weighing,
    )
    if not record_dynamics:
        return TrainedModel(model, losses)
    return TrainedModel(model, losses, curve, {"dice": record.dice, **early_error})


# --- pruning ---------------------------------------------------------------------------------------
@dataclass
class PrunedModel:
    sparsity: float
    model: nn.Module
    health: dict  # achieved and per-layer sparsity, validation Dice next to the dense model's, degenerate


def prune_dense(
    inputs: StageInputs, dense: nn.Module, seed: int, *, progress: FractionAndLoss | None = None
) -> list[PrunedModel]:
    """The dense model pruned at each sparsity: fine-tuned if asked, BatchNorm statistics re-estimated
    if asked, and each one's health next to the dense model's."""
    p = inputs.spec.prune
    has_target = inputs.targets.localizable(inputs.val_idx)
    labels = inputs.targets.image_labels[inputs.val_idx] if inputs.targets.weak else None
    dense_prediction = validation_prediction(
        inputs.reference(dense), inputs.data, inputs.val_idx, has_target, labels=labels
    )
    out = []
    for i, s in enumerate(p.sparsities):
        model = prepare_for_device(apply_pruning_masks(dense, s, p.scope), inputs.device, precision=inputs.precision)
        if p.finetune_epochs:
            cfg = inputs.fit_config(seed, epochs=p.finetune_epochs, lr=inputs.spec.train.lr / FINETUNE_LR_DIVISOR)
            inputs.fit(
                model,
                cfg,
                progress=None if progress is None else lambda f, loss, i=i: progress((i + f) / len(p.sparsities), loss),
            )
        model = prepare_for_device(make_permanent(model), inputs.device, precision=inputs.precision).eval()
        if p.bn_recalibration:
            recalibrate_batchnorm(model, inputs.data, inputs.train_idx)
        prediction = validation_prediction(model, inputs.data, inputs.val_idx, has_target, labels=labels)
        out.append(
            PrunedModel(
                s,
                model,
                health(
                    sparsity_report(model, s), prediction, dense_prediction, degenerate_fraction=p.degenerate_fraction
                ),
            )
        )
        if progress is not None:
            progress((i + 1) / len(p.sparsities), None)
    return out


# --- scoring and ranking ---------------------------------------------------------------------------
@dataclass
class SeedScores:
    """One dense seed's view of every training image: pruning disagreement per sparsity, and the
    other scorers the spec asked for (NaN where undefined)."""

    per_sparsity: dict[float, np.ndarray]
    others: dict[str, np.ndarray]


def score_seed(
    inputs: StageInputs,
    dense: nn.Module,
    pruned: dict[float, nn.Module],
    seed: int,
    *,
    dynamics: dict[str, np.ndarray] | None = None,
    masks_out: np.ndarray | None = None,
    progress: Fraction | None = None,
) -> SeedScores:
    """dynamics: what train_model recorded for this dense model (needed by the dynamics scorers).
    masks_out: receives every binarized prediction (see score_disagreement)."""
    spec, data, train_idx = inputs.spec, inputs.data, inputs.train_idx
    result = score_disagreement(
        inputs.reference(dense),
        pruned,
        data,
        train_idx,
        batch_size=max(spec.train.batch_size, 32),
        progress=None if progress is None else lambda f: progress(0.8 * f),
        masks_out=masks_out,
    )
    others = score_others(DenseSeed(inputs, dense, seed, dynamics), spec.scorers)
    if progress is not None:
        progress(1.0)
    return SeedScores(result.per_sparsity, others)


@dataclass
class Ranking:
    scores: list[ImageScore]  # hardest first
    is_htl: np.ndarray  # per training image, in train_idx order
    others: dict[str, np.ndarray]  # the other scorers, averaged over seeds
    ranked_by: list[float]  # the sparsities that are not degenerate
    agreement: list[dict]  # how the scorers' top sets agree


def rank_images(
    inputs: StageInputs, per_seed: list[SeedScores], *, degenerate: set[float], groups: dict[str, list[str]]
) -> Ranking:
    """Scores averaged over the dense seeds (as PIE averages over model populations), the HTL score
    averaged over the sparsities that are not degenerate, and the HTL set at its top (weakly
    supervised: the top of the positives, Targets.train_rankable). groups: per attribute, each
    training image's subgroup."""
    spec = inputs.spec
    sparsities = spec.prune.sparsities
    per_sparsity = {s: np.mean([p.per_sparsity[s] for p in per_seed], axis=0) for s in sparsities}
    ranked_by = [s for s in sparsities if s not in degenerate]
    if not ranked_by:
        raise DegenerateError(
            f"every pruned model is degenerate (sparsities {', '.join(map(sparsity_key, sparsities))}; see the pruning "
            "report): nothing is left to rank by; choose lower prune.sparsities, train longer, or set prune.bn_recalibration"
        )
    htl_score = np.mean(np.stack([per_sparsity[s] for s in ranked_by]), axis=0)
    others = {name: np.mean([p.others[name] for p in per_seed], axis=0) for name in per_seed[0].others}
    tiebreak = seeded_tiebreak(len(htl_score), spec.split.seed)
    rankable = inputs.targets.train_rankable
    scores = HtlScores(
        image_indices=list(inputs.train_idx),
        per_sparsity=per_sparsity,
        htl_score=htl_score,
        tiebreak=tiebreak,
        eligible=rankable,
    )
    is_htl = select_htl(
        scores.htl_score,
        top_fraction=spec.htl.top_fraction,
        threshold=spec.htl.threshold,
        tiebreak=tiebreak,
        eligible=rankable,
    )
    ranks = scores.ranks()
    items = []
    for j, i in enumerate(inputs.train_idx):
        record = inputs.index.records[i]
        items.append(
            ImageScore(
                image_id=record.image_id,
                htl_score=float(scores.htl_score[j]),
                is_htl=bool(is_htl[j]),
                rank=int(ranks[j]),
                labeled=bool(inputs.targets.train_labeled[j]),
                per_sparsity={sparsity_key(s): float(v[j]) for s, v in sorted(scores.per_sparsity.items())},
                scores={
                    name: (float(values[j]) if np.isfinite(values[j]) else None) for name, values in others.items()
                },
                attributes=dict(record.attributes),
                subgroups={attribute: labels[j] for attribute, labels in groups.items()},
            )
        )
    items.sort(key=lambda item: item.rank)
    top_fraction = spec.htl.top_fraction or max(float(is_htl.mean()), 1 / len(is_htl))
    agreement = hardness.agreement({"pruning": scores.htl_score, **others}, top_fraction) if others else []
    return Ranking(items, is_htl, others, ranked_by, agreement)


# --- attention -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionSets:
    """Which training images (by id) attention boosts: the top of the attention scorer, as many as
    the HTL set; and per seed (as a string: JSON keys), the random control set of that size."""

    scorer: str
    size: int
    attended: list[str]
    control: dict[str, list[str]] | None = None
    excluded: list[str] = dataclasses.field(
        default_factory=list
    )  # left out of both: label issues, semi's images without a mask
    # group_balance: each boosted image's sampling weight (every other image weighs 1), the control's
    # per seed, and the flagged subgroups as [attribute, value]
    weights: dict[str, float] | None = None
    control_weights: dict[str, dict[str, float]] | None = None
    groups: list[list[str]] = dataclasses.field(default_factory=list)
    # group_dro: each grouped image's group (1 + its first flagged group; every other image is in group 0),
    # and the control's per seed
    group_of: dict[str, int] | None = None
    control_group_of: dict[str, dict[str, int]] | None = None

    def weights_of(self, base: str, seed: int) -> dict[str, float] | None:
        """The per-image sampling weights the attended model ('attended') or the seed's control uses;
        None: the strategy boosts its set by attention.factor."""
        if base == "attended":
            return self.weights
        return None if self.control_weights is None else self.control_weights[str(seed)]

    def group_of_model(self, base: str, seed: int) -> dict[str, int] | None:
        """group_dro: the groups the attended model or the seed's control weighs online."""
        if base == "attended":
            return self.group_of
        return None if self.control_group_of is None else self.control_group_of[str(seed)]


def attention_sets(
    inputs: StageInputs,
    ranking: Ranking,
    seeds: list[int],
    *,
    excluded: set[str] = frozenset(),
    train_dice: np.ndarray | None = None,
    enrichment: dict | None = None,
) -> AttentionSets:
    """The attended set: as many images as the HTL set, the top of the attention scorer's ranking
    among the training images not excluded (label issues, with attention.exclude_label_issues; in the
    semi-supervised setting the images without a mask, with attention.unlabeled leave_out); the
    control sets: as many, drawn at random per seed from the same pool. attention.strategy jtt: the
    dense models' worst train_dice instead of the ranking; group_balance: the subgroups enrichment
    flags, balanced (ml.remedies)."""
    spec = inputs.spec
    k = int(ranking.is_htl.sum())
    ids = inputs.image_ids(inputs.train_idx)
    eligible = np.array([image_id not in excluded for image_id in ids])
    if spec.attention.strategy in ("group_balance", "group_dro"):
        return _group_sets(inputs, ranking, seeds, ids, eligible, enrichment or {}, excluded)
    if spec.attention.strategy == "topk_loss":  # nothing chosen ahead: each batch picks its hardest samples
        control = {str(seed): [] for seed in seeds} if spec.attention.control == "random" else None
        return AttentionSets("batch_loss", 0, [], control, excluded=sorted(excluded))
    scorer = spec.attention.scorer
    if spec.attention.strategy == "jtt":
        if train_dice is None:
            raise ValueError("attention.strategy jtt needs the dense models' training Dice")
        scorer = "dense_training_dice"
        order = remedies.error_set(train_dice, eligible, k)
    elif scorer == "pruning":
        rank = {s.image_id: s.rank for s in ranking.scores}
        order = np.argsort([rank[image_id] for image_id in ids], kind="stable")
    else:
        values = ranking.others[scorer]
        finite = np.flatnonzero(np.isfinite(values))
        order = finite[np.lexsort((finite, -values[finite]))]
    attended = np.sort(order[eligible[order]][:k])
    control = None
    if spec.attention.control == "random":
        pool = np.flatnonzero(eligible)
        size = min(k, len(pool))
        control = {
            str(seed): [
                ids[j]
                for j in np.sort(np.random.default_rng([spec.split.seed, seed]).choice(pool, size, replace=False))
            ]
            for seed in seeds
        }
    return AttentionSets(scorer, len(attended), [ids[j] for j in attended], control, excluded=sorted(excluded))


def _group_sets(
    inputs: StageInputs,
    ranking: Ranking,
    seeds: list[int],
    ids: list[str],
    eligible: np.ndarray,
    enrichment: dict,
    excluded: set[str],
) -> AttentionSets:
    """attention.strategy group_balance and group_dro: the flagged subgroups' eligible images, weighted
    so each group draws as much as the images in no group (group_balance) or indexed for group DRO;
    per seed, random groups of the same sizes and overlap from the same pool, treated alike. ids and
    eligible align with the training images."""
    by_id = {s.image_id: s.subgroups for s in ranking.scores}
    groups = subgroups.over_represented(enrichment)
    members = remedies.group_members(groups, [by_id[i] for i in ids], eligible)
    dro = inputs.spec.attention.strategy == "group_dro"

    def per_image(sets: list[np.ndarray]) -> dict:
        values = remedies.group_index(sets, len(ids)) if dro else remedies.balance_weights(sets, len(ids))
        kind = int if dro else float
        return {ids[j]: kind(values[j]) for j in sorted({int(j) for m in sets for j in m})}

    own = per_image(members)
    control = per_seed = None
    if inputs.spec.attention.control == "random":
        pool = np.flatnonzero(eligible)
        rngs = {seed: np.random.default_rng([inputs.spec.split.seed, seed]) for seed in seeds}
        per_seed = {str(s): per_image(remedies.random_groups_like(members, pool, rngs[s])) for s in seeds}
        control = {seed: list(values) for seed, values in per_seed.items()}
    chosen = {"group_of": own, "control_group_of": per_seed} if dro else {"weights": own, "control_weights": per_seed}
    return AttentionSets(
        "enrichment",
        len(own),
        list(own),
        control,
        excluded=sorted(excluded),
        groups=[[a, v] for a, v in groups],
        **chosen,
    )


def boost(
    inputs: StageInputs, image_ids: list[str], weights: dict[str, float] | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(loss_weights, sampling_weights) over the training images that boost these images as
    attention.strategy says; weights (group_balance): each boosted image's own sampling weight."""
    a = inputs.spec.attention
    all_ids = inputs.image_ids(inputs.train_idx)
    if weights is not None:
        return None, np.array([weights.get(image_id, 1.0) for image_id in all_ids])
    chosen = set(image_ids)
    boosted = np.array([a.factor if image_id in chosen else 1.0 for image_id in all_ids])
    loss_weights = boosted if a.strategy in ("reweight", "both") else None
    sampling_weights = boosted if a.strategy in ("oversample", "both", "jtt") else None
    return loss_weights, sampling_weights
