"""What a job may take from another instead of computing it: the outputs of its dense, label-check
and score units, which depend on the dataset and on every part of the spec but `attention` (the
select unit is the first to read it). Two jobs with the same reuse key compute the same files there,
so the second copies the first's. Torch-free: the API decides re-use when a job is submitted."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

REUSED_KINDS = ("dense", "label_check", "score")
# the spec's sections that no re-used unit reads
NOT_SHARED = ("attention",)

# the run-folder files the re-used units write (ml.unit_training, ml.unit_score, ml.unit_gallery);
# tests/ml/test_reuse_files.py checks that a run stopped after its score unit holds nothing else
# (but its identity and its cache) and that no later unit writes one of these
SHARED_FILES = (
    "checkpoints/dense*.safetensors",
    "checkpoints/pruned@*.safetensors",
    "state/checkpoints/dense*.json",
    "state/checkpoints/pruned@*.json",
    "state/dense*.json",  # the dense stage's marker and each dense model's training record
    "state/dynamics-*.npz",
    "state/label_check*.json",
    "state/label_check-fold*.npz",
    "state/prune.json",
    "state/score.json",
    "state/ranked.json",
    "state/enrichment.json",
    "gallery.json",
    "gallery/*",
)


def is_shared_file(relative: str) -> bool:
    """Whether a run-folder file (its path relative to the folder, with /) is a re-used unit's output."""
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in SHARED_FILES)


def code_version() -> str:
    """The installed htl-miner's version (`htl --version` prints it too)."""
    try:
        return version("htl-miner")
    except PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"


def shared_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec (as JobSpec.model_dump(mode="json") writes it) as the re-used units read it."""
    return {k: v for k, v in spec.items() if k not in NOT_SHARED}


def reuse_key(spec: dict[str, Any], dataset: str) -> str:
    """Equal for two jobs whose re-used units compute the same files: the same dataset (its id in
    the service, its fingerprint for `htl run`), the same spec but for attention, the same code
    version (another release may train differently)."""
    identity = {"dataset": dataset, "spec": shared_spec(spec), "version": code_version()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
