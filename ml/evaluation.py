"""The evaluate stage as plain functions: every model on the held-out images (evaluate_split), and
what the reports make of that: each model's report per split, the means over seeds, and the
comparisons between models over seeds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.results import ImageEvaluation
from ml.boundary import boundary_metrics
from ml.data import read_mask
from ml.metrics import aggregate, auroc, stack_metrics
from ml.png import write_mask_png
from ml.seeds import compare_over_seeds, over_seeds
from ml.setting import Targets
from ml.stage_inputs import StageInputs
from ml.train import iterate_batches, localize_and_classify, predict_each

EVAL_BATCH = 32


# --- evaluation ------------------------------------------------------------------------------------
@dataclass
class SplitEvaluation:
    per_image: dict[str, list[dict]]  # per model, per image with a mask: {'image_id', metric: value}
    probabilities: dict[str, list[float]]  # weak: per model, every image's positive probability
    scored: list[int]  # the images with a mask, in order
    # per pair of models asked for, every image's disagreement (1 - Dice between their masks; no label read)
    disagreement: dict[tuple[str, str], list[float]] = dataclasses.field(default_factory=dict)


def _mask_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    both = np.count_nonzero(a) + np.count_nonzero(b)
    return 0.0 if both == 0 else 1.0 - 2.0 * np.count_nonzero(a & b) / both


def _score_and_write(
    record,
    scored: bool,
    preds: np.ndarray,
    peaks: list[int] | None,
    paths: list[Path],
    pairs: list[tuple[int, int]],
    boundary: list[bool],
) -> tuple[list[dict] | None, list[float]]:
    """One held-out image's predictions by every model (M, H, W) at its own size: written as 0/255
    PNGs, scored against its mask if `scored` (Targets.localizable; peaks: pointing, for weak
    supervision; boundary: which models also get hd95 and nsd), and the disagreement of each pair of
    models (by position) asked for."""
    for path, pred in zip(paths, preds):
        write_mask_png(path, pred)
    disagreement = [_mask_disagreement(preds[i], preds[j]) for i, j in pairs]
    if not scored:
        return None, disagreement
    truth = read_mask(record.mask_path)
    entries = [{"image_id": record.image_id, **metrics} for metrics in stack_metrics(truth, preds)]
    for entry, pred, wanted in zip(entries, preds, boundary):
        if wanted:
            entry.update(boundary_metrics(truth, pred))
    if peaks is not None:  # does each map's peak fall inside the lesion?
        for entry, peak in zip(entries, peaks):
            entry["pointing"] = float(truth.flat[peak])
    return entries, disagreement


class _AtOnce:
    """An executor that runs each call when it is submitted."""

    def __enter__(self) -> _AtOnce:
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def _helper(device: torch.device):
    """Where each image is scored and its PNGs written. On a GPU, a helper thread does it while the
    next batch's forward passes run. On the CPU, torch's threads already use every core and a helper
    thread only takes turns with them: HAM10000, 400 validation images at 64 px, 6 models, 2 cores,
    3 runs each: 0.84 / 0.86 / 0.83 of the bare forward passes at once, 0.76 / 0.81 / 0.83 with the
    helper thread."""
    return ThreadPoolExecutor(max_workers=1) if device.type == "cuda" else _AtOnce()


@torch.no_grad()
def _batch_logits(models: dict[str, nn.Module], images: torch.Tensor, weak: bool, probs: dict[str, list[float]]):
    """Every model's map of each image of the batch (on the CPU), by model name; classifiers (weak)
    also add each image's positive probability to probs, from the same pass."""
    if weak:
        maps, class_logits = localize_and_classify(list(models.values()), images)
        for name, class_logit in zip(models, class_logits):
            probs[name] += torch.sigmoid(class_logit).tolist()
    else:
        maps = predict_each(list(models.values()), images)
    return dict(zip(models, (t.cpu() for t in maps)))


def _at_own_size(logits: dict[str, torch.Tensor], j: int, size: tuple[int, int]) -> torch.Tensor:
    """Every model's map of the batch's j-th image, upsampled together to the image's own size: (M, H, W)."""
    stacked = torch.cat([t[j : j + 1] for t in logits.values()])
    return F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)[:, 0]


def evaluate_split(
    inputs: StageInputs,
    models: dict[str, nn.Module],
    indices: list[int],
    *,
    prediction_path: Callable[[str, str], Path],
    progress: Callable[[int], None] | None = None,
    pairs: list[tuple[str, str]] = (),
) -> SplitEvaluation:
    """Every model on every image of a held-out split, at the image's own size: its predicted mask
    written to prediction_path(model, image_id), its metrics where the image has a mask; for
    classifiers the positive probability; for each pair of model names in pairs, how much their masks
    disagree on each image. progress(n): n more images done."""
    names = list(models)
    positions = [(names.index(a), names.index(b)) for a, b in pairs]
    # boundary metrics cost a distance transform per model and image: the pruned models, which only rank
    # and disagree, go without them
    boundary = [not name.startswith("pruned@") for name in names]
    result = SplitEvaluation({name: [] for name in names}, {name: [] for name in names}, [], {p: [] for p in pairs})
    weak = inputs.targets.weak
    scorable = dict(zip(indices, inputs.targets.localizable(indices).tolist()))
    with _helper(inputs.device) as helper:
        pending = []
        for batch in iterate_batches(indices, EVAL_BATCH):
            images, _ = inputs.data.batch(batch)
            logits = _batch_logits(models, images, weak, result.probabilities)
            for j, i in enumerate(batch):
                record = inputs.index.records[i]
                full = _at_own_size(logits, j, inputs.data.original_sizes[i])
                peaks = full.flatten(1).argmax(1).tolist() if weak else None  # where each map peaks (pointing)
                paths = [prediction_path(name, record.image_id) for name in names]
                args = (record, bool(scorable[i]), (full > 0).numpy(), peaks, paths, positions, boundary)
                pending.append((i, helper.submit(_score_and_write, *args)))
            if progress is not None:
                progress(len(batch))
        for i, done in pending:
            entries, apart = done.result()
            for pair, value in zip(pairs, apart):
                result.disagreement[pair].append(value)
            if entries is not None:
                result.scored.append(i)
                for name, entry in zip(names, entries):
                    result.per_image[name].append(entry)
    return result


def blank_guesses(records: list, scored: list[int]) -> dict:
    """What a localizer that looks at no pixel scores on the same images: Dice of an all-foreground
    mask, and of a disc at the image's centre covering the mean lesion share of these images (a
    guess that knows the average size, so a harder baseline). A weak localizer that does not beat
    them has learnt no localization."""
    if not scored:
        return {"n": 0, "all_foreground": None, "centred_disc": None, "mean_lesion_share": None}
    truths = [read_mask(records[i].mask_path).astype(bool) for i in scored]
    share = float(np.mean([t.mean() for t in truths]))
    everything, disc = [], []
    for truth in truths:
        h, w = truth.shape
        yy, xx = np.mgrid[0:h, 0:w]
        radius2 = share * h * w / np.pi
        guess = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= radius2
        everything.append(stack_metrics(truth, np.ones((1, h, w), dtype=bool))[0]["dice"])
        disc.append(stack_metrics(truth, guess[None])[0]["dice"])
    return {
        "n": len(scored),
        "all_foreground": float(np.mean(everything)),
        "centred_disc": float(np.mean(disc)),
        "mean_lesion_share": share,
    }


def image_evaluations(split: str, result: SplitEvaluation) -> list[ImageEvaluation]:
    return [
        ImageEvaluation(
            model=name,
            split=split,
            image_id=entry["image_id"],
            metrics={k: v for k, v in entry.items() if k != "image_id"},
        )
        for name, entries in result.per_image.items()
        for entry in entries
    ]


def split_reports(
    result: SplitEvaluation, indices: list[int], groups: dict[str, list[str]], targets: Targets
) -> dict[str, dict]:
    """Per model, its report on one split: overall and per-subgroup means, the per-image values, and
    for classifiers the AUROC. groups: per attribute, every dataset image's subgroup."""
    scored_groups = {a: [labels[i] for i in result.scored] for a, labels in groups.items()}
    out = {}
    for name, per_image in result.per_image.items():
        report = {**aggregate(per_image, scored_groups), "per_image": per_image}
        if targets.weak:
            truth = targets.image_labels[indices]
            known = ~np.isnan(truth)
            report["classification"] = {
                "auroc": auroc(np.asarray(result.probabilities[name])[known], truth[known]),
                "n": int(known.sum()),
                "positives": int(np.nansum(truth)),
            }
        out[name] = report
    return out


ModelName = Callable[[str, int], str]  # (base, seed) -> the model's name


def model_reports(
    by_split: dict[str, dict[str, dict]], *, bases: list[str], seeds: list[int], name: ModelName
) -> dict[str, dict]:
    """metrics.json 'models': each model's validation report with its test report under 'test'; with
    several seeds, each base name also as the means over its seeds."""
    has_test = "test" in by_split
    models = {}
    for seed in seeds:
        for base in bases:
            model = name(base, seed)
            models[model] = {**by_split["validation"][model], **({"test": by_split["test"][model]} if has_test else {})}
    if len(seeds) > 1:
        for base in bases:
            entries = [models[name(base, s)] for s in seeds]
            models[base] = {
                **over_seeds(entries),
                **({"test": over_seeds([e["test"] for e in entries])} if has_test else {}),
            }
    return models


def compare_models(models: dict[str, dict], a: str, b: str, *, seeds: list[int], name: ModelName) -> dict:
    """b minus a over the seeds (each seed's b against the same seed's a), with the test split's under 'test'."""
    first = [models[name(a, s)] for s in seeds]
    second = [models[name(b, s)] for s in seeds]
    out = compare_over_seeds(first, second)
    if "test" in first[0]:
        out["test"] = compare_over_seeds([e["test"] for e in first], [e["test"] for e in second])
    return out
