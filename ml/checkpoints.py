"""Checkpoints as safetensors whose metadata holds the model config and the spec, so a model is
rebuilt from the file alone."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ml.models import ModelConfig

FORMAT = "htl-miner/1"


def save_checkpoint(model: nn.Module, path: Path, *, config: ModelConfig, spec: dict, extra: dict | None = None) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "architecture": json.dumps(config.as_dict(), sort_keys=True),
        "spec": json.dumps(spec, sort_keys=True),
    }
    for key, value in (extra or {}).items():
        metadata[key] = json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not an htl-miner checkpoint (format {raw.get('format')!r})")
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model in eval mode, and the file's metadata."""
    metadata = read_metadata(path)
    model = ModelConfig.from_dict(metadata["architecture"]).build()
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval(), metadata
