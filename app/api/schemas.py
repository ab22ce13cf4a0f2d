"""Request and response models of the v1 API (kept apart from the tables). JobSpec is the public
contract shared with `htl run`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from contract.jobspec import JobSpec
from contract.status import JobStatus, UnitStatus

T = TypeVar("T")


class ErrorOut(BaseModel):
    """Every error, on every status."""

    detail: str | list[dict] = Field(
        description="what is wrong; for a request that fails validation, one entry per problem with its loc"
    )
    code: str = Field(
        description="a stable code: INVALID_INPUT, INVALID_CURSOR, UNAUTHORIZED, NOT_FOUND, CONFLICT, TOO_LARGE, "
        "UNSUPPORTED_MEDIA_TYPE, RATE_LIMITED, BUSY, DATABASE_UNAVAILABLE, UNAVAILABLE, INTERNAL, ..."
    )


def error_responses(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses a route can answer, all in the ErrorOut shape."""
    why = {
        400: "a body that cannot be read (not UTF-8, not JSON)",
        401: "missing or invalid API key",
        403: "not for this client (/metrics: the operator's token, or this host)",
        404: "not found (or another owner's)",
        409: "conflicts with the resource's state",
        413: "body over its limit",
        415: "not multipart/form-data",
        422: "invalid input",
        429: "over the key's rate limit",
        500: "internal error",
        503: "database, broker or capacity unavailable: retry after Retry-After",
    }
    return {s: {"model": ErrorOut, "description": why[s]} for s in statuses}


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    n_images: int
    n_masks: int
    size_bytes: int
    attributes: list[str]
    warnings: list[str]
    layout: str = Field(
        description="the layout the upload came in: htl (images/, masks/, metadata.csv), isic (a challenge download), "
        "kvasir (Kvasir-SEG) or coco (a COCO JSON with its images)"
    )
    created_at: datetime


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: uuid.UUID
    spec: JobSpec = Field(default_factory=JobSpec)
    reuse: bool = Field(
        True,
        description="re-use the dense, label-check and score outputs of an earlier job of yours on this dataset "
        "whose spec differs only in attention (false: compute them again)",
    )


class UnitOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str = Field(
        description="dense[<seed>], label_check[<fold>], score, select, attend[<seed>], control[<seed>], evaluate"
    )
    status: UnitStatus = Field(
        description="waiting (for the units it needs), queued, running, succeeded, failed, cancelled"
    )
    worker: str | None = None
    attempt: int
    progress: float
    started_at: datetime | None
    finished_at: datetime | None
    reused_from: uuid.UUID | None = Field(
        None,
        description="the job whose outputs of this unit were copied instead of computed (succeeded from the start)",
    )


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    dataset_id: uuid.UUID
    status: JobStatus
    stage: str | None
    progress: float
    error: str | None
    attempt: int = Field(
        description="how many times a worker has taken the job up (a job given back by a stopping worker does not count)"
    )
    worker: str | None = Field(None, description="the worker running it, or that ran it last")
    spec: dict = Field(
        description="the spec as run: split.group_column 'auto' is replaced by the column chosen (or null)"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="how the job ran that its user should know: a split without a "
        "group column, pruned models left out of htl_score as degenerate",
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    reused_from: uuid.UUID | None = Field(
        None,
        description="the job of the same owner, dataset and spec but for attention whose dense, label-check and "
        "score outputs this one copied (its units say which); null when it computed them",
    )
    sweep_id: uuid.UUID | None = Field(None, description="the sweep this job is a variant of")
    units: list[UnitOut] = Field(
        default_factory=list,
        description="the job's graph: dense[seed] (+ label_check[fold]) -> score -> select -> attend[seed] "
        "(and control[seed]) -> evaluate, each run by one worker; progress is their weighted sum",
    )


class ScoreOut(BaseModel):
    image_id: str
    htl_score: float
    is_htl: bool
    rank: int
    labeled: bool = Field(description="whether the image had the target its setting trains on (mask, or image label)")
    per_sparsity: dict[str, float]
    scores: dict[str, float | None] = Field(
        default_factory=dict,
        description="other hardness scorers the spec asked for; null where one needs a target the image lacks",
    )
    attributes: dict[str, str]
    subgroups: dict[str, str] = Field(
        default_factory=dict,
        description="the subgroup label the enrichment analysis gave the image per "
        "attribute (age bands, image-property quartiles, 'unknown' for missing values)",
    )
    label_quality: float | None = Field(
        None,
        description="the label check: 1 when the out-of-sample model confirms the whole mask, "
        "0 when it contradicts it with confidence; null: not checked (no mask, or the check was off)",
    )
    label_issue: bool | None = Field(
        None, description="label_quality under label_check.max_quality: the mask is probably wrong"
    )
    attended: bool = Field(
        False, description="in the set attention boosted (the HTL set less label issues, refilled by rank)"
    )


class ImageOut(BaseModel):
    image_id: str
    rank: int
    htl_score: float
    is_htl: bool
    labeled: bool
    per_sparsity: dict[str, float]
    scores: dict[str, float | None]
    attributes: dict[str, str]
    subgroups: dict[str, str] = Field(default_factory=dict)
    label_quality: float | None = None
    label_issue: bool | None = None
    attended: bool = False
    layers: list[str] = Field(
        description="mask layers the overlay can draw for this image: gt, dense, pruned@<sparsity>, oos "
        "(the label check's out-of-sample prediction)"
    )
    layer_colours: dict[str, str] = Field(
        default_factory=dict, description="the colour each layer is drawn in, as #rrggbb"
    )
    links: dict[str, str] = Field(description="overlay: the image with every layer; image: the image alone")


class LabelIssueOut(BaseModel):
    image_id: str
    split: str = Field(
        description="train (checked by the fold model that never saw it), validation or test (by the dense models)"
    )
    label_quality: float
    contradicted: float = Field(
        description="the share of the mask-or-prediction region the out-of-sample model contradicts with confidence"
    )
    oos_dice: float = Field(description="Dice of the out-of-sample prediction (thresholded at 0.5) against the mask")
    rank: int | None = Field(None, description="training images: HTL rank")
    is_htl: bool | None = None
    attended: bool | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(
        default_factory=dict,
        description="overlay: the image with its mask (gt) and the out-of-sample "
        "prediction (oos) drawn on it; training images only",
    )


class AnnotationQueueItemOut(BaseModel):
    position: int = Field(description="1: annotate first")
    image_id: str
    strategy: str
    value: float = Field(
        description="the strategy's score: htl_score (htl), the mc_dropout score, or the seeded draw (random)"
    )
    rank: int = Field(description="HTL rank among all training images")
    htl_score: float
    attributes: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(
        default_factory=dict,
        description="detail: the image's scores and layers; image: the image "
        "alone; overlay: the dense model's mask on it (images the gallery kept)",
    )


class EvaluationOut(BaseModel):
    image_id: str
    model: str
    split: str
    metrics: dict[str, float] = Field(
        description="dice, jaccard, threshold_jaccard, box_iou, sensitivity, specificity; hd95 (pixels of the "
        "evaluated image) and nsd (tolerance 2 pixels) for every model but the pruned ones; weak: pointing"
    )


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    sha256: str
    size_bytes: int
    seed: int | None = Field(description="the training seed of the model (of the dense model a pruned one came from)")
    sparsity: float | None = Field(description="pruned models: the sparsity asked for; None otherwise")
    format: str


class MetricsOut(BaseModel):
    job_id: uuid.UUID
    split: Literal["validation", "test"]
    splits: list[str] = Field(default_factory=lambda: ["validation"], description="the splits the job evaluated on")
    group_column: str | None = None
    seeds: list[int]
    models: dict[str, dict]
    attended_vs_dense: dict = Field(
        description="attended minus dense on this split: per seed, mean, 95% t-interval over seeds"
    )
    attended_vs_control: dict | None = Field(
        None, description="attended minus the random control (attention.control 'random')"
    )
    control_vs_dense: dict | None = None
    scorer_agreement: list[dict]
    pruning: dict = Field(
        description="per pruned model: achieved and per-layer sparsity, zeroed layers, validation Dice, degenerate"
    )
    degenerate_sparsities: list[float] = Field(default_factory=list, description="left out of htl_score")
    validation_curve: dict[str, list[float | None]] = Field(
        default_factory=dict, description="dense models' validation Dice per epoch"
    )
    recommended_model: dict | None = Field(
        None,
        description="which model to use, chosen on validation: 'model' (dense or attended), 'download' (the checkpoint "
        "of that model with the best validation Dice), 'reason'; 'attention_sank' is true when the attended model fell "
        "below dense by more than attention.guard_margin",
    )
    precision: dict | None = Field(
        None,
        description="the floating-point precision that ran (train.precision resolved on the worker): 'training' per "
        "trained model (fp32 or bf16; null where the job predates the record), 'inference' for scoring and evaluation",
    )
    focus: dict | None = Field(
        None,
        description="the focus set (the pre-registered endpoint): held-out images in the subgroups "
        "enriched among the HTL images or most disputed by the pruned models, chosen before their labels "
        "are read; the comparisons on it are attended_vs_control.focus and attended_vs_dense.focus. The job's "
        "pre-registered endpoint is on test when there is a test split; on validation beside it the same "
        "endpoint is measured there, for choosing between variants without reading test",
    )
    worst_decile: dict | None = Field(
        None,
        description="per model, the mean Dice over its worst tenth of the focus split's images "
        "(all) and of the focus set (focus)",
    )
    verdict: str | None = Field(
        None, description="one sentence: did attention beat the random control on the focus set?"
    )
    label_check: dict = Field(
        default_factory=dict,
        description="how the masks were checked (folds, rule), how many were "
        "checked and flagged per split, and the flagged images worst first; each model's figures without "
        "them are its subgroup label_check=ok",
    )
    blank_guesses: dict | None = Field(
        None,
        description="on the split's images with a mask (weakly supervised: the positive ones), the "
        "Dice of an all-foreground mask and of a centred disc of the mean lesion size, beside each "
        "model's (models) and a warning for each that does not beat them",
    )
    warnings: list[str] = Field(default_factory=list)


class SubgroupsOut(BaseModel):
    job_id: uuid.UUID
    seeds: list[int]
    single_seed: bool
    enrichment: dict
    gap_closing: dict | None


class SelectRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["validation"] = Field(
        "validation", description="where the choice is made: validation only (test is read only to report it)"
    )
    on: Literal["focus", "overall"] = Field(
        "focus",
        description="focus: attended - control Dice on the validation focus set; overall: over all validation images "
        "(attended - dense where a variant trained no control)",
    )


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: uuid.UUID
    name: str | None = Field(None, max_length=200)
    spec: dict = Field(default_factory=dict, description="the base job spec every variant starts from")
    vary: dict[str, list] = Field(
        description='dotted spec field -> the values to try, e.g. {"attention.factor": [2, 3, 6], '
        '"attention.mode": ["from_scratch", "fine_tune"]}: one job per combination (at most 24)',
        min_length=1,
    )
    reuse: bool = Field(True, description="variants that share their dense settings share one set of dense units")
    select: SelectRule | None = Field(
        None,
        description="choose one variant on validation once all have finished (GET answers 'selection'), "
        'e.g. {"split": "validation", "on": "focus"}',
    )


class Difference(BaseModel):
    overall: float | None = Field(description="Dice difference over the split's images, averaged over seeds")
    overall_ci95: list[float] | None = None
    focus: float | None = Field(None, description="the difference on the focus set (where attention should matter)")
    focus_ci95: list[float | None] | None = None


class Headline(BaseModel):
    split: str = Field(description="the split these figures are on: test when the job has one")
    attended_vs_dense: Difference | None = None
    attended_vs_control: Difference | None = None
    worst_decile: dict[str, float | None] = Field(
        default_factory=dict, description="per model: the mean Dice of its worst 10% of images"
    )
    verdict: str | None = None


class ComparisonRow(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    progress: float
    reused_from: uuid.UUID | None
    values: dict[str, object] = Field(description="this job's value of each differing field")
    headline: Headline | None = Field(description="null until the job has succeeded")


class ComparisonOut(BaseModel):
    fields: list[str] = Field(description="the spec fields in which the jobs differ")
    rows: list[ComparisonRow]


class SweepVariantOut(BaseModel):
    position: int
    overrides: dict[str, object]
    state: Literal["pending", "submitted", "skipped"] = Field(
        description="pending: waiting for the job that computes the dense models it shares; skipped: error says why"
    )
    job_id: uuid.UUID | None
    waits_for: uuid.UUID | None = Field(None, description="while pending: the job whose dense units it re-uses")
    error: str | None = None


class SweepOut(BaseModel):
    id: uuid.UUID
    dataset_id: uuid.UUID
    name: str | None
    spec: dict
    vary: list[dict]
    created_at: datetime
    variants: list[SweepVariantOut]
    comparison: ComparisonOut | None = Field(None, description="the submitted variants' jobs side by side")
    select: dict | None = Field(None, description="how the sweep chooses its variant, as given")
    selection: dict | None = Field(
        None,
        description="with select, once every variant has finished: the job chosen on validation ('job_id', 'split', "
        "'on', 'value', 'compared': how many variants were compared), 'test': the chosen job's attended_vs_control and "
        "attended_vs_dense on the focus set and overall with 95% intervals and its verdict, and one 'sentence'",
    )
