"""What computes each hardness scorer besides pruning's: a function of one dense seed (its model,
and what its training recorded) to one value per training image. Adding a scorer is a ScorerInfo
line in contract.scorers and one function here; import fails when the two registries disagree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from contract.scorers import SCORERS
from ml import hardness

if TYPE_CHECKING:
    from ml.stage_inputs import StageInputs


@dataclass(frozen=True)
class DenseSeed:
    inputs: StageInputs
    model: nn.Module
    seed: int
    dynamics: dict[str, np.ndarray] | None  # what train_model recorded (the "dynamics" scorers read it)

    def recorded(self, key: str) -> np.ndarray:
        if self.dynamics is None or key not in self.dynamics:
            raise ValueError(f"the dynamics scorers need the dense model's training record ({key!r})")
        return self.dynamics[key]


ScoreFn = Callable[[DenseSeed], np.ndarray]
SCORE_FUNCTIONS: dict[str, ScoreFn] = {}


def scorer(name: str) -> Callable[[ScoreFn], ScoreFn]:
    def register(fn: ScoreFn) -> ScoreFn:
        SCORE_FUNCTIONS[name] = fn
        return fn

    return register


@scorer("loss")
def final_loss(d: DenseSeed) -> np.ndarray:
    return hardness.final_loss(d.model, d.inputs.data, d.inputs.train_idx, d.inputs.targets.objective())


@scorer("el2n")
def el2n(d: DenseSeed) -> np.ndarray:
    return d.recorded("el2n")


@scorer("forgetting")
def forgetting(d: DenseSeed) -> np.ndarray:
    return hardness.forgetting_events(d.recorded("dice"))


@scorer("dynamic_dice")
def dynamic_dice(d: DenseSeed) -> np.ndarray:
    return hardness.dynamic_dice(d.recorded("dice"))


@scorer("mc_dropout")
def mc_dropout(d: DenseSeed) -> np.ndarray:
    return hardness.mc_dropout_disagreement(d.model, d.inputs.data, d.inputs.train_idx, seed=d.seed)


def check_registry() -> None:
    """Every scorer of the contract but pruning (the score itself) has a function, and no function lacks a scorer."""
    expected = set(SCORERS) - {"pruning"}
    if set(SCORE_FUNCTIONS) != expected:
        raise RuntimeError(
            f"ml.scorers and contract.scorers disagree: functions for {sorted(SCORE_FUNCTIONS)}, scorers {sorted(expected)}"
        )


def score_others(d: DenseSeed, names: list[str]) -> dict[str, np.ndarray]:
    """The scorers named (pruning left out), in that order; NaN where a scorer needs a target the
    image lacks."""
    out = {}
    for name in names:
        if name == "pruning":
            continue
        values = SCORE_FUNCTIONS[name](d)
        if SCORERS[name].needs_target:
            values = np.where(d.inputs.targets.train_labeled, values, np.nan)
        out[name] = values
    return out


check_registry()
