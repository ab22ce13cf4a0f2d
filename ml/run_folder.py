"""A job's output folder: its identity (spec and dataset), the markers of finished stages under
state/, JSON read and written atomically, and the checkpoints with their records. A restarted or
resumed job finds here what is done; a unit on another worker finds here what the units before it
made."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.results import CheckpointFile, decode, encode
from contract.reuse import is_shared_file, reuse_key
from ml.checkpoints import load_checkpoint, save_checkpoint
from ml.models import ModelConfig
from ml.train import prepare_for_device


class RunDirError(ValueError):
    pass


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def checkpoint_name(model: str) -> str:
    return f"{model}.safetensors"


class RunFolder:
    def __init__(self, out: str | os.PathLike, spec: dict, dataset_fingerprint: str):
        self.out = Path(out)
        self.spec = spec
        self.dataset = dataset_fingerprint
        self._claim(dataset_fingerprint)

    def _claim(self, fingerprint: str) -> None:
        run_file = self.state("run.json")
        identity = {"spec": self.spec, "dataset": fingerprint}
        if run_file.is_file():
            previous = read_json(run_file)
            if previous.get("spec") != identity["spec"] or previous.get("dataset", fingerprint) != fingerprint:
                raise RunDirError(f"{self.out} holds a run of another spec or dataset; choose a new output folder")
        else:
            write_json(run_file, identity)
        write_json(self.out / "spec.json", self.spec)

    def reuse(self, source: str | os.PathLike) -> int:
        """Copies into this folder what the dense, label-check and score units left in another run's
        folder (`htl run --reuse-from`), so that only the units from select on run here. The other
        run must be of the same dataset and the same spec but for attention, its score unit done.
        Answers how many files were copied."""
        source = Path(source)
        identity_file = source / "state" / "run.json"
        if not identity_file.is_file() or not (source / "state" / "score.json").is_file():
            raise RunDirError(f"{source} holds no run whose score unit has finished: nothing to re-use")
        identity = read_json(identity_file)
        if reuse_key(identity["spec"], identity.get("dataset", "")) != reuse_key(self.spec, self.dataset):
            raise RunDirError(
                f"{source} is a run of another dataset, or of a spec that differs from this one in more than attention: "
                "its dense models cannot be re-used"
            )
        copied = 0
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source).as_posix()
            if path.is_file() and is_shared_file(relative) and not (self.out / relative).exists():
                (self.out / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, self.out / relative)
                copied += 1
        return copied

    def state(self, name: str) -> Path:
        return self.out / "state" / name

    def marker(self, stage: str) -> Path:
        return self.state(f"{stage}.json")

    def finished(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def read_marker(self, stage: str) -> Any:
        return read_json(self.marker(stage))

    def require(self, stage: str) -> None:
        if not self.finished(stage):
            raise RunDirError(f"stage {stage} has not finished in {self.out}: its unit must succeed first")

    def trained_record(self, stage: str, name: str) -> Path:
        """What training model `name` in stage `stage` (dense, attend) recorded: its losses, its curve."""
        return self.state(f"{stage}-{name}.json")

    def require_trained(self, stage: str, names: list[str]) -> None:
        missing = [name for name in names if not self.trained_record(stage, name).is_file()]
        if missing:
            raise RunDirError(
                f"models not trained yet in {self.out}: {', '.join(missing)} (their units must succeed first)"
            )

    def fold_file(self, fold: int) -> Path:
        return self.state(f"label_check-fold{fold}.npz")

    def save_model(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        *,
        name: str,
        base: str,
        seed: int,
        sparsity: float | None = None,
        **extra: Any,
    ) -> CheckpointFile:
        """Writes the model's checkpoint, and beside the run's state what it is (for the units after this one)."""
        relative = f"checkpoints/{checkpoint_name(name)}"
        details = {"seed": seed, **({"sparsity": sparsity} if sparsity is not None else {}), **extra}
        digest, size = save_checkpoint(
            model, self.out / relative, config=config, spec=self.spec, extra={"model": name, **details}
        )
        saved = CheckpointFile(
            name=name, base=base, seed=seed, sparsity=sparsity, path=relative, sha256=digest, size_bytes=size
        )
        write_json(self.state(f"checkpoints/{name}.json"), encode(saved))
        return saved

    def checkpoint_files(self, names: list[str]) -> list[CheckpointFile]:
        """The records of these models, as saved, in this order."""
        files = []
        for name in names:
            record = self.state(f"checkpoints/{name}.json")
            if not record.is_file():
                raise RunDirError(
                    f"{self.out} has no record of checkpoint {name} (its unit has not finished, or the folder "
                    "predates checkpoint records)"
                )
            files.append(decode(CheckpointFile, read_json(record)))
        return files

    def load_model(self, name: str, device: torch.device, *, precision: str) -> torch.nn.Module:
        model, _ = load_checkpoint(self.out / "checkpoints" / checkpoint_name(name))
        return prepare_for_device(model, device, precision=precision).eval()
