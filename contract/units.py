"""A job as a small graph of units, each run by one worker:

    dense[seed] (one per seed) + label_check[fold] (one per fold, with label_check.enabled)
        -> score (prunes, scores, reads the label check; needs every dense seed and fold)
        -> select (picks the attended and control sets: the first unit that reads spec.attention)
        -> attend[seed] (+ control[seed] with attention.control 'random') -> evaluate

Torch-free: the API plans the units when a job is submitted; workers run them one by one
(ml.pipeline.Run.run_unit), and `htl run` runs all of them in plan order in one process. A unit's
weight is its expected share of the job's work, from the spec alone (for progress); UNIT_STAGES
splits a unit's own progress between its internal stages. This is the job's only cost model."""

from __future__ import annotations

from dataclasses import dataclass

from contract.jobspec import JobSpec
from contract.roster import model_bases
from contract.scorers import extra_passes

KINDS = ("dense", "label_check", "score", "select", "attend", "control", "evaluate")
INFERENCE_SPEEDUP = 3.0  # inference per image costs about a third of a training step
SELECT_WEIGHT = (
    0.01  # the select unit reads the ranking and draws sets: next to nothing, in epochs of the training images
)

# per kind, its internal stages and the share of the unit's progress each one spans; a kind not
# named here is one stage of its own name, spanning the whole unit
UNIT_STAGES: dict[str, dict[str, tuple[float, float]]] = {"score": {"prune": (0.0, 0.5), "score": (0.5, 1.0)}}


@dataclass(frozen=True)
class UnitPlan:
    name: str
    kind: str
    seed: int | None
    deps: tuple[str, ...]
    weight: float
    position: int


def unit_name(kind: str, seed: int | None) -> str:
    return kind if seed is None else f"{kind}[{seed}]"


def unit_fraction(kind: str, stage: str, fraction: float) -> float:
    """How far a unit of this kind is, when its stage `stage` is `fraction` done."""
    lo, hi = UNIT_STAGES.get(kind, {}).get(stage, (0.0, 1.0))
    return lo + (hi - lo) * fraction


def parse_unit(name: str) -> tuple[str, int | None]:
    kind, _, rest = name.partition("[")
    if kind not in KINDS or (rest and not rest.endswith("]")):
        raise ValueError(f"not a unit name: {name!r}")
    return kind, (int(rest[:-1]) if rest else None)


def plan_units(spec: JobSpec) -> list[UnitPlan]:
    seeds = spec.train.seed_list()
    train = max(0.05, 1 - spec.split.val_fraction - spec.split.test_fraction)
    held_out = spec.split.val_fraction + spec.split.test_fraction
    epochs = spec.train.epochs * (1 + spec.split.val_fraction / train / INFERENCE_SPEEDUP)
    n_sp = len(spec.prune.sparsities)
    extra = 1 + extra_passes(spec.scorers)  # the dense model's pass, and what the other scorers add
    control = spec.attention.control == "random"
    bases = len(model_bases(spec))
    score = len(seeds) * (
        n_sp * (spec.prune.finetune_epochs * train + 1 / INFERENCE_SPEEDUP) + train * (n_sp + extra) / INFERENCE_SPEEDUP
    )
    raw: list[tuple[str, int | None, tuple[str, ...], float]] = []
    dense = [unit_name("dense", s) for s in seeds]
    raw += [("dense", s, (), epochs * train) for s in seeds]
    checks: list[str] = []
    if spec.label_check.enabled:
        k = spec.label_check.folds
        fold_epochs = spec.label_check.epochs or spec.train.epochs
        checks = [unit_name("label_check", f) for f in range(k)]
        # each fold model trains on (k - 1) / k of the training images and predicts the rest
        raw += [
            ("label_check", f, (), fold_epochs * train * (k - 1) / k + train / k / INFERENCE_SPEEDUP) for f in range(k)
        ]
        score += len(seeds) * held_out / INFERENCE_SPEEDUP  # the dense models check the held-out masks
    raw.append(("score", None, (*dense, *checks), score))
    raw.append(("select", None, ("score",), SELECT_WEIGHT * train))
    trained = []
    attention = spec.attention
    attend_epochs = (
        epochs if attention.mode == "from_scratch" else attention.finetune_epochs * epochs / spec.train.epochs
    )
    for s in seeds:
        raw.append(("attend", s, ("select",), attend_epochs * train))
        trained.append(unit_name("attend", s))
        if control:
            raw.append(("control", s, ("select",), attend_epochs * train))
            trained.append(unit_name("control", s))
    raw.append(("evaluate", None, tuple(trained), len(seeds) * bases * held_out / INFERENCE_SPEEDUP))
    total = sum(w for *_, w in raw)
    return [
        UnitPlan(unit_name(kind, seed), kind, seed, deps, w / total, i) for i, (kind, seed, deps, w) in enumerate(raw)
    ]
