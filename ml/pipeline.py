"""The stages dense -> prune -> score -> attend -> evaluate. Each stage writes its outputs and then a
marker under OUT/state/, so a restarted run resumes after the last finished stage. Later stages read
models back from their checkpoint files, so a resumed run computes exactly what an unbroken one does."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contract.jobspec import JobSpec, check_spec_fits_dataset
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
from ml.metrics import aggregate, image_metrics, subgroup_labels, usable_attributes
from ml.models import build_model
from ml.prune import apply_pruning_masks, make_permanent, sparsity_report
from ml.scoring import score_disagreement, select_htl
from ml.train import FitConfig, fit, iterate_batches, predict_logits, prepare_for_device

STAGES = ("dense", "prune", "score", "attend", "evaluate")
FINETUNE_LR_DIVISOR = 10.0
INFERENCE_SPEEDUP = 3.0  # inference per image costs about a third of a training step


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
        self.data: DecodedDataset | None = None
        self._stage_weights = self._estimate_stage_weights()

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
        epochs = self.spec.train.epochs
        w = {
            "dense": epochs * n_train,
            "prune": self.spec.prune.finetune_epochs * n_train * n_sp + 1,
            "score": n_train * (1 + n_sp) / INFERENCE_SPEEDUP,
            "attend": epochs * n_train,
            "evaluate": n_val * (2 + n_sp) / INFERENCE_SPEEDUP,
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

    def _fit_config(self, *, epochs: int | None = None, lr: float | None = None) -> FitConfig:
        t = self.spec.train
        return FitConfig(
            epochs=epochs or t.epochs, batch_size=t.batch_size, lr=lr or t.lr, weight_decay=t.weight_decay,
            schedule=t.schedule, augment=t.augment, seed=t.seed,
        )

    def _fresh_model(self) -> torch.nn.Module:
        torch.manual_seed(self.spec.train.seed)
        return prepare_for_device(build_model(self.spec.model.arch, self.spec.model.width), self.device)

    def _save(self, model: torch.nn.Module, name: str, **extra) -> None:
        save_checkpoint(
            model, self.out / "checkpoints" / checkpoint_name(name), arch=self.spec.model.arch,
            width=self.spec.model.width, spec=self.spec_dict, extra={"model": name, **extra},
        )

    def load(self, name: str) -> torch.nn.Module:
        model, _ = load_checkpoint(self.out / "checkpoints" / checkpoint_name(name))
        return prepare_for_device(model, self.device).eval()

    def model_names(self) -> list[str]:
        return ["dense", *(f"pruned@{sparsity_key(s)}" for s in self.spec.prune.sparsities), "attended"]

    # --- stages ------------------------------------------------------------------------------
    def stage_dense(self) -> None:
        model = self._fresh_model()
        losses = fit(model, self.decoded(), self.train_idx, self._fit_config(), progress=lambda f, l: self.report("dense", f, l))
        self._save(model, "dense")
        _write_json(self._marker("dense"), {"epoch_losses": losses})

    def stage_prune(self) -> None:
        dense = self.load("dense")
        reports = {}
        sparsities = self.spec.prune.sparsities
        for k, s in enumerate(sparsities):
            model = apply_pruning_masks(dense, s)
            if self.spec.prune.finetune_epochs:
                model = prepare_for_device(model, self.device)
                cfg = self._fit_config(epochs=self.spec.prune.finetune_epochs, lr=self.spec.train.lr / FINETUNE_LR_DIVISOR)
                fit(model, self.decoded(), self.train_idx, cfg,
                    progress=lambda f, l, k=k: self.report("prune", (k + f) / len(sparsities), l))
            model = make_permanent(model)
            report = sparsity_report(model, s)
            self._save(model, f"pruned@{sparsity_key(s)}", sparsity=s, achieved_sparsity=report.achieved)
            reports[sparsity_key(s)] = report.as_dict()
            self.report("prune", (k + 1) / len(sparsities))
        _write_json(self._marker("prune"), {"reports": reports})

    def stage_score(self) -> None:
        pruned = {s: self.load(f"pruned@{sparsity_key(s)}") for s in self.spec.prune.sparsities}
        scores = score_disagreement(
            self.load("dense"), pruned, self.decoded(), self.train_idx,
            batch_size=max(self.spec.train.batch_size, 32), progress=lambda f: self.report("score", f),
        )
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
                "per_sparsity": {sparsity_key(s): float(v[j]) for s, v in sorted(scores.per_sparsity.items())},
                "attributes": dict(record.attributes),
            })
        items.sort(key=lambda item: item["rank"])
        _write_json(self.out / "scores.json", items)
        _write_json(self._marker("score"), {"n_scored": len(items), "n_htl": int(is_htl.sum())})

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
        model = self._fresh_model()
        losses = fit(model, self.decoded(), self.train_idx, self._fit_config(),
                     loss_weights=loss_weights, sampling_weights=sampling_weights,
                     progress=lambda f, l: self.report("attend", f, l))
        self._save(model, "attended")
        _write_json(self._marker("attend"), {"epoch_losses": losses})

    @torch.no_grad()
    def stage_evaluate(self) -> None:
        names = self.model_names()
        models = {name: self.load(name) for name in names}
        per_image: dict[str, list[dict]] = {name: [] for name in names}
        scored_positions: list[int] = []
        data = self.decoded()
        done = 0
        for batch in iterate_batches(self.val_idx, 32):
            images, _ = data.batch(batch)
            logits = {name: predict_logits(model, images).cpu() for name, model in models.items()}
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
                        per_image[name].append({"image_id": record.image_id, **image_metrics(truth, pred)})
            done += len(batch)
            self.report("evaluate", done / len(self.val_idx))
        groups = {a: [self.labels[a][i] for i in scored_positions] for a in self.attributes}
        report = {
            "validation_images": len(self.val_idx),
            "scored_images": len(scored_positions),
            "attributes": self.attributes,
            "models": {},
            "pruning": json.loads(self._marker("prune").read_text())["reports"],
            "training_loss": {s: json.loads(self._marker(s).read_text())["epoch_losses"] for s in ("dense", "attend")},
        }
        for name in names:
            report["models"][name] = {**aggregate(per_image[name], groups), "per_image": per_image[name]}
        report["attended_vs_dense"] = compare(report["models"]["dense"], report["models"]["attended"])
        _write_json(self.out / "metrics.json", report)
        _write_json(self._marker("evaluate"), {"models": names})

    def run(self) -> dict:
        for stage in STAGES:
            if self.finished(stage):
                self.report(stage, 1.0)
                continue
            getattr(self, f"stage_{stage}")()
        return json.loads((self.out / "metrics.json").read_text())


def compare(dense: dict, attended: dict) -> dict:
    """Attended minus dense, overall and per subgroup."""
    def delta(a: dict, b: dict) -> dict:
        return {m: b[m] - a[m] for m in a if m != "n"}

    return {
        "overall": delta(dense["overall"], attended["overall"]),
        "subgroups": {
            attr: {label: {"n": stats["n"], **delta(stats, attended["subgroups"][attr][label])} for label, stats in groups.items()}
            for attr, groups in dense["subgroups"].items()
        },
    }


def run_pipeline(data_dir, spec: JobSpec, out_dir, *, device: str | None = None, progress: ProgressFn | None = None) -> dict:
    return Run(data_dir, spec, out_dir, device=device, progress=progress).run()
