"""What a job produces, as typed values. ml/ builds them (ml.pipeline.Run.results), the worker persists
them through one mapping (app.db.results), and one unit hands them to the next, possibly on another
worker, through its run folder as JSON (encode / decode here). Torch- and numpy-free."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageScore:
    """One training image's hardness: its place in the ranking and what it was ranked by."""

    image_id: str
    htl_score: float
    is_htl: bool
    rank: int  # 1 = hardest
    labeled: bool  # had the target its setting trains on
    per_sparsity: dict[str, float]  # pruning disagreement per sparsity (key: the sparsity as written in model names)
    scores: dict[str, float | None]  # the other scorers the spec asked for; None where undefined
    attributes: dict[str, str]  # the image's metadata
    subgroups: dict[str, str]  # attribute -> the band or value the enrichment analysis gave it
    # the label check (None where it did not run, or the image has no mask to check)
    label_quality: float | None = None  # 1: the out-of-sample model confirms the whole mask; 0: contradicts it
    label_issue: bool | None = None  # label_quality under label_check.max_quality: the mask is probably wrong
    attended: bool = False  # in the set attention boosted (the HTL set, less label issues, refilled by rank)


@dataclass(frozen=True)
class ImageEvaluation:
    """One model's metrics on one held-out image."""

    model: str  # e.g. dense, attended-s1, pruned@0.5
    split: str  # validation | test
    image_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class MetricValue:
    """One model's metric on one split: over all its images (attribute None) or over a subgroup."""

    model: str  # each seed's model, and with several seeds the plain name as the mean over seeds
    split: str
    attribute: str | None
    subgroup: str | None
    metric: str
    value: float
    n: int


@dataclass(frozen=True)
class CheckpointFile:
    """A saved model: where in the run folder, of which seed and sparsity, and its bytes' digest
    (taken once, as it was written)."""

    name: str  # dense, pruned@0.5, attended, control; with several seeds suffixed -s<seed>
    base: str  # the name without its seed
    seed: int
    sparsity: float | None  # pruned models only
    path: str  # relative to the run folder
    sha256: str
    size_bytes: int
    format: str = "safetensors"


@dataclass(frozen=True)
class EvaluationResult:
    """The evaluate stage's output: per-image and aggregate metrics, and the two reports."""

    evaluations: list[ImageEvaluation]
    metrics: list[MetricValue]
    summary: dict[str, Any]  # metrics.json without its per-model blocks (comparisons, pruning, curves, warnings)
    subgroups: dict[str, Any]  # subgroups.json: enrichment and gap closing


@dataclass(frozen=True)
class JobResults:
    scores: list[ImageScore]
    evaluation: EvaluationResult
    checkpoints: list[CheckpointFile]

    @property
    def warnings(self) -> list[str]:
        """What the run warns of (the summary's 'warnings')."""
        return list(self.evaluation.summary.get("warnings", []))


def encode(value: Any) -> Any:
    """A result (dataclass, list of them, ...) as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


class ResultError(ValueError):
    """A stored result does not have the shape of its type (a run folder of another version)."""


def decode(kind: Any, raw: Any) -> Any:
    """encode's inverse, driven by the type: decode(list[ImageScore], json.loads(...))."""
    return _decoder(kind)(raw)


PLAIN = (str, int, bool, typing.Any)  # JSON gives them back as they were written


@functools.cache
def _decoder(kind: Any) -> Callable[[Any], Any]:
    """A decoding function per type, built once (a run's 100,000 scores decode in about a second)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        (inner,) = [o for o in options if o is not type(None)]
        inner_decode = _decoder(inner)
        return lambda raw: None if raw is None else inner_decode(raw)
    if origin is list:
        (inner,) = typing.get_args(kind)
        inner_decode = _decoder(inner)

        def decode_list(raw: Any) -> Any:
            if not isinstance(raw, list):
                raise ResultError(f"expected a list for {kind}, found {type(raw).__name__}")
            return list(raw) if inner in PLAIN else [inner_decode(v) for v in raw]

        return decode_list
    if origin is dict:
        _, inner = typing.get_args(kind)
        inner_decode = _decoder(inner)

        def decode_dict(raw: Any) -> Any:
            if not isinstance(raw, dict):
                raise ResultError(f"expected an object for {kind}, found {type(raw).__name__}")
            return dict(raw) if inner in PLAIN else {k: inner_decode(v) for k, v in raw.items()}

        return decode_dict
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        fields = {f.name: _decoder(hints[f.name]) for f in dataclasses.fields(kind)}

        def decode_dataclass(raw: Any) -> Any:
            if not isinstance(raw, dict):
                raise ResultError(f"expected an object for {kind.__name__}, found {type(raw).__name__}")
            try:
                return kind(**{k: fields[k](v) for k, v in raw.items()})
            except KeyError as e:
                raise ResultError(f"{kind.__name__} has no field {e.args[0]!r}") from None
            except TypeError as e:  # a required field missing
                raise ResultError(f"{kind.__name__}: {e}") from e

        return decode_dataclass
    if kind is float:  # JSON writes a whole float as a float, but a hand-made file may hold 1
        return lambda raw: float(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    return lambda raw: raw
