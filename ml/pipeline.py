"""The stages dense -> prune -> score -> attend -> evaluate. Each stage writes its outputs and then a
marker under OUT/state/, so a restarted run resumes after the last finished stage. Later stages read
models back from their checkpoint files, so a resumed run computes exactly what an unbroken one does."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from contract.jobspec import JobSpec, SpecError, check_spec_fits_dataset, resolve_group_column
from contract.scorers import SCORERS, extra_passes
from ml import hardness, subgroups
from ml.checkpoints import load_checkpoint, save_checkpoint
from ml.data import (
    DatasetIndex,
    DecodedDataset,
    decode_dataset,
    read_mask,
    sample_records,
    scan_dataset,
    split_indices,
)
from ml.metrics import MISSING, aggregate, auroc, stack_metrics, subgroup_labels, usable_attributes
from ml.models import ModelConfig
from ml.png import write_mask_png
from ml.prune import apply_pruning_masks, health, make_permanent, recalibrate_batchnorm, sparsity_report, validation_prediction
from ml.scoring import HtlScores, score_disagreement, select_htl
from ml.seeds import compare_over_seeds, over_seeds
from ml.semi import fit_semi
from ml.train import (
    ClassificationObjective,
    FitConfig,
    TrainingRecord,
    classify,
    fit,
    iterate_batches,
    predict_each,
    prepare_for_device,
    segmentation_objective,
)

STAGES = ("dense", "prune", "score", "attend", "evaluate")
FINETUNE_LR_DIVISOR = 10.0
INFERENCE_SPEEDUP = 3.0  # inference per image costs about a third of a training step
BOOTSTRAP_RESAMPLES = 2000
GALLERY_SAMPLE = 50  # images outside the HTL set whose predicted masks are kept too, for comparison


@dataclass(frozen=True)
class Progress:
    stage: str
    stage_fraction: float
    overall: float
    loss: float | None = None


ProgressFn = Callable[[Progress], None]


class RunDirError(ValueError):
    pass


class DegenerateError(RuntimeError):
    """Every pruned model collapsed: nothing is left to rank the images by."""


def sparsity_key(s: float) -> str:
    return format(s, "g")


def checkpoint_name(model: str) -> str:
    return f"{model}.safetensors"


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _score_and_write(record, preds: np.ndarray, peaks: list[int] | None, paths: list[Path]) -> list[dict] | None:
    """One validation image's predictions by every model (M, H, W) at its own size: written as 0/255
    PNGs, and scored against its mask if it has one (peaks: pointing, for weak supervision)."""
    for path, pred in zip(paths, preds):
        write_mask_png(path, pred)
    if record.mask_path is None:
        return None
    truth = read_mask(record.mask_path)
    entries = [{"image_id": record.image_id, **metrics} for metrics in stack_metrics(truth, preds)]
    if peaks is not None:  # does each map's peak fall inside the lesion?
        for entry, peak in zip(entries, peaks):
            entry["pointing"] = float(truth.flat[peak])
    return entries


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Run:
    """One pipeline run into one output folder."""

    def __init__(self, data_dir: str | os.PathLike, spec: JobSpec, out_dir: str | os.PathLike, *, device: str | None = None, progress: ProgressFn | None = None):
        self.spec = spec
        self.out = Path(out_dir)
        self.device = torch.device(device or default_device())
        self.progress_fn = progress
        self.index: DatasetIndex = sample_records(scan_dataset(data_dir), spec.sample.max_images, spec.sample.seed)
        check_spec_fits_dataset(
            spec, columns=self.index.columns, n_images=len(self.index.records), n_masks=self.index.n_masks
        )
        # 'auto' is resolved here, so spec.json and every checkpoint name the column actually used
        spec, self.split_warnings = resolve_group_column(spec, self.index.columns)
        self.spec = spec
        self.spec_dict = spec.model_dump(mode="json")
        self.model_config = ModelConfig(spec.model.arch, spec.model.width, spec.weak.cam_threshold)
        self._claim_out_dir(Path(data_dir).resolve())
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            self.index, val_fraction=spec.split.val_fraction, test_fraction=spec.split.test_fraction,
            group_column=spec.split.group_column, seed=spec.split.seed,
        )
        self.eval_splits = {"validation": self.val_idx, **({"test": self.test_idx} if self.test_idx else {})}
        rows = [r.attributes for r in self.index.records]
        exclude = {spec.split.group_column} if spec.split.group_column else set()
        self.attributes = spec.attributes if spec.attributes is not None else usable_attributes(self.index.columns, rows, exclude=exclude)
        self.labels = {a: subgroup_labels(a, [r.get(a, "") for r in rows]) for a in self.attributes}
        self.seeds = spec.train.seed_list()
        self.setting = spec.setting
        self.image_labels = self._image_labels() if self.setting == "weakly_supervised" else None
        self.mask_known = self._masks_known()
        # per training image: whether it carries the target its setting trains on
        if self.setting == "weakly_supervised":
            self.train_labeled = ~np.isnan(self.image_labels[self.train_idx])
        else:
            self.train_labeled = self.mask_known[self.train_idx]
        self.data: DecodedDataset | None = None
        self._stage = STAGES[0]
        self._property_labels: dict[str, list[str]] | None = None
        self._stage_weights = self._estimate_stage_weights()

    def _image_labels(self) -> np.ndarray:
        """weakly_supervised: 1 for a positive value of weak.label_column, 0 for another value, NaN when missing."""
        column, positive = self.spec.weak.label_column, set(self.spec.weak.positive)
        values = [r.attributes.get(column, "").strip() for r in self.index.records]
        labels = np.array([np.nan if v.lower() in MISSING else float(v in positive) for v in values])
        train = labels[self.train_idx]
        n_pos, n_neg = int(np.nansum(train)), int(np.sum(train == 0))
        if n_pos == 0 or n_neg == 0:
            raise SpecError(
                "weak.positive",
                f"the training images hold {n_pos} positives and {n_neg} negatives of {column} in {sorted(positive)}; both are needed",
            )
        return labels

    def _masks_known(self) -> np.ndarray:
        """Per image, whether its mask may be used: semi.labeled_fraction hides the masks of all but a
        seeded fraction of the training images (validation images always keep theirs)."""
        known = np.array([r.mask_path is not None for r in self.index.records])
        fraction = self.spec.semi.labeled_fraction
        if self.setting == "semi_supervised" and fraction is not None:
            with_mask = [i for i in self.train_idx if known[i]]
            keep = max(2, int(round(fraction * len(with_mask))))
            kept = set(random.Random(self.spec.split.seed).sample(with_mask, min(keep, len(with_mask))))
            for i in with_mask:
                known[i] = i in kept
        if self.setting == "semi_supervised":
            n_labeled = int(known[self.train_idx].sum())
            if n_labeled < 2 or n_labeled == len(self.train_idx):
                raise SpecError(
                    "semi.labeled_fraction",
                    f"{n_labeled} of {len(self.train_idx)} training images keep a mask; semi_supervised needs at least 2 "
                    "with and at least 1 without (set semi.labeled_fraction below 1, or upload images without masks)",
                )
        return known

    # --- bookkeeping -------------------------------------------------------------------------
    def _claim_out_dir(self, data_dir: Path) -> None:
        # the dataset by content, not by path: each worker reads its own copy (a scratch cache)
        fingerprint = hashlib.sha256(json.dumps([(r.image_id, r.mask_path is not None) for r in self.index.records]).encode()).hexdigest()
        run_file = self.out / "state" / "run.json"
        identity = {"spec": self.spec_dict, "dataset": fingerprint}
        if run_file.is_file():
            previous = json.loads(run_file.read_text())
            if previous.get("spec") != identity["spec"] or previous.get("dataset", fingerprint) != fingerprint:
                raise RunDirError(
                    f"{self.out} holds a run of another spec or dataset; choose a new output folder"
                )
        else:
            _write_json(run_file, identity)
        _write_json(self.out / "spec.json", self.spec_dict)

    def _marker(self, stage: str) -> Path:
        return self.out / "state" / f"{stage}.json"

    def finished(self, stage: str) -> bool:
        return self._marker(stage).is_file()

    def _estimate_stage_weights(self) -> dict[str, float]:
        n_train, n_val = len(self.train_idx), len(self.val_idx)
        n_sp = len(self.spec.prune.sparsities)
        epochs, n_seeds = self.spec.train.epochs, len(self.spec.train.seed_list())
        epochs += epochs * n_val / n_train / INFERENCE_SPEEDUP  # the dense validation curve
        extra = 1 + extra_passes(self.spec.scorers)
        w = {
            "dense": n_seeds * epochs * n_train,
            "prune": n_seeds * n_sp * (self.spec.prune.finetune_epochs * n_train + (n_train + n_val) / INFERENCE_SPEEDUP),
            "score": n_seeds * n_train * (n_sp + extra) / INFERENCE_SPEEDUP,
            "attend": n_seeds * epochs * n_train * (2 if self.spec.attention.control == "random" else 1),
            "evaluate": (n_val + len(self.test_idx)) * n_seeds * len(self.bases()) / INFERENCE_SPEEDUP,
        }
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def report(self, stage: str, fraction: float, loss: float | None = None) -> None:
        if self.progress_fn is None:
            return
        before = sum(self._stage_weights[s] for s in STAGES[: STAGES.index(stage)])
        overall = min(1.0, before + self._stage_weights[stage] * fraction)
        self.progress_fn(Progress(stage, fraction, overall, loss))

    def decoded(self) -> DecodedDataset:
        if self.data is None:
            # decoding comes first in whichever stage needs the images: its reports carry no progress
            # of their own, but give the caller a chance to stop (cancel) between chunks
            self.data = decode_dataset(self.index, self.spec.image_size, cache_dir=self.out / "cache",
                                       progress=lambda _f: self.report(self._stage, 0.0))
        return self.data

    def _fit_config(self, seed: int, *, epochs: int | None = None, lr: float | None = None) -> FitConfig:
        t = self.spec.train
        return FitConfig(
            epochs=epochs or t.epochs, batch_size=t.batch_size, lr=lr or t.lr, weight_decay=t.weight_decay,
            schedule=t.schedule, augment=t.augment, seed=seed,
        )

    def _fresh_model(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return prepare_for_device(self.model_config.build(), self.device)

    def objective(self):
        if self.setting != "weakly_supervised":
            return segmentation_objective
        train = self.image_labels[self.train_idx]
        return ClassificationObjective(self.image_labels, pos_weight=float(np.sum(train == 0)) / max(1.0, float(np.nansum(train))))

    def _train(self, model, cfg: FitConfig, *, loss_weights=None, sampling_weights=None, progress=None, record=None,
               on_epoch_end=None) -> list[float]:
        """Train on the training images as the setting says; weights align with self.train_idx."""
        if self.setting != "semi_supervised":
            return fit(model, self.decoded(), self.train_idx, cfg, loss_weights=loss_weights, sampling_weights=sampling_weights,
                       progress=progress, record=record, objective=self.objective(), on_epoch_end=on_epoch_end)
        labeled = [i for i, known in zip(self.train_idx, self.train_labeled) if known]
        unlabeled = [i for i, known in zip(self.train_idx, self.train_labeled) if not known]
        by_index = lambda w: None if w is None else dict(zip(self.train_idx, map(float, w)))  # noqa: E731
        semi = self.spec.semi
        return fit_semi(
            model, self.decoded(), labeled, unlabeled, cfg, method=semi.method, unlabeled_weight=semi.unlabeled_weight,
            ema_decay=semi.ema_decay, confidence=semi.confidence, loss_weights=by_index(loss_weights),
            sampling_weights=by_index(sampling_weights), progress=progress, record=record,
            record_positions={i: row for row, i in enumerate(self.train_idx)}, on_epoch_end=on_epoch_end,
        )

    def name(self, base: str, seed: int) -> str:
        """Model names: plain for a single-seed run (dense, pruned@0.5, attended), else suffixed -s<seed>."""
        return base if len(self.seeds) == 1 else f"{base}-s{seed}"

    def _seed_fraction(self, k: int, fraction: float) -> float:
        return (k + fraction) / len(self.seeds)

    def _save(self, model: torch.nn.Module, name: str, **extra) -> None:
        (self.out / "state").mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            model, self.out / "checkpoints" / checkpoint_name(name), config=self.model_config,
            spec=self.spec_dict, extra={"model": name, **extra},
        )

    def load(self, name: str) -> torch.nn.Module:
        model, _ = load_checkpoint(self.out / "checkpoints" / checkpoint_name(name))
        return prepare_for_device(model, self.device).eval()

    def bases(self) -> list[str]:
        control = ["control"] if self.spec.attention.control == "random" else []
        return ["dense", *(f"pruned@{sparsity_key(s)}" for s in self.spec.prune.sparsities), "attended", *control]

    def model_names(self) -> list[str]:
        return [self.name(base, seed) for seed in self.seeds for base in self.bases()]

    def property_labels(self) -> dict[str, list[str]]:
        """Image-derived properties of every image, banded over the whole dataset."""
        if self._property_labels is None:
            values = subgroups.image_properties(self.decoded(), list(range(len(self.index.records))), self.mask_known)
            self._property_labels = subgroups.band_properties(values)
        return self._property_labels

    def groups_of(self, positions: list[int]) -> dict[str, list[str]]:
        labels = {**self.labels, **self.property_labels()}
        return {a: [values[i] for i in positions] for a, values in labels.items()}

    # --- stages ------------------------------------------------------------------------------
    def _train_each_seed(self, stage: str, base: str, weights_for, *, part: tuple[int, int] = (0, 1),
                         record_dynamics: bool = False, only_seed: int | None = None) -> dict[str, dict]:
        """Train a fresh model per seed and save it as base (suffixed per seed); weights_for(seed)
        answers its (loss_weights, sampling_weights). A seed that finished before an interruption is
        not trained again. part=(i, n): this is the i-th of n trainings that make up the stage.
        only_seed: train that seed alone (one unit of the job), reporting its own progress."""
        results = {}
        for k, seed in enumerate(self.seeds):
            if only_seed is not None and seed != only_seed:
                continue
            name = self.name(base, seed)
            done = self.out / "state" / f"{stage}-{name}.json"
            if done.is_file():
                results[name] = json.loads(done.read_text())
                continue
            model = self._fresh_model(seed)
            record = TrainingRecord(len(self.train_idx), self.spec.train.epochs) if record_dynamics else None
            curve: list[float | None] = []
            early_error: dict[str, np.ndarray] = {}

            def on_epoch_end(epoch: int, current: torch.nn.Module) -> None:
                curve.append(validation_prediction(current, self.decoded(), self.val_idx, self.mask_known[self.val_idx]).dice)
                if epoch == hardness.el2n_epoch(self.spec.train.epochs) and "el2n" in self.spec.scorers:
                    early_error["el2n"] = hardness.error_norm(current, self.decoded(), self.train_idx, self.objective())

            loss_weights, sampling_weights = weights_for(seed)
            losses = self._train(
                model, self._fit_config(seed), record=record, loss_weights=loss_weights, sampling_weights=sampling_weights,
                on_epoch_end=on_epoch_end if record_dynamics else None,
                progress=lambda f, l, k=k: self.report(stage, f if only_seed is not None else (part[0] + self._seed_fraction(k, f)) / part[1], l),
            )
            self._save(model, name, seed=seed)
            if record is not None:
                np.savez(self.out / "state" / f"dynamics-{name}.npz", dice=record.dice, **early_error)
            results[name] = {"epoch_losses": losses, **({"validation_dice": curve} if record_dynamics else {})}
            _write_json(done, results[name])
        return results

    def stage_dense(self) -> None:
        curves = self._train_each_seed("dense", "dense", lambda seed: (None, None), record_dynamics=True)
        _write_json(self._marker("dense"), {"training": curves})

    def stage_prune(self) -> None:
        """Prune each dense seed at each sparsity, fine-tune if asked, re-estimate BatchNorm statistics
        if asked, and report each pruned model's health next to its dense model's."""
        p = self.spec.prune
        reports = {}
        steps = len(p.sparsities) * len(self.seeds)
        has_target = self.mask_known[self.val_idx]
        for j, seed in enumerate(self.seeds):
            dense = self.load(self.name("dense", seed))
            dense_prediction = validation_prediction(self.reference(dense), self.decoded(), self.val_idx, has_target)
            for i, s in enumerate(p.sparsities):
                k = j * len(p.sparsities) + i
                model = prepare_for_device(apply_pruning_masks(dense, s, p.scope), self.device)
                if p.finetune_epochs:
                    cfg = self._fit_config(seed, epochs=p.finetune_epochs, lr=self.spec.train.lr / FINETUNE_LR_DIVISOR)
                    self._train(model, cfg, progress=lambda f, l, k=k: self.report("prune", (k + f) / steps, l))
                model = prepare_for_device(make_permanent(model), self.device).eval()
                if p.bn_recalibration:
                    recalibrate_batchnorm(model, self.decoded(), self.train_idx)
                prediction = validation_prediction(model, self.decoded(), self.val_idx, has_target)
                report = health(sparsity_report(model, s), prediction, dense_prediction, degenerate_fraction=p.degenerate_fraction)
                name = self.name(f"pruned@{sparsity_key(s)}", seed)
                self._save(model, name, seed=seed, sparsity=s, achieved_sparsity=report["achieved"], degenerate=report["degenerate"])
                reports[name.removeprefix("pruned@")] = {"sparsity": s, "seed": seed, "scope": p.scope,
                                                         "bn_recalibrated": p.bn_recalibration, **report}
                self.report("prune", (k + 1) / steps)
        _write_json(self._marker("prune"), {"reports": reports})

    def reference(self, dense: torch.nn.Module) -> torch.nn.Module:
        """The dense model the pruned ones are compared with: dense itself, or with
        prune.bn_recalibration a copy whose BatchNorm statistics are re-estimated on the same
        unaugmented training images as theirs, so the two differ by the pruned weights alone (the
        dense model's own statistics come from augmented images in train mode: a shift that pruning
        did not cause)."""
        if not self.spec.prune.bn_recalibration:
            return dense
        return recalibrate_batchnorm(copy.deepcopy(dense), self.decoded(), self.train_idx)

    def degenerate_sparsities(self) -> list[float]:
        """Sparsities at which the pruned model of any seed is degenerate: they rank nothing."""
        reports = json.loads(self._marker("prune").read_text())["reports"]
        return sorted({r["sparsity"] for r in reports.values() if r["degenerate"]})

    def warnings(self) -> list[str]:
        out = list(self.split_warnings)
        if self.finished("prune") and (bad := self.degenerate_sparsities()):
            out.append(
                f"pruned models at sparsity {', '.join(sparsity_key(s) for s in bad)} are degenerate (they predict "
                "(nearly) nothing, or far worse than the dense model: see metrics.json 'pruning'); they are left out of "
                "htl_score, and per_sparsity still shows them"
            )
        return out

    def _gallery_masks(self) -> np.ndarray:
        """Every training image's binarized prediction by the first seed's dense reference and pruned
        models, bit-packed in a memory map (images x models x pixels / 8): what the gallery shows."""
        path = self.out / "cache" / "gallery-masks.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(self.train_idx), 1 + len(self.spec.prune.sparsities), -(-self.spec.image_size**2 // 8))
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)

    def _scores_of_seed(self, k: int, seed: int, masks_out: np.ndarray | None = None) -> tuple[dict[float, np.ndarray], dict[str, np.ndarray]]:
        """Pruning disagreement per sparsity, and the other requested scorers, for one dense seed."""
        dense = self.load(self.name("dense", seed))
        pruned = {s: self.load(self.name(f"pruned@{sparsity_key(s)}", seed)) for s in self.spec.prune.sparsities}
        result = score_disagreement(
            self.reference(dense), pruned, self.decoded(), self.train_idx, batch_size=max(self.spec.train.batch_size, 32),
            progress=lambda f: self.report("score", self._seed_fraction(k, 0.8 * f)), masks_out=masks_out,
        )
        others: dict[str, np.ndarray] = {}
        wanted = set(self.spec.scorers)
        if any(SCORERS[name].source == "dynamics" for name in wanted):
            dynamics = np.load(self.out / "state" / f"dynamics-{self.name('dense', seed)}.npz")
            read_off = {**hardness.from_dynamics(dynamics["dice"]), **({"el2n": dynamics["el2n"]} if "el2n" in dynamics else {})}
            others.update({name: values for name, values in read_off.items() if name in wanted})
        if "loss" in wanted:
            others["loss"] = hardness.final_loss(dense, self.decoded(), self.train_idx, self.objective())
        for name in others:
            if SCORERS[name].needs_target:  # undefined (NaN) where the image has no target
                others[name] = np.where(self.train_labeled, others[name], np.nan)
        if "mc_dropout" in wanted:
            others["mc_dropout"] = hardness.mc_dropout_disagreement(dense, self.decoded(), self.train_idx, seed=seed)
        self.report("score", self._seed_fraction(k, 1.0))
        return result.per_sparsity, others

    def stage_score(self) -> None:
        gallery_masks = self._gallery_masks()
        per_seed = [self._scores_of_seed(k, seed, gallery_masks if k == 0 else None) for k, seed in enumerate(self.seeds)]
        sparsities = self.spec.prune.sparsities
        # as PIE averages over model populations, scores average over the dense seeds
        per_sparsity = {s: np.mean([p[s] for p, _ in per_seed], axis=0) for s in sparsities}
        degenerate = set(self.degenerate_sparsities())
        ranked_by = [s for s in sparsities if s not in degenerate]
        if not ranked_by:
            raise DegenerateError(
                f"every pruned model is degenerate (sparsities {', '.join(map(sparsity_key, sparsities))}; see the pruning "
                "report): nothing is left to rank by; choose lower prune.sparsities, train longer, or set prune.bn_recalibration"
            )
        htl_score = np.mean(np.stack([per_sparsity[s] for s in ranked_by]), axis=0)
        others = {name: np.mean([o[name] for _, o in per_seed], axis=0) for name in per_seed[0][1]}
        scores = HtlScores(image_indices=list(self.train_idx), per_sparsity=per_sparsity, htl_score=htl_score)
        is_htl = select_htl(scores.htl_score, top_fraction=self.spec.htl.top_fraction, threshold=self.spec.htl.threshold)
        ranks = scores.ranks()
        groups = self.groups_of(self.train_idx)
        items = []
        for j, i in enumerate(self.train_idx):
            record = self.index.records[i]
            items.append({
                "image_id": record.image_id,
                "htl_score": float(scores.htl_score[j]),
                "is_htl": bool(is_htl[j]),
                "rank": int(ranks[j]),
                "labeled": bool(self.train_labeled[j]),
                "per_sparsity": {sparsity_key(s): float(v[j]) for s, v in sorted(scores.per_sparsity.items())},
                "scores": {name: (float(values[j]) if np.isfinite(values[j]) else None) for name, values in others.items()},
                "attributes": dict(record.attributes),
                "subgroups": {attribute: labels[j] for attribute, labels in groups.items()},
            })
        items.sort(key=lambda item: item["rank"])
        top_fraction = self.spec.htl.top_fraction or max(float(is_htl.mean()), 1 / len(is_htl))
        agreement = hardness.agreement({"pruning": scores.htl_score, **others}, top_fraction) if others else []
        column = self.spec.split.group_column
        clusters = [self.index.records[i].attributes.get(column, "") for i in self.train_idx] if column else None
        _write_json(self.out / "state" / "enrichment.json",
                    subgroups.enrichment(groups, is_htl, clusters=clusters, cluster_name=column))
        _write_json(self.out / "state" / "attention.json", self._attention_sets(is_htl, others))
        self._write_gallery(is_htl, gallery_masks)
        _write_json(self.out / "scores.json", items)
        _write_json(self._marker("score"), {
            "n_scored": len(items), "n_htl": int(is_htl.sum()), "scorer_agreement": agreement,
            "ranked_by_sparsities": ranked_by, "degenerate_sparsities": sorted(degenerate),
        })

    def _write_gallery(self, is_htl: np.ndarray, masks: np.ndarray) -> None:
        """gallery/<layer>/<image_id>.png: the binarized masks (at image_size) that the first seed's
        dense reference and pruned models predicted for every HTL image and a seeded sample of
        GALLERY_SAMPLE others (kept from scoring, in masks): what the HTL gallery overlays on each
        image. gallery.json lists them."""
        others = np.flatnonzero(~is_htl)
        sample = np.random.default_rng(self.spec.split.seed).choice(others, min(GALLERY_SAMPLE, len(others)), replace=False)
        positions = sorted({*np.flatnonzero(is_htl).tolist(), *map(int, sample)})
        layers = ["dense", *(f"pruned@{sparsity_key(s)}" for s in self.spec.prune.sparsities)]
        size = self.spec.image_size
        for layer in layers:
            (self.out / "gallery" / layer).mkdir(parents=True, exist_ok=True)
        ids = []
        for j in positions:
            image_id = self.index.records[self.train_idx[j]].image_id
            unpacked = np.unpackbits(masks[j], axis=1, count=size * size).reshape(len(layers), size, size)
            for layer, mask in zip(layers, unpacked):
                write_mask_png(self.out / "gallery" / layer / f"{image_id}.png", mask)
            ids.append(image_id)
        _write_json(self.out / "gallery.json", {"seed": self.seeds[0], "image_size": size, "layers": layers,
                                                "images": ids, "htl": int(is_htl.sum()), "sample": len(sample)})
        Path(masks.filename).unlink(missing_ok=True)  # the scoring pass's masks are not kept

    def _attention_sets(self, is_htl: np.ndarray, others: dict[str, np.ndarray]) -> dict:
        """Which training images (by id) attention boosts: the top of the attention scorer, as many as
        the HTL set; and per seed, the random control set of that size."""
        k = int(is_htl.sum())
        scorer = self.spec.attention.scorer
        if scorer == "pruning":
            attended = np.flatnonzero(is_htl)
        else:
            values = others[scorer]
            finite = np.flatnonzero(np.isfinite(values))
            order = finite[np.lexsort((finite, -values[finite]))]
            attended = np.sort(order[:k])
        ids = [self.index.records[i].image_id for i in self.train_idx]
        out = {"scorer": scorer, "size": k, "attended": [ids[j] for j in attended]}
        if self.spec.attention.control == "random":
            n = len(self.train_idx)
            out["control"] = {
                str(seed): [ids[j] for j in np.sort(np.random.default_rng([self.spec.split.seed, seed]).choice(n, k, replace=False))]
                for seed in self.seeds
            }
        return out

    def _boost(self, image_ids: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(loss_weights, sampling_weights) over the training images that boost these images."""
        a = self.spec.attention
        chosen = set(image_ids)
        boosted = np.array([a.factor if self.index.records[i].image_id in chosen else 1.0 for i in self.train_idx])
        loss_weights = boosted if a.strategy in ("reweight", "both") else None
        sampling_weights = boosted if a.strategy in ("oversample", "both") else None
        return loss_weights, sampling_weights

    def stage_attend(self) -> None:
        sets = json.loads((self.out / "state" / "attention.json").read_text())
        control = "control" in sets
        parts = 2 if control else 1
        results = self._train_each_seed("attend", "attended", lambda seed: self._boost(sets["attended"]), part=(0, parts))
        if control:
            results.update(self._train_each_seed("attend", "control", lambda seed: self._boost(sets["control"][str(seed)]), part=(1, parts)))
        _write_json(self._marker("attend"), {"training": results})

    @torch.no_grad()
    def _evaluate_split(self, models: dict[str, torch.nn.Module], indices: list[int]) -> tuple[dict[str, list[dict]], dict[str, list[float]], list[int]]:
        """Per model, per image with a mask: metrics at the image's own size; for classifiers the
        positive probability of every image; and the images that were scored."""
        names = list(models)
        per_image: dict[str, list[dict]] = {name: [] for name in names}
        probs: dict[str, list[float]] = {name: [] for name in names}
        scored: list[int] = []
        data = self.decoded()
        weak = self.setting == "weakly_supervised"
        folders = [self.out / "predictions" / name for name in names]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        # scoring each image and writing its PNGs (zlib, file writes: outside the GIL) overlap the
        # next forward passes
        with ThreadPoolExecutor(max_workers=1) as helper:
            pending = []
            for batch in iterate_batches(indices, 32):
                images, _ = data.batch(batch)
                logits = dict(zip(names, (t.cpu() for t in predict_each(list(models.values()), images))))
                if weak:
                    for name, model in models.items():
                        probs[name] += torch.sigmoid(classify(model, images)).tolist()
                for j, i in enumerate(batch):
                    record = self.index.records[i]
                    # every model's map of this image, upsampled together to the image's own size
                    full = F.interpolate(torch.cat([logits[name][j : j + 1] for name in names]), size=data.original_sizes[i],
                                         mode="bilinear", align_corners=False)[:, 0]
                    peaks = full.flatten(1).argmax(1).tolist() if weak else None  # where each map peaks (pointing)
                    pending.append((i, helper.submit(_score_and_write, record, (full > 0).numpy(), peaks,
                                                     [folder / f"{record.image_id}.png" for folder in folders])))
                self._evaluated += len(batch)
                self.report("evaluate", self._evaluated / self._to_evaluate)
            for i, done in pending:
                entries = done.result()
                if entries is not None:
                    scored.append(i)
                    for name, entry in zip(names, entries):
                        per_image[name].append(entry)
        return per_image, probs, scored

    def stage_evaluate(self) -> None:
        names = self.model_names()
        models = {name: self.load(name) for name in names}
        self._evaluated, self._to_evaluate = 0, sum(map(len, self.eval_splits.values()))
        blocks: dict[str, dict[str, dict]] = {name: {} for name in names}
        scored_by_split: dict[str, list[int]] = {}
        for split, indices in self.eval_splits.items():
            per_image, probs, scored = self._evaluate_split(models, indices)
            scored_by_split[split] = scored
            groups = {a: [self.labels[a][i] for i in scored] for a in self.attributes}
            for name in names:
                block = {**aggregate(per_image[name], groups), "per_image": per_image[name]}
                if self.setting == "weakly_supervised":
                    truth_labels = self.image_labels[indices]
                    known = ~np.isnan(truth_labels)
                    block["classification"] = {
                        "auroc": auroc(np.asarray(probs[name])[known], truth_labels[known]),
                        "n": int(known.sum()), "positives": int(np.nansum(truth_labels)),
                    }
                blocks[name][split] = block
        training = {}
        for stage in ("dense", "attend"):
            training.update(json.loads(self._marker(stage).read_text())["training"])
        score_marker = json.loads(self._marker("score").read_text())
        report = {
            "validation_images": len(self.val_idx),
            "test_images": len(self.test_idx),
            "scored_images": len(scored_by_split["validation"]),
            "splits": list(self.eval_splits),
            "group_column": self.spec.split.group_column,
            "attributes": self.attributes,
            "seeds": self.seeds,
            "models": {},
            "pruning": json.loads(self._marker("prune").read_text())["reports"],
            "ranked_by_sparsities": score_marker["ranked_by_sparsities"],
            "degenerate_sparsities": score_marker["degenerate_sparsities"],
            "attention": {k: v for k, v in json.loads((self.out / "state" / "attention.json").read_text()).items() if k in ("scorer", "size")},
            "training_loss": {name: t["epoch_losses"] for name, t in training.items()},
            "validation_curve": {name: t["validation_dice"] for name, t in training.items() if "validation_dice" in t},
            "scorer_agreement": score_marker["scorer_agreement"],
            "warnings": self.warnings(),
        }
        # a model's entry is its validation report, with a 'test' block shaped like it
        for name in names:
            report["models"][name] = {**blocks[name]["validation"], **({"test": blocks[name]["test"]} if "test" in blocks[name] else {})}
        if len(self.seeds) > 1:
            for base in self.bases():
                entries = [report["models"][self.name(base, s)] for s in self.seeds]
                report["models"][base] = {**over_seeds(entries), **({"test": over_seeds([e["test"] for e in entries])} if self.test_idx else {})}

        def compare(a: str, b: str) -> dict:
            first = [report["models"][self.name(a, s)] for s in self.seeds]
            second = [report["models"][self.name(b, s)] for s in self.seeds]
            out = compare_over_seeds(first, second)
            if self.test_idx:
                out["test"] = compare_over_seeds([e["test"] for e in first], [e["test"] for e in second])
            return out

        report["attended_vs_dense"] = compare("dense", "attended")
        if "control" in self.bases():
            report["attended_vs_control"] = compare("control", "attended")
            report["control_vs_dense"] = compare("dense", "control")
        _write_json(self.out / "metrics.json", report)
        self._write_subgroups(report, scored_by_split)
        _write_json(self._marker("evaluate"), {"models": names})

    def _write_subgroups(self, report: dict, scored_by_split: dict[str, list[int]]) -> None:
        """subgroups.json: HTL enrichment per training subgroup, and per split and subgroup whether
        attention closed the gap: paired per-image Dice differences, bootstrapped over seeds and
        clusters of split.group_column, Benjamini-Hochberg across subgroups."""
        column = self.spec.split.group_column
        control = "control" in self.bases()

        def dice(base: str, split: str) -> np.ndarray:
            def block(s):
                entry = report["models"][self.name(base, s)]
                return entry if split == "validation" else entry["test"]
            return np.array([[p["dice"] for p in block(s)["per_image"]] for s in self.seeds])

        gap = {}
        for split, scored in scored_by_split.items():
            if not scored:
                continue
            gap[split] = subgroups.gap_closing(
                dice("dense", split), dice("attended", split), self.groups_of(scored),
                control=dice("control", split) if control else None,
                clusters=[self.index.records[i].attributes.get(column, "") for i in scored] if column else None,
                cluster_name=column, resamples=BOOTSTRAP_RESAMPLES, seed=self.spec.split.seed,
            )
        _write_json(self.out / "subgroups.json", {
            "seeds": self.seeds,
            "single_seed": len(self.seeds) == 1,
            "enrichment": json.loads((self.out / "state" / "enrichment.json").read_text()),
            "gap_closing": gap or None,
        })

    # --- units (contract.units): the same stages, split so that several workers share a job ----
    def run_unit(self, kind: str, seed: int | None = None) -> None:
        """One unit of the job graph. dense[seed] and attend[seed]/control[seed] train one seed's model;
        score runs prune and score over every dense seed; evaluate evaluates every model. A unit
        whose inputs are missing raises instead of recomputing them."""
        if kind == "dense":
            self._train_each_seed("dense", "dense", lambda s: (None, None), record_dynamics=True, only_seed=self._seed(seed))
        elif kind in ("attend", "control"):
            self._require("score")
            sets = json.loads((self.out / "state" / "attention.json").read_text())
            if kind == "control" and "control" not in sets:
                raise RunDirError("a control unit, but the spec asked for no control (attention.control)")
            chosen = sets["attended"] if kind == "attend" else sets["control"][str(self._seed(seed))]
            self._train_each_seed("attend", "attended" if kind == "attend" else "control", lambda s: self._boost(chosen),
                                  only_seed=self._seed(seed))
        elif kind == "score":
            self._require_models("dense", ["dense"])
            self._run_stages(("dense", "prune", "score"))
        elif kind == "evaluate":
            self._require_models("attend", ["attended", *(["control"] if self.spec.attention.control == "random" else [])])
            self._run_stages(("attend", "evaluate"))
        else:
            raise ValueError(f"no unit kind {kind!r}")

    def _seed(self, seed: int | None) -> int:
        if seed not in self.seeds:
            raise ValueError(f"seed {seed} is not one of the spec's seeds {self.seeds}")
        return seed

    def _require(self, stage: str) -> None:
        if not self.finished(stage):
            raise RunDirError(f"stage {stage} has not finished in {self.out}: its unit must succeed first")

    def _require_models(self, stage: str, bases: list[str]) -> None:
        missing = [self.name(b, s) for b in bases for s in self.seeds if not (self.out / "state" / f"{stage}-{self.name(b, s)}.json").is_file()]
        if missing:
            raise RunDirError(f"models not trained yet in {self.out}: {', '.join(missing)} (their units must succeed first)")

    def _run_stages(self, stages: tuple[str, ...]) -> None:
        for stage in stages:
            if self.finished(stage):
                self.report(stage, 1.0)
                continue
            self._stage = stage
            getattr(self, f"stage_{stage}")()

    def run(self) -> dict:
        self._run_stages(STAGES)
        return json.loads((self.out / "metrics.json").read_text())


def run_pipeline(data_dir, spec: JobSpec, out_dir, *, device: str | None = None, progress: ProgressFn | None = None) -> dict:
    return Run(data_dir, spec, out_dir, device=device, progress=progress).run()
