"""Which unlabeled images to annotate next: a semi-supervised job's unlabeled training images in the
order of a strategy. htl: the HTL ranking (the pruned models disagree with the dense model most);
mc_dropout: the dense model's disagreement with itself under test-time dropout (needs the
mc_dropout scorer); random: a seeded shuffle, the baseline any strategy has to beat."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Strategy = Literal["htl", "mc_dropout", "random"]
STRATEGIES: tuple[Strategy, ...] = ("random", "htl", "mc_dropout")  # the default first: it beat the others on HAM10000


class ScoredImage(Protocol):
    image_id: str
    rank: int
    htl_score: float
    other_scores: dict
    attributes: dict


@dataclass(frozen=True)
class Queued:
    position: int  # 1: annotate first
    image: ScoredImage
    value: float  # the strategy's score (random: the draw)


class StrategyUnavailable(LookupError):
    pass


def _draw(seed: int, image_id: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, image id): the same queue on every call and host."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def queue_order(images: Sequence[ScoredImage], strategy: Strategy, *, seed: int = 0) -> list[Queued]:
    """The images, most worth annotating first. Ties go by HTL rank, which is itself seeded."""
    if strategy == "htl":
        keyed = [(image.htl_score, image) for image in images]
    elif strategy == "mc_dropout":
        missing = [image.image_id for image in images if image.other_scores.get("mc_dropout") is None]
        if missing:
            raise StrategyUnavailable(
                f"no mc_dropout score for {len(missing)} of {len(images)} unlabeled images "
                f'(e.g. {missing[0]!r}): submit the job with "scorers" including "mc_dropout"'
            )
        keyed = [(float(image.other_scores["mc_dropout"]), image) for image in images]
    elif strategy == "random":
        keyed = [(_draw(seed, image.image_id), image) for image in images]
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    keyed.sort(key=lambda pair: (-pair[0], pair[1].rank))
    return [Queued(position=i + 1, image=image, value=value) for i, (value, image) in enumerate(keyed)]
