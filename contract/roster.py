"""The models a job trains, and their names: the one roster read by the unit plan, the resource
estimate, the pipeline and the API. Torch-free."""

from __future__ import annotations

from typing import Protocol

# What the roster reads of a job spec (contract.jobspec.JobSpec has it), as structural types: the
# spec module imports the roster to estimate a job's cost, so the roster must not import the spec.


class _Prune(Protocol):
    @property
    def sparsities(self) -> list[float]: ...


class _Attention(Protocol):
    @property
    def control(self) -> str: ...


class _Train(Protocol):
    def seed_list(self) -> list[int]: ...


class RosterSpec(Protocol):
    @property
    def prune(self) -> _Prune: ...

    @property
    def attention(self) -> _Attention: ...

    @property
    def train(self) -> _Train: ...


def sparsity_key(s: float) -> str:
    """A sparsity as it appears in model names (pruned@0.5): its 6 significant digits."""
    return format(s, "g")


def pruned_base(sparsity: float) -> str:
    return f"pruned@{sparsity_key(sparsity)}"


def pruned_bases(spec: RosterSpec) -> list[str]:
    return [pruned_base(s) for s in spec.prune.sparsities]


def model_bases(spec: RosterSpec) -> list[str]:
    """Every model trained per seed: dense, one per sparsity, attended and (attention.control random)
    its control."""
    control = ["control"] if spec.attention.control == "random" else []
    return ["dense", *pruned_bases(spec), "attended", *control]


def model_name(base: str, seed: int, seeds: list[int]) -> str:
    """Plain for a single-seed job (dense, pruned@0.5, attended), else suffixed -s<seed>."""
    return base if len(seeds) == 1 else f"{base}-s{seed}"


def model_names(spec: RosterSpec) -> list[str]:
    seeds = spec.train.seed_list()
    return [model_name(base, seed, seeds) for seed in seeds for base in model_bases(spec)]
