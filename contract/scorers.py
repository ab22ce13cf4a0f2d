"""The hardness scorers a job can compute: one registry read by the spec (which names exist), the
unit planner and the pipeline (what each costs, which need a target). Torch-free."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MC_DROPOUT_SAMPLES = 8  # forward passes with test-time dropout per image


@dataclass(frozen=True)
class ScorerInfo:
    name: str
    # undefined (null) for an image without the target its setting trains on (mask, or image label)
    needs_target: bool
    # where its values come from: pruned models ("pruning"), the dense model's training record
    # ("dynamics": read off what training saw, no pass of its own), or passes of the finished dense model
    source: str
    # forward passes over the training images per dense seed, beyond the dense model's own pass
    passes: int
    description: str


SCORERS: dict[str, ScorerInfo] = {
    s.name: s
    for s in (
        ScorerInfo(
            "pruning",
            False,
            "pruning",
            0,
            "1 - Dice between the dense and each pruned model's mask, averaged over sparsities",
        ),
        ScorerInfo(
            "loss", True, "model", 1, "the dense model's BCE + soft-Dice loss on the unaugmented image after training"
        ),
        ScorerInfo("el2n", True, "dynamics", 0, "error L2 norm (Paul et al., 2021) early in training, per pixel"),
        ScorerInfo(
            "forgetting", True, "dynamics", 0, "forgetting events (Toneva et al., 2019) over the training steps"
        ),
        ScorerInfo("dynamic_dice", True, "dynamics", 0, "1 - the training Dice averaged over the epochs"),
        ScorerInfo(
            "mc_dropout",
            False,
            "model",
            MC_DROPOUT_SAMPLES,
            "1 - Dice between the dense mask and masks with test-time dropout",
        ),
    )
}
SCORER_NAMES = tuple(SCORERS)


def extra_passes(names: Iterable[str]) -> int:
    """Forward passes over the training images, per dense seed, that these scorers add to pruning's."""
    return sum(SCORERS[n].passes for n in names)
