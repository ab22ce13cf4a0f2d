"""What every unit of a job reads: the sampled dataset and its split, the spec as resolved for it,
the subgroups of every image, the targets its setting trains on, the model names, and the run
folder with what earlier units left there."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np
import torch

from contract.jobspec import JobSpec, check_spec_fits_dataset, resolve_group_column
from contract.results import decode
from contract.roster import model_bases, model_name, model_names, pruned_base, pruned_bases, sparsity_key
from ml import encoder_weights, precision, subgroups
from ml.data import DatasetIndex, DecodedDataset, decode_dataset, sample_records, scan_dataset, split_indices
from ml.metrics import subgroup_labels, usable_attributes
from ml.models import ModelConfig
from ml.run_folder import RunFolder, read_json
from ml.setting import make_targets
from ml.stage_inputs import StageInputs
from ml.stages import AttentionSets
from ml.subgroups import LABEL_CHECK_ATTRIBUTE

Report = Callable[[str, float, float | None], None]  # (stage, the stage's fraction done, loss)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fingerprint(index: DatasetIndex) -> str:
    # the dataset by content, not by path: each worker reads its own copy (a scratch cache)
    return hashlib.sha256(
        json.dumps([(r.image_id, r.mask_path is not None) for r in index.records]).encode()
    ).hexdigest()


class JobContext:
    def __init__(self, data_dir: str | os.PathLike, spec: JobSpec, out_dir: str | os.PathLike, *, device: str | None):
        self.device = torch.device(device or default_device())
        self.index: DatasetIndex = sample_records(scan_dataset(data_dir), spec.sample.max_images, spec.sample.seed)
        check_spec_fits_dataset(
            spec, columns=self.index.columns, n_images=len(self.index.records), n_masks=self.index.n_masks
        )
        # 'auto' is resolved here, so spec.json and every checkpoint name the column actually used
        self.spec, self.split_warnings = resolve_group_column(spec, self.index.columns)
        self.model_config = ModelConfig(
            self.spec.model.arch, self.spec.model.width, self.spec.weak.cam_threshold, encoder=self.spec.model.encoder
        )
        # on this worker's device: units of one job on different hosts may resolve 'auto' differently,
        # so each trained model records the precision it ran in
        self.precision = precision.resolve(self.spec.train.precision, self.device)
        self.folder = RunFolder(out_dir, self.spec.model_dump(mode="json"), _fingerprint(self.index))
        self.out = self.folder.out
        s = self.spec.split
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            self.index,
            val_fraction=s.val_fraction,
            test_fraction=s.test_fraction,
            group_column=s.group_column,
            seed=s.seed,
        )
        self.eval_splits = {"validation": self.val_idx, **({"test": self.test_idx} if self.test_idx else {})}
        rows = [r.attributes for r in self.index.records]
        exclude = {s.group_column} if s.group_column else set()
        self.attributes = (
            self.spec.attributes
            if self.spec.attributes is not None
            else usable_attributes(self.index.columns, rows, exclude=exclude)
        )
        self.labels = {a: subgroup_labels(a, [r.get(a, "") for r in rows]) for a in self.attributes}
        self.seeds = self.spec.train.seed_list()
        self.targets = make_targets(self.index, self.spec, self.train_idx)
        self.report: Report = lambda stage, fraction, loss: None
        self.stage = "dense"  # what a report from decoding names
        self._data: DecodedDataset | None = None
        self._property_labels: dict[str, list[str]] | None = None
        self._label_check_cache: dict | None = None
        self._encoder_weights: dict[str, torch.Tensor] | None = None

    def encoder_weights(self) -> dict[str, torch.Tensor] | None:
        """model.weights read and checked against the encoder (ml.encoder_weights), once; None without."""
        m = self.spec.model
        if m.weights is None:
            return None
        if self._encoder_weights is None:
            source = m.weights
            path = encoder_weights.fetch(source, self.out / "cache", m.weights_sha256)
            raw = encoder_weights.read_state_dict(path, source)
            self._encoder_weights = encoder_weights.matched(self.model_config.build().encoder, raw, source)
        return self._encoder_weights

    # --- data ----------------------------------------------------------------------------------
    def decoded(self) -> DecodedDataset:
        if self._data is None:
            # decoding comes first in whichever unit needs the images: its reports carry no progress
            # of their own, but give the caller a chance to stop (cancel) between chunks
            self._data = decode_dataset(
                self.index,
                self.spec.image_size,
                cache_dir=self.out / "cache",
                progress=lambda _f: self.report(self.stage, 0.0, None),
            )
        return self._data

    def inputs(self) -> StageInputs:
        return StageInputs(
            spec=self.spec,
            index=self.index,
            data=self.decoded(),
            val_idx=self.val_idx,
            targets=self.targets,
            model_config=self.model_config,
            device=self.device,
            precision=self.precision,
            encoder_weights=self.encoder_weights(),
        )

    def image_id(self, i: int) -> str:
        return self.index.records[i].image_id

    def clusters(self, positions: list[int]) -> list[str] | None:
        """Each image's value of split.group_column (the clusters of every interval), or None without one."""
        column = self.spec.split.group_column
        return [self.index.records[i].attributes.get(column, "") for i in positions] if column else None

    # --- models --------------------------------------------------------------------------------
    def name(self, base: str, seed: int) -> str:
        return model_name(base, seed, self.seeds)

    def bases(self) -> list[str]:
        return model_bases(self.spec)

    def pruned_bases(self) -> list[str]:
        return pruned_bases(self.spec)

    def has_control(self) -> bool:
        return self.spec.attention.control == "random"

    def model_names(self) -> list[str]:
        return model_names(self.spec)

    def load(self, name: str) -> torch.nn.Module:
        return self.folder.load_model(name, self.device, precision=self.precision)

    def save(self, model: torch.nn.Module, base: str, seed: int, **details):
        return self.folder.save_model(
            model, self.model_config, name=self.name(base, seed), base=base, seed=seed, **details
        )

    # --- subgroups -----------------------------------------------------------------------------
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

    # --- what earlier units left ---------------------------------------------------------------
    def label_check_results(self) -> dict | None:
        """state/label_check-results.json, once the score unit has written it (None when the check is off)."""
        path = self.folder.state("label_check-results.json")
        if not self.spec.label_check.enabled or not path.is_file():
            return None
        if self._label_check_cache is None:
            self._label_check_cache = read_json(path)
        return self._label_check_cache

    def remember_label_check(self, results: dict) -> None:
        self._label_check_cache = results

    def label_issues(self) -> dict[str, bool]:
        """image id -> whether the label check flagged its mask, for every checked image."""
        return {i: e["issue"] for i, e in (self.label_check_results() or {}).get("images", {}).items()}

    def attention(self) -> AttentionSets:
        return decode(AttentionSets, read_json(self.folder.state("attention.json")))

    def degenerate_sparsities(self) -> list[float]:
        """Sparsities at which the pruned model of any seed is degenerate: they rank nothing."""
        reports = self.folder.read_marker("prune")["reports"]
        return sorted({r["sparsity"] for r in reports.values() if r["degenerate"]})

    def disagreement_pairs(self) -> list[tuple[str, str]]:
        """(dense, pruned) of every seed at each sparsity the score is ranked by: their disagreement on
        held-out images picks the focus set's disputed images."""
        ranked = self.folder.read_marker("score")["ranked_by_sparsities"]
        return [(self.name("dense", seed), self.name(pruned_base(s), seed)) for seed in self.seeds for s in ranked]

    def per_image_dice(self, models: dict, base: str, split: str) -> np.ndarray:
        """(seeds, images): a base model's per-image Dice on a split, from metrics.json's 'models'."""

        def block(seed: int) -> dict:
            entry = models[self.name(base, seed)]
            return entry if split == "validation" else entry["test"]

        return np.array([[p["dice"] for p in block(s)["per_image"]] for s in self.seeds])

    def warnings(self) -> list[str]:
        out = list(self.split_warnings)
        if self.folder.finished("score") and self.folder.read_marker("score")["n_htl"] == 0:
            out.append(
                f"the HTL set is empty (no image has htl_score >= htl.threshold {self.spec.htl.threshold:g}): nothing was "
                "attended, and the attended and control models are the dense ones; lower htl.threshold or use htl.top_fraction"
            )
        if self.folder.finished("prune") and (bad := self.degenerate_sparsities()):
            out.append(
                f"pruned models at sparsity {', '.join(sparsity_key(s) for s in bad)} are degenerate (they predict "
                "(nearly) nothing, or far worse than the dense model: see metrics.json 'pruning'); they are left out of "
                "htl_score, and per_sparsity still shows them"
            )
        if (
            self.spec.attention.strategy in ("group_balance", "group_dro")
            and self.folder.finished("select")
            and self.folder.read_marker("select")["attended"] == 0
        ):
            out.append(
                f"attention.strategy {self.spec.attention.strategy} found no training subgroup over-represented among the HTL images "
                "(subgroups.json): there was nothing to balance, and the attended and control models are the dense ones"
            )
        return out
