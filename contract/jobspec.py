"""The job spec: the public contract shared by `htl run`, the API and the worker.

Pure pydantic (no torch), so the API can validate specs without importing the ML stack.
Every field is optional; unknown fields are rejected.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from contract.roster import model_bases
from contract.scorers import SCORER_NAMES, SCORERS

Arch = Literal["unet", "lraspp_mobilenet_v3", "deeplabv3_resnet50", "flexible_unet", "monai_unet", "cnn", "resnet18"]
Encoder = Literal["resnet18", "resnet34", "efficientnet-b0"]
SEGMENTERS = ("unet", "lraspp_mobilenet_v3", "deeplabv3_resnet50", "flexible_unet", "monai_unet")
CLASSIFIERS = ("cnn", "resnet18")
Setting = Literal["supervised", "semi_supervised", "weakly_supervised"]


def _known_scorer(name: str) -> str:
    # read at validation time, not frozen into a Literal: the registry is the one list of scorers
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
    return name


Scorer = Annotated[str, AfterValidator(_known_scorer), WithJsonSchema({"type": "string", "enum": list(SCORER_NAMES)})]


MAX_SEED = 2**31 - 1
ATTENTION_FACTOR = 6.0
SEMI_ATTENTION_FACTOR = 2.0
MAX_LIST = 100  # attributes, weak.positive
MAX_SPARSITIES = 16
MAX_NAME = 200  # a metadata column or value named in the spec


class _Strict(BaseModel):
    # NaN and infinity (1e999 in JSON) are refused like any other out-of-range number
    # strict: "1" is no number and "yes" no boolean (a JSON integer still counts as a float)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ModelSpec(_Strict):
    arch: Arch | None = Field(
        None,
        description="default: unet, or cnn (a classifier) for weakly_supervised; segmentation settings "
        "take unet|lraspp_mobilenet_v3|deeplabv3_resnet50|flexible_unet|monai_unet (MONAI's FlexibleUNet with "
        "model.encoder, and its UNet), weakly_supervised cnn|resnet18",
    )
    width: int = Field(
        16,
        ge=4,
        le=128,
        description="base width (channels of the first level) of unet, monai_unet and cnn; flexible_unet's decoder "
        "runs width x (16, 8, 4, 2, 1) channels",
    )
    encoder: Encoder | None = Field(None, description="flexible_unet's encoder (and only flexible_unet's)")
    weights: str | None = Field(
        None,
        max_length=2000,
        description="flexible_unet: encoder weights to start every model from, an absolute path on the worker or an "
        "http(s) URL of the encoder's state dict (.pt/.pth via torch.load weights_only, or .safetensors; torchvision's "
        "ImageNet ResNets load as they are); checked before anything trains: a missing or mismatched file fails the "
        "job naming what is wrong. Default: random initialisation",
    )
    weights_sha256: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="the sha256 the weights file must have"
    )

    @model_validator(mode="after")
    def _encoder_fits(self) -> ModelSpec:
        if self.arch == "flexible_unet" and self.encoder is None:
            raise ValueError("model.arch flexible_unet needs model.encoder: resnet18, resnet34 or efficientnet-b0")
        if self.arch != "flexible_unet" and (self.encoder or self.weights or self.weights_sha256):
            raise ValueError("model.encoder, model.weights and model.weights_sha256 are flexible_unet's")
        w = self.weights
        if w is not None and not (w.startswith(("http://", "https://")) or w.startswith("/")):
            raise ValueError("model.weights is an absolute path on the worker or an http(s) URL")
        if w is not None and any(ord(c) < 32 for c in w):
            raise ValueError("model.weights holds a control character")
        return self


GROUP_KEY_NAMES = (
    "patient_id",
    "patient",
    "subject_id",
    "subject",
    "participant_id",
    "lesion_id",
    "case_id",
    "study_id",
    "person_id",
    "individual_id",
    "mrn",
)


class SplitSpec(_Strict):
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="when > 0, a held-out test split made like the validation split; every model is evaluated on it too",
    )
    group_column: str | None = Field(
        "auto",
        max_length=MAX_NAME,
        description="metadata column whose groups never straddle the splits (HAM10000: lesion_id); 'auto': the "
        f"first column named like a grouping key ({', '.join(GROUP_KEY_NAMES)}; case-insensitive), else none with a warning; "
        "null: split images independently",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitSpec:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves under 10% of the images for training"
            )
        return self


class TrainSpec(_Strict):
    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(16, ge=2, le=1024)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    augment: bool = True
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="the precision of every forward pass, in training and in inference (scoring, evaluation): auto is "
        "bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else fp32. "
        "bf16 autocasts the convolutions only: the loss, Dice, pruning masks and scores stay float32. Each trained model "
        "records the precision it ran in (metrics.json 'precision')",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    seeds: list[int] | None = Field(
        None, description="train dense and attended once per seed; HTL scores average over the dense seeds"
    )

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("seeds must name at least one seed (or be left out to use seed)")
        if len(set(value)) != len(value):
            raise ValueError("seeds must not repeat")
        if len(value) > 10:
            raise ValueError("at most 10 seeds")
        if any(not 0 <= s <= MAX_SEED for s in value):
            raise ValueError(f"seeds must be in [0, {MAX_SEED}]")
        return value

    def seed_list(self) -> list[int]:
        return self.seeds if self.seeds is not None else [self.seed]


class PruneSpec(_Strict):
    sparsities: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9])
    finetune_epochs: int = Field(0, ge=0, le=100)
    scope: Literal["global", "layerwise"] = Field(
        "global",
        description="global: one magnitude threshold over every conv weight; layerwise: each layer pruned to the "
        "sparsity by its own threshold (Hooker et al.'s pruning code), except the first convolution and the output head, "
        "which stay dense",
    )
    bn_recalibration: bool = Field(
        False,
        description="re-estimate the BatchNorm running statistics of each pruned model, and of the dense model it is "
        "compared with, on the (unaugmented) training images before scoring and evaluating (off by default: on HAM10000 it "
        "made the HTL set less stable across seeds and less enriched for hard groups; see BENCHMARKS.md)",
    )
    degenerate_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a pruned model whose validation Dice falls below this fraction of the dense "
        "model's, or that predicts (nearly) no foreground, is degenerate: left out of htl_score",
    )

    @field_validator("sparsities")
    @classmethod
    def _check_sparsities(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("sparsities must name at least one sparsity")
        if len(value) > MAX_SPARSITIES:
            raise ValueError(f"at most {MAX_SPARSITIES} sparsities")
        for s in value:
            if not 0.0 < s < 1.0:
                raise ValueError(f"sparsity {s} is outside (0, 1)")
        # models are named by the sparsity's 6 significant digits: two that round alike would collide
        keys = [format(s, "g") for s in value]
        if len(set(keys)) != len(keys):
            raise ValueError("sparsities must not repeat (after rounding to 6 significant digits)")
        return sorted(value)


class HtlSpec(_Strict):
    top_fraction: float | None = Field(None, gt=0.0, le=1.0)
    threshold: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_rule(self) -> HtlSpec:
        if self.top_fraction is not None and self.threshold is not None:
            raise ValueError("give either top_fraction or threshold, not both")
        if self.top_fraction is None and self.threshold is None:
            self.top_fraction = 0.1
        return self


class LabelCheckSpec(_Strict):
    enabled: bool = Field(
        True,
        description="check every mask against out-of-sample predictions (K-fold cross-fitting on the training "
        "images with a mask; held-out images against the dense models); not in the weakly_supervised setting, which "
        "trains on no mask",
    )
    folds: int = Field(
        3,
        ge=2,
        le=10,
        description="K: K models, each trained without one fold of the training images, predict that fold",
    )
    epochs: int | None = Field(None, ge=1, le=1000, description="each fold model's epochs; default train.epochs")
    max_quality: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="a mask is a label issue when its label_quality (1 - the share of the mask-or-"
        "prediction region that the out-of-sample model contradicts with probability over 0.9) is below this; 0.3 and "
        "3 folds were chosen on generated data with planted wrong masks (bench/label_check_folds.py, BENCHMARKS.md)",
    )


class AttentionSpec(_Strict):
    strategy: Literal["oversample", "reweight", "both", "jtt", "group_balance", "group_dro", "topk_loss"] = Field(
        "oversample",
        description="oversample: the attended set drawn factor times as often; reweight: its loss weighed factor times; "
        "both; jtt (Just Train Twice): the attended set is the training images the dense models localize worst by "
        "their own training Dice (as many as the HTL set), drawn factor times as often; group_balance: the training "
        "subgroups over-represented among the HTL images are sampled so each weighs as much as all images in no such "
        "group (factor unused); group_dro: online group DRO (Sagawa et al. 2020) over those subgroups and the rest; "
        "topk_loss: in each batch only its topk_fraction hardest samples carry the loss (online hard example mining). "
        "Each strategy's random control is treated the same way (group_balance and group_dro: random groups of the "
        "same sizes and overlap; topk_loss: as many random samples of each batch)",
    )
    topk_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="topk_loss: the share of each batch, hardest first, that carries the loss"
    )
    factor: float | None = Field(
        None,
        ge=1.0,
        le=100.0,
        description="how much more an attended image counts (draws or loss weight). Default 6 (chosen over 3 by "
        "attended - control on the validation focus set of generated data), and 2 in the semi_supervised setting "
        "(chosen over 6 and over fine_tune by the same criterion on HAM10000; BENCHMARKS.md)",
    )
    scorer: Scorer = Field(
        "pruning",
        description="the hardness score whose top set is attended (as large as the HTL set); any scorer in scorers",
    )
    control: Literal["none", "random"] = Field(
        "none",
        description="random: also train, per seed, a control model attending the same way to a seeded random "
        "subset of the training images as large as the HTL set",
    )
    mode: Literal["from_scratch", "fine_tune"] = Field(
        "from_scratch",
        description="from_scratch: the attended (and control) model trains anew for train.epochs; fine_tune: it "
        "starts from the dense model of its seed and trains finetune_epochs more at train.lr x finetune_lr_factor",
    )
    finetune_epochs: int = Field(2, ge=1, le=1000, description="fine_tune: epochs on top of the dense model")
    guard_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="when the attended model's validation Dice (mean over seeds) falls below the dense model's by more "
        "than this, the job recommends the dense model (metrics 'recommended_model') and its warnings and verdict say so",
    )
    finetune_lr_factor: float = Field(
        0.1, gt=0.0, le=1.0, description="fine_tune: the learning rate as a fraction of train.lr"
    )
    exclude_label_issues: bool = Field(
        True,
        description="leave images whose mask the label check flags out of the attended set (the next-ranked "
        "images take their places) and out of the pool the random control is drawn from",
    )
    unlabeled: Literal["leave_out", "attend"] = Field(
        "leave_out",
        description="semi_supervised: leave_out attends only training images with a mask (the next-ranked "
        "labeled images take the places of HTL images without one, which keep weight 1; the random control is drawn "
        "from the labeled images too); attend boosts HTL images without a mask as well, i.e. their pseudo-labels",
    )


class SampleSpec(_Strict):
    max_images: int | None = Field(
        None, ge=4, le=10_000_000, description="run on a seeded random sample of this many images"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)


class SemiSpec(_Strict):
    labeled_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="keep the masks of this seeded fraction of the training images, hide the rest"
    )
    method: Literal["mean_teacher", "pseudo_label"] = "pseudo_label"  # measured on HAM10000: see BENCHMARKS.md
    unlabeled_weight: float = Field(1.0, ge=0.0, le=100.0, description="weight of the unlabeled loss after ramp-up")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    confidence: float = Field(
        0.9, gt=0.5, lt=1.0, description="pseudo_label: teacher probability that makes a pixel a target"
    )


class WeakSpec(_Strict):
    label_column: str | None = Field(
        None, max_length=MAX_NAME, description="metadata column holding the image-level label"
    )
    positive: list[str] = Field(
        default_factory=list, max_length=MAX_LIST, description="values of label_column that mean positive"
    )
    cam_threshold: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="a pixel is lesion where the positive class's activation map is above the image's "
        "median (its background) by more than this share of the way to the map's peak",
    )


class JobSpec(_Strict):
    setting: Setting = "supervised"
    image_size: int = Field(
        128,
        ge=32,
        le=1024,
        multiple_of=32,
        description="images are resized to image_size x image_size (a multiple of 32)",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    sample: SampleSpec = Field(default_factory=SampleSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    prune: PruneSpec = Field(default_factory=PruneSpec)
    htl: HtlSpec = Field(default_factory=HtlSpec)
    label_check: LabelCheckSpec = Field(default_factory=LabelCheckSpec)
    attention: AttentionSpec = Field(default_factory=AttentionSpec)
    semi: SemiSpec = Field(default_factory=SemiSpec)
    weak: WeakSpec = Field(default_factory=WeakSpec)
    attributes: list[str] | None = Field(
        None, max_length=MAX_LIST, description="metadata columns to analyse per subgroup; default: every usable column"
    )
    scorers: list[Scorer] = Field(
        default_factory=lambda: ["pruning"],
        description="hardness scores to compute per image; the HTL set always comes from 'pruning'. "
        + "; ".join(f"{s.name}: {s.description}" for s in SCORERS.values()),
    )

    @field_validator("scorers")
    @classmethod
    def _pruning_first(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("scorers must not repeat")
        return ["pruning", *[v for v in value if v != "pruning"]]

    @model_validator(mode="after")
    def _setting_fits(self) -> JobSpec:
        weak = self.setting == "weakly_supervised"
        if self.model.arch is None:
            self.model.arch = "cnn" if weak else "unet"
        if self.attention.factor is None:
            self.attention.factor = SEMI_ATTENTION_FACTOR if self.setting == "semi_supervised" else ATTENTION_FACTOR
        if weak and self.model.arch not in CLASSIFIERS:
            raise ValueError(
                f"model.arch {self.model.arch!r} is a segmentation model; weakly_supervised takes {'|'.join(CLASSIFIERS)}"
            )
        if not weak and self.model.arch not in SEGMENTERS:
            raise ValueError(
                f"model.arch {self.model.arch!r} is a classifier; {self.setting} takes {'|'.join(SEGMENTERS)}"
            )
        if weak and (not self.weak.label_column or not self.weak.positive):
            raise ValueError(
                "weakly_supervised needs weak.label_column and weak.positive (the values that mean positive)"
            )
        if weak and self.attention.strategy == "jtt":
            raise ValueError(
                "attention.strategy jtt picks the images the dense model localizes worst against their masks; "
                "weakly_supervised trains on no mask: use oversample, reweight, both or group_balance"
            )
        if self.setting == "semi_supervised" and self.attention.strategy in ("group_dro", "topk_loss"):
            raise ValueError(
                f"attention.strategy {self.attention.strategy} weighs each batch as it trains, which the semi_supervised "
                "training loop does not do yet: use oversample, reweight, both, jtt or group_balance"
            )
        if weak and self.label_check.enabled:
            self.label_check.enabled = False  # a classifier trains on no mask: there is nothing to check
        if self.attention.scorer not in self.scorers:
            raise ValueError(
                f"attention.scorer {self.attention.scorer!r} is not computed: add it to scorers ({', '.join(self.scorers)})"
            )
        return self

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"image_size {value} is not a multiple of 32")
        return value


class SpecError(ValueError):
    """A spec that is valid on its own but does not fit the dataset it is run on."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def resolve_group_column(spec: JobSpec, columns: list[str]) -> tuple[JobSpec, list[str]]:
    """The spec with split.group_column 'auto' replaced by the first metadata column named like a
    grouping key (or None), and the warnings that choice deserves."""
    if spec.split.group_column != "auto":
        return spec, []
    chosen = next((c for c in columns if c.strip().lower() in GROUP_KEY_NAMES), None)
    resolved = spec.model_copy(deep=True)
    resolved.split.group_column = chosen
    if chosen is None:
        return resolved, [
            "split.group_column 'auto' found no column named like a grouping key "
            f"({', '.join(GROUP_KEY_NAMES)}): images are split independently, so images of one patient or lesion "
            "may fall on both sides; name the column in split.group_column if there is one"
        ]
    return resolved, []


# parameters of each architecture at width 16 (U-Net and the small CNN grow with width squared)
PARAMS_AT_WIDTH_16 = {
    "unet": 1_930_000,
    "cnn": 390_000,
    "lraspp_mobilenet_v3": 3_220_000,
    "deeplabv3_resnet50": 39_640_000,
    "resnet18": 11_180_000,
    "monai_unet": 1_630_000,
    "flexible_unet:resnet18": 13_550_000,
    "flexible_unet:resnet34": 23_650_000,
    "flexible_unet:efficientnet-b0": 7_060_000,
}
# bytes of activations kept for the backward pass, per pixel of a training batch, at width 16
ACTIVATION_BYTES_PER_PIXEL = {
    "unet": 1_400,
    "cnn": 500,
    "lraspp_mobilenet_v3": 900,
    "deeplabv3_resnet50": 6_000,
    "resnet18": 600,
    # measured as the others: peak RSS growth of a training step at batch 16, 128 px, width 16
    "monai_unet": 600,
    "flexible_unet:resnet18": 1_400,
    "flexible_unet:resnet34": 1_600,
    "flexible_unet:efficientnet-b0": 2_100,
}


def estimate_resources(spec: JobSpec, n_images: int) -> dict[str, int]:
    """What a job will need, roughly: memory (decoded images held while decoding, models and
    optimizer state, a training batch's activations) and disk (the decoded cache and every
    checkpoint). Coarse on purpose: enough to refuse a job that cannot fit, not to plan one."""
    n = min(n_images, spec.sample.max_images or n_images)
    arch: str = spec.model.arch or "unet"
    scale = (spec.model.width / 16) ** 2 if arch in ("unet", "cnn", "monai_unet") else 1.0
    if arch == "flexible_unet":
        arch = f"flexible_unet:{spec.model.encoder}"
    params = int(PARAMS_AT_WIDTH_16[arch] * scale)
    pixels = spec.image_size**2
    decoded = n * 4 * pixels  # uint8 image (3 channels) and mask
    n_seeds = len(spec.train.seed_list())
    models_per_seed = len(model_bases(spec))
    checkpoints = n_seeds * models_per_seed * params * 4
    training = params * 4 * 4 + int(spec.train.batch_size * pixels * ACTIVATION_BYTES_PER_PIXEL[arch] * scale)
    scoring = (1 + len(spec.prune.sparsities)) * params * 4
    return {"memory_bytes": decoded + max(training, scoring), "disk_bytes": decoded + checkpoints}


def check_admission(spec: JobSpec, *, n_images: int, max_memory_bytes: int, max_disk_bytes: int) -> None:
    """Refuse a job whose estimate is over the deployment's limits, naming the limit and the estimate."""
    need = estimate_resources(spec, n_images)
    gib = 1024**3
    if need["memory_bytes"] > max_memory_bytes:
        raise SpecError(
            "spec",
            f"the job needs about {need['memory_bytes'] / gib:.1f} GiB of memory (decoded images, models, a "
            f"training batch), over the limit of {max_memory_bytes / gib:.1f} GiB (HTL_MAX_JOB_MEMORY_BYTES): lower "
            "image_size, sample.max_images, train.batch_size or model.width",
        )
    if need["disk_bytes"] > max_disk_bytes:
        raise SpecError(
            "spec",
            f"the job needs about {need['disk_bytes'] / gib:.1f} GiB of disk (decoded cache, checkpoints), "
            f"over the limit of {max_disk_bytes / gib:.1f} GiB (HTL_MAX_JOB_DISK_BYTES): lower image_size, "
            "sample.max_images, the number of seeds or of sparsities",
        )


def check_spec_fits_dataset(spec: JobSpec, *, columns: list[str], n_images: int, n_masks: int) -> None:
    """Reject, before any work starts, a spec that cannot run on a dataset with these properties."""
    if spec.split.group_column not in (None, "auto") and spec.split.group_column not in columns:
        raise SpecError(
            "split.group_column",
            f"column {spec.split.group_column!r} is not in the metadata (columns: {sorted(columns)})",
        )
    for name in spec.attributes or []:
        if name not in columns:
            raise SpecError("attributes", f"column {name!r} is not in the metadata (columns: {sorted(columns)})")
    if n_images < 4:
        raise SpecError("dataset", f"{n_images} images: at least 4 are needed to train and validate")
    n = min(n_images, spec.sample.max_images or n_images)
    held_out = max(1, round(spec.split.val_fraction * n)) + round(spec.split.test_fraction * n)
    if n - held_out < 2:
        raise SpecError(
            "split",
            f"of {n} images, {held_out} are held out for validation and test: fewer than 2 are left to "
            "train on; lower split.val_fraction / split.test_fraction or use more images",
        )
    if spec.setting == "supervised" and n_masks < n_images:
        raise SpecError(
            "setting",
            f"supervised training needs a mask for every image; {n_images - n_masks} of {n_images} have none "
            "(semi_supervised trains on both)",
        )
    if spec.setting == "semi_supervised" and n_masks < 2:
        raise SpecError("setting", f"semi_supervised training needs at least 2 images with masks; {n_masks} have one")
    if spec.setting == "semi_supervised" and n_masks == n_images and spec.semi.labeled_fraction is None:
        raise SpecError(
            "semi.labeled_fraction",
            "every image has a mask: set semi.labeled_fraction to hide some, or use the supervised setting",
        )
    if spec.setting == "weakly_supervised" and spec.weak.label_column not in columns:
        raise SpecError(
            "weak.label_column",
            f"column {spec.weak.label_column!r} is not in the metadata (columns: {sorted(columns)})",
        )
