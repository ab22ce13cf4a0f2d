"""The stages dense -> prune -> score -> attend -> evaluate. Each stage writes its outputs and then a
marker under OUT/state/, so a restarted run resumes after the last finished stage. Later stages read
models back from their checkpoint files, so a resumed run computes exactly what an unbroken one does."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contract.jobspec import JobSpec, SpecError, check_spec_fits_dataset
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
from ml.metrics import MISSING, aggregate, auroc, image_metrics, subgroup_labels, usable_attributes
from ml.models import build_model
from ml.prune import apply_pruning_masks, make_permanent, sparsity_report
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
    predict_logits,
    prepare_for_device,
    segmentation_objective,
)

STAGES = ("dense", "prune", "score", "attend", "evaluate")
FINETUNE_LR_DIVISOR = 10.0
INFERENCE_SPEEDUP = 3.0  # inference per image costs about a third of a training step
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Progress:
    stage: str
    stage_fraction: float
    overall: float
    loss: float | None = None


ProgressFn = Callable[[Progress], None]


class RunDirError(ValueError):
    pass


def sparsity_key(s: float) -> str:
    return format(s, "g")


def checkpoint_name(model: str) -> str:
    return f"{model}.safetensors"


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


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
        self.spec_dict = spec.model_dump(mode="json")
        self._claim_out_dir(Path(data_dir).resolve())
        self.train_idx, self.val_idx = split_indices(
            self.index, val_fraction=spec.split.val_fraction, group_column=spec.split.group_column, seed=spec.split.seed
        )
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
        run_file = self.out / "state" / "run.json"
        identity = {"spec": self.spec_dict, "data_dir": str(data_dir)}
        if run_file.is_file():
            previous = json.loads(run_file.read_text())
            if previous != identity:
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
        extra = 1 + (hardness.MC_DROPOUT_SAMPLES if "mc_dropout" in self.spec.scorers else 0) + ("loss" in self.spec.scorers)
        w = {
            "dense": n_seeds * epochs * n_train,
            "prune": n_seeds * (self.spec.prune.finetune_epochs * n_train * n_sp + 1),
            "score": n_seeds * n_train * (n_sp + extra) / INFERENCE_SPEEDUP,
            "attend": n_seeds * epochs * n_train,
            "evaluate": n_val * n_seeds * (2 + n_sp) / INFERENCE_SPEEDUP,
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
            self.data = decode_dataset(self.index, self.spec.image_size, cache_dir=self.out / "cache")
        return self.data

    def _fit_config(self, seed: int, *, epochs: int | None = None, lr: float | None = None) -> FitConfig:
        t = self.spec.train
        return FitConfig(
            epochs=epochs or t.epochs, batch_size=t.batch_size, lr=lr or t.lr, weight_decay=t.weight_decay,
            schedule=t.schedule, augment=t.augment, seed=seed,
        )

    def _fresh_model(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = build_model(self.spec.model.arch, self.spec.model.width, cam_threshold=self.spec.weak.cam_threshold)
        return prepare_for_device(model, self.device)

    def objective(self):
        if self.setting != "weakly_supervised":
            return segmentation_objective
        train = self.image_labels[self.train_idx]
        return ClassificationObjective(self.image_labels, pos_weight=float(np.sum(train == 0)) / max(1.0, float(np.nansum(train))))

    def _train(self, model, cfg: FitConfig, *, loss_weights=None, sampling_weights=None, progress=None, record=None) -> list[float]:
        """Train on the training images as the setting says; weights align with self.train_idx."""
        if self.setting != "semi_supervised":
            return fit(model, self.decoded(), self.train_idx, cfg, loss_weights=loss_weights, sampling_weights=sampling_weights,
                       progress=progress, record=record, objective=self.objective())
        labeled = [i for i, known in zip(self.train_idx, self.train_labeled) if known]
        unlabeled = [i for i, known in zip(self.train_idx, self.train_labeled) if not known]
        by_index = lambda w: None if w is None else dict(zip(self.train_idx, map(float, w)))  # noqa: E731
        semi = self.spec.semi
        return fit_semi(
            model, self.decoded(), labeled, unlabeled, cfg, method=semi.method, unlabeled_weight=semi.unlabeled_weight,
            ema_decay=semi.ema_decay, confidence=semi.confidence, loss_weights=by_index(loss_weights),
            sampling_weights=by_index(sampling_weights), progress=progress, record=record,
            record_positions={i: row for row, i in enumerate(self.train_idx)},
        )

    def name(self, base: str, seed: int) -> str:
        """Model names: plain for a single-seed run (dense, pruned@0.5, attended), else suffixed -s<seed>."""
        return base if len(self.seeds) == 1 else f"{base}-s{seed}"

    def _seed_fraction(self, k: int, fraction: float) -> float:
        return (k + fraction) / len(self.seeds)

    def _save(self, model: torch.nn.Module, name: str, **extra) -> None:
        (self.out / "state").mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            model, self.out / "checkpoints" / checkpoint_name(name), arch=self.spec.model.arch,
            width=self.spec.model.width, spec=self.spec_dict, extra={"model": name, **extra},
        )

    def load(self, name: str) -> torch.nn.Module:
        model, _ = load_checkpoint(self.out / "checkpoints" / checkpoint_name(name))
        return prepare_for_device(model, self.device).eval()

    def bases(self) -> list[str]:
        return ["dense", *(f"pruned@{sparsity_key(s)}" for s in self.spec.prune.sparsities), "attended"]

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
    def _train_each_seed(self, stage: str, base: str, *, record_dynamics: bool = False, **weights) -> None:
        """Train a fresh model per seed and save it as base (suffixed per seed). A seed that finished
        before an interruption is not trained again."""
        losses = {}
        for k, seed in enumerate(self.seeds):
            name = self.name(base, seed)
            done = self.out / "state" / f"{stage}-{name}.json"
            if done.is_file():
                losses[name] = json.loads(done.read_text())["epoch_losses"]
                continue
            model = self._fresh_model(seed)
            record = TrainingRecord(len(self.train_idx), self.spec.train.epochs) if record_dynamics else None
            losses[name] = self._train(model, self._fit_config(seed), record=record, **weights,
                                       progress=lambda f, l, k=k: self.report(stage, self._seed_fraction(k, f), l))
            self._save(model, name, seed=seed)
            if record is not None:
                np.savez(self.out / "state" / f"dynamics-{name}.npz", dice=record.dice, error=record.error)
            _write_json(done, {"epoch_losses": losses[name]})
        _write_json(self._marker(stage), {"epoch_losses": losses})

    def stage_dense(self) -> None:
        self._train_each_seed("dense", "dense", record_dynamics=True)

    def stage_prune(self) -> None:
        reports = {}
        sparsities = self.spec.prune.sparsities
        steps = len(sparsities) * len(self.seeds)
        for j, seed in enumerate(self.seeds):
            dense = self.load(self.name("dense", seed))
            for i, s in enumerate(sparsities):
                k = j * len(sparsities) + i
                model = apply_pruning_masks(dense, s)
                if self.spec.prune.finetune_epochs:
                    model = prepare_for_device(model, self.device)
                    cfg = self._fit_config(seed, epochs=self.spec.prune.finetune_epochs, lr=self.spec.train.lr / FINETUNE_LR_DIVISOR)
                    self._train(model, cfg, progress=lambda f, l, k=k: self.report("prune", (k + f) / steps, l))
                model = make_permanent(model)
                report = sparsity_report(model, s)
                name = self.name(f"pruned@{sparsity_key(s)}", seed)
                self._save(model, name, seed=seed, sparsity=s, achieved_sparsity=report.achieved)
                reports[name.removeprefix("pruned@")] = report.as_dict()
                self.report("prune", (k + 1) / steps)
        _write_json(self._marker("prune"), {"reports": reports})

    def _scores_of_seed(self, k: int, seed: int) -> tuple[dict[float, np.ndarray], dict[str, np.ndarray]]:
        """Pruning disagreement per sparsity, and the other requested scorers, for one dense seed."""
        dense = self.load(self.name("dense", seed))
        pruned = {s: self.load(self.name(f"pruned@{sparsity_key(s)}", seed)) for s in self.spec.prune.sparsities}
        result = score_disagreement(
            dense, pruned, self.decoded(), self.train_idx, batch_size=max(self.spec.train.batch_size, 32),
            progress=lambda f: self.report("score", self._seed_fraction(k, 0.8 * f)),
        )
        others: dict[str, np.ndarray] = {}
        wanted = set(self.spec.scorers)
        if wanted & {"el2n", "forgetting", "dynamic_dice"}:
            dynamics = np.load(self.out / "state" / f"dynamics-{self.name('dense', seed)}.npz")
            read_off = hardness.from_dynamics(dynamics["dice"], dynamics["error"])
            others.update({name: values for name, values in read_off.items() if name in wanted})
        if "loss" in wanted:
            others["loss"] = hardness.final_loss(dense, self.decoded(), self.train_idx, self.objective())
        for name in ("loss", "el2n", "forgetting", "dynamic_dice"):
            if name in others:  # these need the image's target: undefined (NaN) where it has none
                others[name] = np.where(self.train_labeled, others[name], np.nan)
        if "mc_dropout" in wanted:
            others["mc_dropout"] = hardness.mc_dropout_disagreement(dense, self.decoded(), self.train_idx, seed=seed)
        self.report("score", self._seed_fraction(k, 1.0))
        return result.per_sparsity, others

    def stage_score(self) -> None:
        per_seed = [self._scores_of_seed(k, seed) for k, seed in enumerate(self.seeds)]
        # as PIE averages over model populations, scores average over the dense seeds
        per_sparsity = {s: np.mean([p[s] for p, _ in per_seed], axis=0) for s in self.spec.prune.sparsities}
        htl_score = np.mean(np.stack([per_sparsity[s] for s in self.spec.prune.sparsities]), axis=0)
        others = {name: np.mean([o[name] for _, o in per_seed], axis=0) for name in per_seed[0][1]}
        scores = HtlScores(image_indices=list(self.train_idx), per_sparsity=per_sparsity, htl_score=htl_score)
        is_htl = select_htl(scores.htl_score, top_fraction=self.spec.htl.top_fraction, threshold=self.spec.htl.threshold)
        ranks = scores.ranks()
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
            })
        items.sort(key=lambda item: item["rank"])
        top_fraction = self.spec.htl.top_fraction or max(float(is_htl.mean()), 1 / len(is_htl))
        agreement = hardness.agreement({"pruning": scores.htl_score, **others}, top_fraction) if others else []
        _write_json(self.out / "state" / "enrichment.json", subgroups.enrichment(self.groups_of(self.train_idx), is_htl))
        _write_json(self.out / "scores.json", items)
        _write_json(self._marker("score"), {"n_scored": len(items), "n_htl": int(is_htl.sum()), "scorer_agreement": agreement})

    def htl_mask(self) -> np.ndarray:
        """HTL membership aligned with self.train_idx, read back from scores.json."""
        flags = {item["image_id"]: item["is_htl"] for item in json.loads((self.out / "scores.json").read_text())}
        return np.array([flags[self.index.records[i].image_id] for i in self.train_idx], dtype=bool)

    def attention_weights(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(loss_weights, sampling_weights) over the training images, per the attention strategy."""
        a = self.spec.attention
        boosted = np.where(self.htl_mask(), a.factor, 1.0)
        loss_weights = boosted if a.strategy in ("reweight", "both") else None
        sampling_weights = boosted if a.strategy in ("oversample", "both") else None
        return loss_weights, sampling_weights

    def stage_attend(self) -> None:
        loss_weights, sampling_weights = self.attention_weights()
        self._train_each_seed("attend", "attended", loss_weights=loss_weights, sampling_weights=sampling_weights)

    @torch.no_grad()
    def stage_evaluate(self) -> None:
        names = self.model_names()
        models = {name: self.load(name) for name in names}
        per_image: dict[str, list[dict]] = {name: [] for name in names}
        scored_positions: list[int] = []
        data = self.decoded()
        done = 0
        weak = self.setting == "weakly_supervised"
        probs: dict[str, list[float]] = {name: [] for name in names}
        for batch in iterate_batches(self.val_idx, 32):
            images, _ = data.batch(batch)
            logits = {name: predict_logits(model, images).cpu() for name, model in models.items()}
            if weak:
                for name, model in models.items():
                    probs[name] += torch.sigmoid(classify(model, images)).tolist()
            for j, i in enumerate(batch):
                record = self.index.records[i]
                height, width = data.original_sizes[i]
                truth = read_mask(record.mask_path) if record.mask_path is not None else None
                if truth is not None:
                    scored_positions.append(i)
                for name in names:
                    full = F.interpolate(logits[name][j : j + 1], size=(height, width), mode="bilinear", align_corners=False)
                    pred = (full[0, 0] > 0).numpy()
                    target = self.out / "predictions" / name / f"{record.image_id}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pred.astype(np.uint8) * 255).save(target)
                    if truth is not None:
                        entry = {"image_id": record.image_id, **image_metrics(truth, pred)}
                        if weak:  # does the map's peak fall inside the lesion?
                            peak = int(torch.argmax(full[0, 0]))
                            entry["pointing"] = float(truth.flat[peak])
                        per_image[name].append(entry)
            done += len(batch)
            self.report("evaluate", done / len(self.val_idx))
        groups = {a: [self.labels[a][i] for i in scored_positions] for a in self.attributes}
        training_loss = {}
        for stage in ("dense", "attend"):
            training_loss.update(json.loads(self._marker(stage).read_text())["epoch_losses"])
        report = {
            "validation_images": len(self.val_idx),
            "scored_images": len(scored_positions),
            "attributes": self.attributes,
            "seeds": self.seeds,
            "models": {},
            "pruning": json.loads(self._marker("prune").read_text())["reports"],
            "training_loss": training_loss,
            "scorer_agreement": json.loads(self._marker("score").read_text())["scorer_agreement"],
        }
        for name in names:
            report["models"][name] = {**aggregate(per_image[name], groups), "per_image": per_image[name]}
            if weak:
                truth_labels = self.image_labels[self.val_idx]
                known = ~np.isnan(truth_labels)
                report["models"][name]["classification"] = {
                    "auroc": auroc(np.asarray(probs[name])[known], truth_labels[known]),
                    "n": int(known.sum()), "positives": int(np.nansum(truth_labels)),
                }
        if len(self.seeds) > 1:
            for base in self.bases():
                report["models"][base] = over_seeds([report["models"][self.name(base, s)] for s in self.seeds])
        report["attended_vs_dense"] = compare_over_seeds(
            [report["models"][self.name("dense", s)] for s in self.seeds],
            [report["models"][self.name("attended", s)] for s in self.seeds],
        )
        _write_json(self.out / "metrics.json", report)
        self._write_subgroups(report, scored_positions)
        _write_json(self._marker("evaluate"), {"models": names})

    def _write_subgroups(self, report: dict, scored_positions: list[int]) -> None:
        """subgroups.json: HTL enrichment per training subgroup, and per validation subgroup whether
        attention closed the gap (Dice averaged over seeds per image, bootstrap over images)."""
        def mean_dice(base: str) -> np.ndarray:
            return np.mean([[p["dice"] for p in report["models"][self.name(base, s)]["per_image"]] for s in self.seeds], axis=0)

        gap = subgroups.gap_closing(
            mean_dice("dense"), mean_dice("attended"), self.groups_of(scored_positions),
            resamples=BOOTSTRAP_RESAMPLES, seed=self.spec.split.seed,
        ) if scored_positions else None
        _write_json(self.out / "subgroups.json", {
            "seeds": self.seeds,
            "single_seed": len(self.seeds) == 1,
            "enrichment": json.loads((self.out / "state" / "enrichment.json").read_text()),
            "gap_closing": gap,
        })

    def run(self) -> dict:
        for stage in STAGES:
            if self.finished(stage):
                self.report(stage, 1.0)
                continue
            getattr(self, f"stage_{stage}")()
        return json.loads((self.out / "metrics.json").read_text())


def run_pipeline(data_dir, spec: JobSpec, out_dir, *, device: str | None = None, progress: ProgressFn | None = None) -> dict:
    return Run(data_dir, spec, out_dir, device=device, progress=progress).run()
