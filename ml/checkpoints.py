"""Checkpoints as safetensors whose metadata holds the model config and the spec, so a model is
rebuilt from the file alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ml.models import ModelConfig

FORMAT = "htl-miner/1"
# safetensors writes its metadata map in no fixed order; one key holding sorted JSON keeps the bytes
# of identical runs identical (so are their sha256 and ETag)
METADATA_KEY = "htl-miner"


def save_checkpoint(
    model: nn.Module, path: Path, *, config: ModelConfig, spec: dict, extra: dict | None = None
) -> tuple[str, int]:
    """Writes the file (atomically); answers its sha256 and size, taken from the bytes written."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {**(extra or {}), "format": FORMAT, "architecture": config.as_dict(), "spec": spec}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    with tmp.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    size = tmp.stat().st_size
    tmp.replace(path)
    return digest, size


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if METADATA_KEY in raw:
        metadata = json.loads(raw[METADATA_KEY])
    else:  # written before the single key: one JSON value per key
        metadata = {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an htl-miner checkpoint (format {metadata.get('format')!r})")
    return metadata


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model in eval mode, and the file's metadata."""
    metadata = read_metadata(path)
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        model = ModelConfig.from_dict(metadata["architecture"]).build()
    model.load_state_dict(load_file(str(path), device="cpu"), assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{path} does not hold every tensor of its model: {', '.join(left[:5])}")
    return model.to(device).eval(), metadata
