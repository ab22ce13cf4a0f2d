"""A run of the stages dense -> label_check -> prune -> score -> attend -> evaluate (ml.stages) into one output
folder. Each stage's result is saved there, then a marker under OUT/state/, so a restarted run resumes
after the last finished stage; later stages read models back from their checkpoint files, so a
resumed run computes exactly what an unbroken one does. The same folder serves a job split into
units (contract.units), each on whichever worker claims it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.jobspec import JobSpec, check_spec_fits_dataset, resolve_group_column
from contract.results import CheckpointFile, EvaluationResult, ImageScore, JobResults, decode, encode
from contract.scorers import SCORERS, extra_passes
from contract.units import INFERENCE_SPEEDUP
from ml import focus, label_check, subgroups
from ml.checkpoints import load_checkpoint, save_checkpoint
from ml.data import DatasetIndex, DecodedDataset, decode_dataset, sample_records, scan_dataset, split_indices
from ml.evaluation import blank_guesses, compare_models, evaluate_split, image_evaluations, model_reports, split_reports
from ml.metrics import metric_values, subgroup_labels, usable_attributes
from ml.models import ModelConfig
from ml.png import write_mask_png
from ml.setting import SEMI, make_targets
from ml.stages import (
    AttentionSets,
    DegenerateError,
    SeedScores,
    StageInputs,
    attention_sets,
    boost,
    prune_dense,
    rank_images,
    score_seed,
    sparsity_key,
    train_model,
)
from ml.train import prepare_for_device

__all__ = ["STAGES", "DegenerateError", "Progress", "Run", "RunDirError", "run_pipeline", "sparsity_key"]

STAGES = ("dense", "label_check", "prune", "score", "attend", "evaluate")
LABEL_CHECK_ATTRIBUTE = "label_check"  # the subgroup every image falls in by its label check: issue, ok, unchecked
BOOTSTRAP_RESAMPLES = 2000
GALLERY_SAMPLE = 50  # images outside the HTL set whose predicted masks are kept too, for comparison


@dataclass(frozen=True)
class Progress:
    stage: str
    stage_fraction: float
    overall: float
    loss: float | None = None


ProgressFn = Callable[[Progress], None]


BLANK_GUESSES = {"all_foreground": "an all-foreground mask", "centred_disc": "a centred disc of the mean lesion size"}


class RunDirError(ValueError):
    pass


def checkpoint_name(model: str) -> str:
    return f"{model}.safetensors"


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(path.read_text())


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Run:
    """One pipeline run into one output folder."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        spec: JobSpec,
        out_dir: str | os.PathLike,
        *,
        device: str | None = None,
        progress: ProgressFn | None = None,
    ):
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
        self._claim_out_dir()
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            self.index,
            val_fraction=spec.split.val_fraction,
            test_fraction=spec.split.test_fraction,
            group_column=spec.split.group_column,
            seed=spec.split.seed,
        )
        self.eval_splits = {"validation": self.val_idx, **({"test": self.test_idx} if self.test_idx else {})}
        rows = [r.attributes for r in self.index.records]
        exclude = {spec.split.group_column} if spec.split.group_column else set()
        self.attributes = (
            spec.attributes
            if spec.attributes is not None
            else usable_attributes(self.index.columns, rows, exclude=exclude)
        )
        self.labels = {a: subgroup_labels(a, [r.get(a, "") for r in rows]) for a in self.attributes}
        self.seeds = spec.train.seed_list()
        self.targets = make_targets(self.index, spec, self.train_idx)
        self.data: DecodedDataset | None = None
        self._stage = STAGES[0]
        self._property_labels: dict[str, list[str]] | None = None
        self._label_check_cache: dict | None = None
        self._oos_predicted: dict[int, np.ndarray] = {}
        self._stage_weights = self._estimate_stage_weights()

    # --- bookkeeping -------------------------------------------------------------------------
    def _claim_out_dir(self) -> None:
        # the dataset by content, not by path: each worker reads its own copy (a scratch cache)
        fingerprint = hashlib.sha256(
            json.dumps([(r.image_id, r.mask_path is not None) for r in self.index.records]).encode()
        ).hexdigest()
        run_file = self.out / "state" / "run.json"
        identity = {"spec": self.spec_dict, "dataset": fingerprint}
        if run_file.is_file():
            previous = _read_json(run_file)
            if previous.get("spec") != identity["spec"] or previous.get("dataset", fingerprint) != fingerprint:
                raise RunDirError(f"{self.out} holds a run of another spec or dataset; choose a new output folder")
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
        epochs, n_seeds = self.spec.train.epochs, len(self.seeds)
        epochs += epochs * n_val / n_train / INFERENCE_SPEEDUP  # the dense validation curve
        extra = 1 + extra_passes(self.spec.scorers)
        lc = self.spec.label_check
        k = lc.folds
        w = {
            "dense": n_seeds * epochs * n_train,
            "label_check": (k - 1) * (lc.epochs or self.spec.train.epochs) * n_train + n_train / INFERENCE_SPEEDUP
            if lc.enabled
            else 0.0,
            "prune": n_seeds
            * n_sp
            * (self.spec.prune.finetune_epochs * n_train + (n_train + n_val) / INFERENCE_SPEEDUP),
            "score": n_seeds * n_train * (n_sp + extra) / INFERENCE_SPEEDUP,
            "attend": n_seeds
            * (epochs if self.spec.attention.mode == "from_scratch" else self.spec.attention.finetune_epochs)
            * n_train
            * (2 if self.spec.attention.control == "random" else 1),
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
            self.data = decode_dataset(
                self.index,
                self.spec.image_size,
                cache_dir=self.out / "cache",
                progress=lambda _f: self.report(self._stage, 0.0),
            )
        return self.data

    def inputs(self) -> StageInputs:
        return StageInputs(
            spec=self.spec,
            index=self.index,
            data=self.decoded(),
            val_idx=self.val_idx,
            targets=self.targets,
            model_config=self.model_config,
            device=self.device,
        )

    def name(self, base: str, seed: int) -> str:
        """Model names: plain for a single-seed run (dense, pruned@0.5, attended), else suffixed -s<seed>."""
        return base if len(self.seeds) == 1 else f"{base}-s{seed}"

    def _seed_fraction(self, k: int, fraction: float) -> float:
        return (k + fraction) / len(self.seeds)

    def _save(
        self, model: torch.nn.Module, base: str, seed: int, *, sparsity: float | None = None, **extra
    ) -> CheckpointFile:
        """Writes the model's checkpoint, and beside the run's state what it is (for the units after this one)."""
        name = self.name(base, seed)
        relative = f"checkpoints/{checkpoint_name(name)}"
        details = {"seed": seed, **({"sparsity": sparsity} if sparsity is not None else {}), **extra}
        digest, size = save_checkpoint(
            model, self.out / relative, config=self.model_config, spec=self.spec_dict, extra={"model": name, **details}
        )
        saved = CheckpointFile(
            name=name, base=base, seed=seed, sparsity=sparsity, path=relative, sha256=digest, size_bytes=size
        )
        _write_json(self.out / "state" / "checkpoints" / f"{name}.json", encode(saved))
        return saved

    def checkpoint_files(self) -> list[CheckpointFile]:
        """Every model of the run, as saved (in model_names order)."""
        files = []
        for name in self.model_names():
            record = self.out / "state" / "checkpoints" / f"{name}.json"
            if not record.is_file():
                raise RunDirError(
                    f"{self.out} has no record of checkpoint {name} (its unit has not finished, or the folder predates checkpoint records)"
                )
            files.append(decode(CheckpointFile, _read_json(record)))
        return files

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
            values = subgroups.image_properties(
                self.decoded(), list(range(len(self.index.records))), self.targets.mask_known
            )
            self._property_labels = subgroups.band_properties(values)
        return self._property_labels

    def groups_of(self, positions: list[int]) -> dict[str, list[str]]:
        labels = {**self.labels, **self.property_labels(), **self.label_check_labels()}
        return {a: [values[i] for i in positions] for a, values in labels.items()}

    def label_check_labels(self) -> dict[str, list[str]]:
        """Every image's subgroup by the label check (issue, ok, or unchecked: no mask to check), once
        it has run: so every table of metrics per subgroup also gives each model's figures without
        the flagged images (label_check=ok)."""
        results = self.label_check_results()
        if results is None:
            return {}
        by_id = results["images"]
        return {
            LABEL_CHECK_ATTRIBUTE: [
                ("issue" if by_id[r.image_id]["issue"] else "ok") if r.image_id in by_id else "unchecked"
                for r in self.index.records
            ]
        }

    def label_check_results(self) -> dict | None:
        """state/label_check-results.json, once the score stage has written it (None when the check is off)."""
        path = self.out / "state" / "label_check-results.json"
        if not self.spec.label_check.enabled or not path.is_file():
            return None
        if self._label_check_cache is None:
            self._label_check_cache = _read_json(path)
        return self._label_check_cache

    def attention(self) -> AttentionSets:
        return decode(AttentionSets, _read_json(self.out / "state" / "attention.json"))

    def degenerate_sparsities(self) -> list[float]:
        """Sparsities at which the pruned model of any seed is degenerate: they rank nothing."""
        reports = _read_json(self._marker("prune"))["reports"]
        return sorted({r["sparsity"] for r in reports.values() if r["degenerate"]})

    def warnings(self) -> list[str]:
        out = list(self.split_warnings)
        if self.finished("score") and _read_json(self._marker("score"))["n_htl"] == 0:
            out.append(
                f"the HTL set is empty (no image has htl_score >= htl.threshold {self.spec.htl.threshold:g}): nothing was "
                "attended, and the attended and control models are the dense ones; lower htl.threshold or use htl.top_fraction"
            )
        if self.finished("prune") and (bad := self.degenerate_sparsities()):
            out.append(
                f"pruned models at sparsity {', '.join(sparsity_key(s) for s in bad)} are degenerate (they predict "
                "(nearly) nothing, or far worse than the dense model: see metrics.json 'pruning'); they are left out of "
                "htl_score, and per_sparsity still shows them"
            )
        return out

    # --- stages: each loads its inputs, calls ml.stages, saves what it returns ----------------------
    def _train_each_seed(
        self,
        stage: str,
        base: str,
        weights_for,
        *,
        part: tuple[int, int] = (0, 1),
        record_dynamics: bool = False,
        only_seed: int | None = None,
        start_from: str | None = None,
    ) -> dict[str, dict]:
        """Train a fresh model per seed and save it as base (suffixed per seed); weights_for(seed)
        answers its (loss_weights, sampling_weights). A seed that finished before an interruption is
        not trained again. start_from: fine-tune that base's model of the same seed instead. part=(i, n): this is the i-th of n trainings that make up the stage.
        only_seed: train that seed alone (one unit of the job), reporting its own progress."""
        results = {}
        for k, seed in enumerate(self.seeds):
            if only_seed is not None and seed != only_seed:
                continue
            name = self.name(base, seed)
            done = self.out / "state" / f"{stage}-{name}.json"
            if done.is_file():
                results[name] = _read_json(done)
                continue
            loss_weights, sampling_weights = weights_for(seed)
            trained = train_model(
                self.inputs(),
                seed,
                loss_weights=loss_weights,
                sampling_weights=sampling_weights,
                record_dynamics=record_dynamics,
                start=None if start_from is None else self.load(self.name(start_from, seed)),
                progress=lambda f, label, k=k: self.report(
                    stage, f if only_seed is not None else (part[0] + self._seed_fraction(k, f)) / part[1], label
                ),
            )
            self._save(trained.model, base, seed)
            if trained.dynamics is not None:
                np.savez(self.out / "state" / f"dynamics-{name}.npz", **trained.dynamics)
            results[name] = {
                "epoch_losses": trained.epoch_losses,
                **({"validation_dice": trained.validation_dice} if trained.validation_dice is not None else {}),
            }
            _write_json(done, results[name])
        return results

    def stage_dense(self) -> None:
        curves = self._train_each_seed("dense", "dense", lambda seed: (None, None), record_dynamics=True)
        _write_json(self._marker("dense"), {"training": curves})

    def _fold_file(self, fold: int) -> Path:
        return self.out / "state" / f"label_check-fold{fold}.npz"

    def _check_fold(self, fold: int, *, only: bool = False) -> None:
        """Trains fold `fold`'s model and saves its out-of-sample check (unless saved already)."""
        path = self._fold_file(fold)
        if path.is_file():
            return
        k = self.spec.label_check.folds
        checked = label_check.check_fold(
            self.inputs(),
            fold,
            progress=lambda f, loss: self.report("label_check", f if only else (fold + f) / k, loss),
        )
        q = checked.quality
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(
            tmp,
            indices=np.asarray(checked.indices, dtype=np.int64),
            quality=q.quality,
            contradicted=q.contradicted,
            oos_dice=q.oos_dice,
            predicted=checked.predicted,
        )
        os.replace(tmp, path)

    def stage_label_check(self) -> None:
        lc = self.spec.label_check
        if lc.enabled:
            for fold in range(lc.folds):
                self._check_fold(fold)
        _write_json(self._marker("label_check"), {"enabled": lc.enabled, "folds": lc.folds if lc.enabled else 0})

    def _combine_label_check(self) -> dict:
        """Every checked image's label quality: training images from their fold's model, held-out ones
        from the dense models (every seed's, averaged), which never saw them. Writes state/label_check-results.json
        and, for the gallery, each training image's out-of-sample prediction (packed) in the cache."""
        lc = self.spec.label_check
        images: dict[str, dict] = {}

        def add(split: str, indices, quality: label_check.LabelQuality) -> None:
            issues = label_check.flag_label_issues(quality.quality, max_quality=lc.max_quality)
            for j, i in enumerate(indices):
                images[self.index.records[int(i)].image_id] = {
                    "split": split,
                    "quality": float(quality.quality[j]),
                    "contradicted": float(quality.contradicted[j]),
                    "oos_dice": float(quality.oos_dice[j]),
                    "issue": bool(issues[j]),
                }

        predicted = {}
        for fold in range(lc.folds):
            saved = np.load(self._fold_file(fold))
            add(
                "train",
                saved["indices"],
                label_check.LabelQuality(saved["quality"], saved["contradicted"], saved["oos_dice"]),
            )
            predicted.update(zip(saved["indices"].tolist(), saved["predicted"]))
        dense = [self.load(self.name("dense", seed)) for seed in self.seeds]
        for split, indices in self.eval_splits.items():
            with_mask = [i for i in indices if self.targets.mask_known[i]]
            if with_mask:
                add(split, with_mask, label_check.check_with(dense, self.decoded(), with_mask).quality)
        order = sorted(images, key=lambda i: (images[i]["quality"], i))
        body = {
            "enabled": True,
            "folds": lc.folds,
            "max_quality": lc.max_quality,
            "confident": label_check.CONFIDENT,
            "checked": {
                split: sum(v["split"] == split for v in images.values()) for split in ("train", *self.eval_splits)
            },
            "issues": [{"image_id": i, **images[i]} for i in order if images[i]["issue"]],
            "images": images,
        }
        _write_json(self.out / "state" / "label_check-results.json", body)
        self._label_check_cache = body
        self._oos_predicted = predicted
        return body

    def stage_prune(self) -> None:
        p = self.spec.prune
        reports = {}
        for j, seed in enumerate(self.seeds):
            pruned = prune_dense(
                self.inputs(),
                self.load(self.name("dense", seed)),
                seed,
                progress=lambda f, label, j=j: self.report("prune", self._seed_fraction(j, f), label),
            )
            for each in pruned:
                saved = self._save(
                    each.model,
                    f"pruned@{sparsity_key(each.sparsity)}",
                    seed,
                    sparsity=each.sparsity,
                    achieved_sparsity=each.health["achieved"],
                    degenerate=each.health["degenerate"],
                )
                reports[saved.name.removeprefix("pruned@")] = {
                    "sparsity": each.sparsity,
                    "seed": seed,
                    "scope": p.scope,
                    "bn_recalibrated": p.bn_recalibration,
                    **each.health,
                }
        _write_json(self._marker("prune"), {"reports": reports})

    def _gallery_masks(self) -> np.ndarray:
        """Every training image's binarized prediction by the first seed's dense reference and pruned
        models, bit-packed in a memory map (images x models x pixels / 8): what the gallery shows."""
        path = self.out / "cache" / "gallery-masks.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(self.train_idx), 1 + len(self.spec.prune.sparsities), -(-(self.spec.image_size**2) // 8))
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)

    def _scores_of_seed(self, k: int, seed: int, masks_out: np.ndarray | None = None) -> SeedScores:
        dense_name = self.name("dense", seed)
        dynamics = None
        if any(SCORERS[name].source == "dynamics" for name in self.spec.scorers):
            dynamics = dict(np.load(self.out / "state" / f"dynamics-{dense_name}.npz"))
        return score_seed(
            self.inputs(),
            self.load(dense_name),
            {s: self.load(self.name(f"pruned@{sparsity_key(s)}", seed)) for s in self.spec.prune.sparsities},
            seed,
            dynamics=dynamics,
            masks_out=masks_out,
            progress=lambda f: self.report("score", self._seed_fraction(k, f)),
        )

    def stage_score(self) -> list[ImageScore]:
        checked = self._combine_label_check()["images"] if self.spec.label_check.enabled else {}
        gallery_masks = self._gallery_masks()
        per_seed = [
            self._scores_of_seed(k, seed, gallery_masks if k == 0 else None) for k, seed in enumerate(self.seeds)
        ]
        degenerate = set(self.degenerate_sparsities())
        groups = self.groups_of(self.train_idx)
        inputs = self.inputs()
        ranking = rank_images(inputs, per_seed, degenerate=degenerate, groups=groups)
        column = self.spec.split.group_column
        clusters = [self.index.records[i].attributes.get(column, "") for i in self.train_idx] if column else None
        # enrichment among the images that may be HTL (weakly supervised: the positives, or the label would be "enriched")
        rankable = self.targets.train_rankable
        kept = np.flatnonzero(rankable)
        _write_json(
            self.out / "state" / "enrichment.json",
            subgroups.enrichment(
                {a: [labels[j] for j in kept] for a, labels in groups.items()},
                ranking.is_htl[kept],
                clusters=[clusters[j] for j in kept] if clusters else None,
                cluster_name=column,
            ),
        )
        ids = inputs.image_ids(self.train_idx)
        excluded = (
            {i for i in ids if checked.get(i, {}).get("issue")} if self.spec.attention.exclude_label_issues else set()
        )
        excluded |= {image_id for image_id, ok in zip(ids, rankable) if not ok}  # the control draws from the same pool
        if self.spec.setting == SEMI and self.spec.attention.unlabeled == "leave_out":
            # the teacher's pseudo-labels are least reliable on exactly these images: boosting them amplifies its errors
            excluded |= {s.image_id for s in ranking.scores if not s.labeled}
        sets = attention_sets(inputs, ranking, self.seeds, excluded=excluded)
        _write_json(self.out / "state" / "attention.json", encode(sets))
        attended = set(sets.attended)
        scores = [
            dataclasses.replace(
                s,
                label_quality=checked[s.image_id]["quality"] if s.image_id in checked else None,
                label_issue=checked[s.image_id]["issue"] if s.image_id in checked else None,
                attended=s.image_id in attended,
            )
            for s in ranking.scores
        ]
        ranking = dataclasses.replace(ranking, scores=scores)
        self._write_gallery(ranking.is_htl, gallery_masks, flagged={i for i in ids if checked.get(i, {}).get("issue")})
        _write_json(self.out / "scores.json", encode(ranking.scores))
        _write_json(
            self._marker("score"),
            {
                "n_scored": len(ranking.scores),
                "n_htl": int(ranking.is_htl.sum()),
                "scorer_agreement": ranking.agreement,
                "ranked_by_sparsities": ranking.ranked_by,
                "degenerate_sparsities": sorted(degenerate),
            },
        )
        return ranking.scores

    def _write_gallery(self, is_htl: np.ndarray, masks: np.ndarray, flagged: set[str]) -> None:
        """gallery/<layer>/<image_id>.png: the binarized masks (at image_size) that the first seed's
        dense reference and pruned models predicted for every HTL image and a seeded sample of
        GALLERY_SAMPLE others (kept from scoring, in masks): what the HTL gallery overlays on each
        image. gallery.json lists them."""
        others = np.flatnonzero(~is_htl)
        sample = np.random.default_rng(self.spec.split.seed).choice(
            others, min(GALLERY_SAMPLE, len(others)), replace=False
        )
        flagged_positions = [j for j, i in enumerate(self.train_idx) if self.index.records[i].image_id in flagged]
        positions = sorted({*np.flatnonzero(is_htl).tolist(), *map(int, sample), *flagged_positions})
        layers = ["dense", *(f"pruned@{sparsity_key(s)}" for s in self.spec.prune.sparsities)]
        size = self.spec.image_size
        oos = self._oos_predicted
        for layer in [*layers, *(["oos"] if oos else [])]:
            (self.out / "gallery" / layer).mkdir(parents=True, exist_ok=True)
        ids, oos_ids = [], []
        for j in positions:
            i = self.train_idx[j]
            image_id = self.index.records[i].image_id
            unpacked = np.unpackbits(masks[j], axis=1, count=size * size).reshape(len(layers), size, size)
            for layer, mask in zip(layers, unpacked):
                write_mask_png(self.out / "gallery" / layer / f"{image_id}.png", mask)
            if i in oos:  # the label check's out-of-sample prediction, for images with a mask
                write_mask_png(
                    self.out / "gallery" / "oos" / f"{image_id}.png",
                    np.unpackbits(oos[i], count=size * size).reshape(size, size),
                )
                oos_ids.append(image_id)
            ids.append(image_id)
        _write_json(
            self.out / "gallery.json",
            {
                "seed": self.seeds[0],
                "image_size": size,
                "layers": [*layers, *(["oos"] if oos else [])],
                "images": ids,
                "oos_images": oos_ids,
                "htl": int(is_htl.sum()),
                "sample": len(sample),
                "label_issues": len(flagged_positions),
            },
        )
        Path(masks.filename).unlink(missing_ok=True)  # the scoring pass's masks are not kept

    def _attend_base(
        self, base: str, sets: AttentionSets, *, part: tuple[int, int] = (0, 1), only_seed: int | None = None
    ) -> dict[str, dict]:
        """Train the attended models (base 'attended') or their random controls ('control')."""
        if base == "control" and sets.control is None:
            raise RunDirError("a control unit, but the spec asked for no control (attention.control)")
        if sets.size == 0:
            return self._dense_as(base, only_seed)
        chosen = (lambda seed: sets.attended) if base == "attended" else (lambda seed: sets.control[str(seed)])
        start_from = "dense" if self.spec.attention.mode == "fine_tune" else None
        return self._train_each_seed(
            "attend",
            base,
            lambda seed: boost(self.inputs(), chosen(seed)),
            part=part,
            only_seed=only_seed,
            start_from=start_from,
        )

    def _dense_as(self, base: str, only_seed: int | None) -> dict[str, dict]:
        """With nothing to attend (an empty HTL set) there is no attention to train: the attended
        (and control) model of each seed is its dense model, saved under that name."""
        results = {}
        for seed in self.seeds:
            if only_seed is not None and seed != only_seed:
                continue
            name = self.name(base, seed)
            done = self.out / "state" / f"attend-{name}.json"
            if not done.is_file():
                self._save(self.load(self.name("dense", seed)), base, seed)
                _write_json(done, {"epoch_losses": [], "note": "empty HTL set: the dense model, untrained further"})
            results[name] = _read_json(done)
        return results

    def stage_attend(self) -> None:
        sets = self.attention()
        parts = 2 if sets.control is not None else 1
        results = self._attend_base("attended", sets, part=(0, parts))
        if sets.control is not None:
            results.update(self._attend_base("control", sets, part=(1, parts)))
        _write_json(self._marker("attend"), {"training": results})

    def stage_evaluate(self) -> EvaluationResult:
        names = self.model_names()
        models = {name: self.load(name) for name in names}
        inputs = self.inputs()
        for name in names:
            (self.out / "predictions" / name).mkdir(parents=True, exist_ok=True)
        done, to_evaluate = 0, sum(map(len, self.eval_splits.values()))

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.report("evaluate", done / to_evaluate)

        focus_split = "test" if "test" in self.eval_splits else "validation"
        dense_vs_pruned = self._disagreement_pairs()  # on every held-out split: each has its focus endpoint
        results = {
            split: evaluate_split(
                inputs,
                models,
                indices,
                progress=advance,
                pairs=dense_vs_pruned,
                prediction_path=lambda model, image_id: self.out / "predictions" / model / f"{image_id}.png",
            )
            for split, indices in self.eval_splits.items()
        }
        labels = {**self.labels, **self.label_check_labels()}
        by_split = {
            split: split_reports(results[split], indices, labels, self.targets)
            for split, indices in self.eval_splits.items()
        }
        training = {}
        for stage in ("dense", "attend"):
            training.update(_read_json(self._marker(stage))["training"])
        score_marker = _read_json(self._marker("score"))
        attention = self.attention()
        report = {
            "validation_images": len(self.val_idx),
            "test_images": len(self.test_idx),
            "scored_images": len(results["validation"].scored),
            "splits": list(self.eval_splits),
            "group_column": self.spec.split.group_column,
            "attributes": self.attributes,
            "seeds": self.seeds,
            "models": model_reports(by_split, bases=self.bases(), seeds=self.seeds, name=self.name),
            "pruning": _read_json(self._marker("prune"))["reports"],
            "ranked_by_sparsities": score_marker["ranked_by_sparsities"],
            "degenerate_sparsities": score_marker["degenerate_sparsities"],
            "attention": {"scorer": attention.scorer, "size": attention.size},
            "training_loss": {name: t["epoch_losses"] for name, t in training.items()},
            "validation_curve": {name: t["validation_dice"] for name, t in training.items() if "validation_dice" in t},
            "scorer_agreement": score_marker["scorer_agreement"],
            "label_check": self._label_check_summary(),
            "warnings": self.warnings(),
        }
        pairs = [("attended_vs_dense", "dense", "attended")]
        if "control" in self.bases():
            pairs += [("attended_vs_control", "control", "attended"), ("control_vs_dense", "dense", "control")]
        for key, a, b in pairs:
            report[key] = compare_models(report["models"], a, b, seeds=self.seeds, name=self.name)
        report["blank_guesses"] = self._blank_guesses(report, results)
        report["warnings"] += [line for split, b in report["blank_guesses"].items() for line in b["warnings"]]
        if not self.targets.weak:
            endpoint = self._focus_endpoint(report, focus_split, results[focus_split])
            report["focus"], report["worst_decile"], report["verdict"] = (
                endpoint["focus"],
                endpoint["worst_decile"],
                endpoint["verdict"],
            )
            for key in ("attended_vs_dense", "attended_vs_control"):
                if key in report:
                    report[key]["focus"] = endpoint[key]
            if focus_split != "validation":  # the same endpoint on validation: where defaults and variants are chosen
                report["validation_endpoint"] = self._focus_endpoint(report, "validation", results["validation"])
        _write_json(self.out / "metrics.json", report)
        result = EvaluationResult(
            evaluations=[e for split, r in results.items() for e in image_evaluations(split, r)],
            metrics=metric_values(report["models"]),
            summary={k: v for k, v in report.items() if k != "models"},
            subgroups=self._write_subgroups(report, {split: r.scored for split, r in results.items()}),
        )
        _write_json(self.out / "state" / "evaluation.json", encode(result))
        _write_json(self._marker("evaluate"), {"models": names})
        return result

    def _blank_guesses(self, report: dict, results: dict) -> dict:
        """Per held-out split, what guesses that read no pixel score on the images the models were
        scored on (weakly supervised: the positive ones), beside each base model's Dice (its mean over
        seeds); a warning for each model that does not beat them."""
        images = "positive images" if self.targets.weak else "images with a mask"
        out = {}
        for split, result in results.items():
            guesses = blank_guesses(self.index.records, result.scored)
            models = report["models"]
            dice = {
                base: (models[base] if split == "validation" else models[base]["test"])["overall"].get("dice")
                for base in self.bases()
            }
            # (a degenerate pruned model is the pruning report's to name)
            warnings = [
                f"{split}: the {base} model's localization Dice {d:.3f} does not beat {BLANK_GUESSES[guess]} "
                f"({guesses[guess]:.3f}) on the same {guesses['n']} {images}: it localizes no better "
                "than a guess that reads no pixel"
                for base, d in dice.items()
                if d is not None and not base.startswith("pruned@")
                for guess in BLANK_GUESSES
                if guesses[guess] is not None and d <= guesses[guess]
            ]
            out[split] = {**guesses, "models": dice, "warnings": warnings}
        return out

    def _disagreement_pairs(self) -> list[tuple[str, str]]:
        """(dense, pruned) of every seed at each sparsity the score is ranked by: their disagreement on
        held-out images picks the focus set's disputed images."""
        ranked = _read_json(self._marker("score"))["ranked_by_sparsities"]
        return [
            (self.name("dense", seed), self.name(f"pruned@{sparsity_key(s)}", seed))
            for seed in self.seeds
            for s in ranked
        ]

    def _focus_endpoint(self, report: dict, split: str, evaluation) -> dict:
        """ml.focus on the focus split: the focus set, attended vs control and vs dense on it, the
        worst-decile Dice of each model, and the verdict."""
        indices = self.eval_splits[split]
        pairs = self._disagreement_pairs()
        apart = np.mean([evaluation.disagreement[p] for p in pairs], axis=0) if pairs else np.zeros(len(indices))
        at = {i: j for j, i in enumerate(indices)}
        scored = evaluation.scored
        bases = ["dense", "attended", *(["control"] if "control" in self.bases() else [])]

        def dice(base: str) -> np.ndarray:
            def block(s: int) -> dict:
                model = report["models"][self.name(base, s)]
                return model if split == "validation" else model["test"]

            return np.array([[p["dice"] for p in block(s)["per_image"]] for s in self.seeds])

        checked = (self.label_check_results() or {}).get("images", {})
        ids = [self.index.records[i].image_id for i in scored]
        column = self.spec.split.group_column
        return focus.focus_report(
            split=split,
            image_ids=ids,
            dice={b: dice(b) for b in bases},
            disagreement=apart[[at[i] for i in scored]],
            groups=self.groups_of(scored),
            enrichment=_read_json(self.out / "state" / "enrichment.json"),
            label_issue=np.array([checked.get(i, {}).get("issue", False) for i in ids]),
            clusters=[self.index.records[i].attributes.get(column, "") for i in scored] if column else None,
            top_fraction=self.spec.htl.top_fraction or 0.1,
            seed=self.spec.split.seed,
            cluster_name=column,
        )

    def _label_check_summary(self) -> dict:
        """metrics.json 'label_check': what was checked, how, and the images flagged, worst first."""
        results = self.label_check_results()
        if results is None:
            reason = "weakly supervised: no mask is trained on" if self.targets.weak else "label_check.enabled is false"
            return {"enabled": False, "reason": reason}
        return {k: v for k, v in results.items() if k != "images"} | {
            "n_issues": {split: sum(e["split"] == split for e in results["issues"]) for split in results["checked"]},
            "rule": f"label_quality < {results['max_quality']:g}, where label_quality = 1 - the share of the mask-or-prediction "
            f"region whose out-of-sample probability contradicts the mask beyond {results['confident']:g}",
            "metrics_without_issues": f"every model's figures on the images the check did not flag are its subgroup "
            f"{LABEL_CHECK_ATTRIBUTE}=ok",
        }

    def _write_subgroups(self, report: dict, scored_by_split: dict[str, list[int]]) -> dict:
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
                dice("dense", split),
                dice("attended", split),
                self.groups_of(scored),
                control=dice("control", split) if control else None,
                clusters=[self.index.records[i].attributes.get(column, "") for i in scored] if column else None,
                cluster_name=column,
                resamples=BOOTSTRAP_RESAMPLES,
                seed=self.spec.split.seed,
            )
        body = {
            "seeds": self.seeds,
            "single_seed": len(self.seeds) == 1,
            "enrichment": _read_json(self.out / "state" / "enrichment.json"),
            "gap_closing": gap or None,
        }
        _write_json(self.out / "subgroups.json", body)
        return body

    # --- units (contract.units): the same stages, split so that several workers share a job ----
    def run_unit(self, kind: str, seed: int | None = None) -> JobResults | None:
        """One unit of the job graph. dense[seed] and attend[seed]/control[seed] train one seed's model;
        score runs prune and score over every dense seed; evaluate evaluates every model and answers
        the job's results. A unit whose inputs are missing raises instead of recomputing them."""
        if kind == "dense":
            self._train_each_seed(
                "dense", "dense", lambda s: (None, None), record_dynamics=True, only_seed=self._seed(seed)
            )
        elif kind == "label_check":
            if not self.spec.label_check.enabled or seed not in range(self.spec.label_check.folds):
                raise ValueError(f"fold {seed} is not one of this spec's label-check folds")
            self._stage = "label_check"
            self._check_fold(seed, only=True)
        elif kind in ("attend", "control"):
            self._require("score")
            self._attend_base(
                "attended" if kind == "attend" else "control", self.attention(), only_seed=self._seed(seed)
            )
        elif kind == "score":
            self._require_models("dense", ["dense"])
            missing = [
                f
                for f in range(self.spec.label_check.folds)
                if self.spec.label_check.enabled and not self._fold_file(f).is_file()
            ]
            if missing:
                raise RunDirError(
                    f"label-check folds not checked yet in {self.out}: {missing} (their units must succeed first)"
                )
            self._run_stages(("dense", "label_check", "prune", "score"))
        elif kind == "evaluate":
            self._require_models(
                "attend", ["attended", *(["control"] if self.spec.attention.control == "random" else [])]
            )
            self._run_stages(("attend", "evaluate"))
            return self.results()
        else:
            raise ValueError(f"no unit kind {kind!r}")
        return None

    def results(self) -> JobResults:
        """What the finished run produced, typed: read back from the run folder, so a worker that
        resumes a job after another one evaluated it answers the same results."""
        self._require("evaluate")
        evaluation = decode(EvaluationResult, _read_json(self.out / "state" / "evaluation.json"))
        return JobResults(
            scores=decode(list[ImageScore], _read_json(self.out / "scores.json")),
            evaluation=evaluation,
            checkpoints=self.checkpoint_files(),
        )

    def _seed(self, seed: int | None) -> int:
        if seed not in self.seeds:
            raise ValueError(f"seed {seed} is not one of the spec's seeds {self.seeds}")
        return seed

    def _require(self, stage: str) -> None:
        if not self.finished(stage):
            raise RunDirError(f"stage {stage} has not finished in {self.out}: its unit must succeed first")

    def _require_models(self, stage: str, bases: list[str]) -> None:
        missing = [
            self.name(b, s)
            for b in bases
            for s in self.seeds
            if not (self.out / "state" / f"{stage}-{self.name(b, s)}.json").is_file()
        ]
        if missing:
            raise RunDirError(
                f"models not trained yet in {self.out}: {', '.join(missing)} (their units must succeed first)"
            )

    def _run_stages(self, stages: tuple[str, ...]) -> None:
        for stage in stages:
            if self.finished(stage):
                self.report(stage, 1.0)
                continue
            self._stage = stage
            getattr(self, f"stage_{stage}")()

    def run(self) -> dict:
        self._run_stages(STAGES)
        return _read_json(self.out / "metrics.json")


def run_pipeline(
    data_dir, spec: JobSpec, out_dir, *, device: str | None = None, progress: ProgressFn | None = None
) -> dict:
    return Run(data_dir, spec, out_dir, device=device, progress=progress).run()
