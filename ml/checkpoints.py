"""Checkpoints as safetensors whose metadata holds the architecture and the spec, so a model is
rebuilt from the file alone."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ml.models import build_model

FORMAT = "htl-miner/1"


def save_checkpoint(
    model: nn.Module, path: Path, *, arch: str, width: int, spec: dict, extra: dict | None = None, cam_threshold: float | None = None,
) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    architecture = {"arch": arch, "width": width, **({"cam_threshold": cam_threshold} if cam_threshold is not None else {})}
    metadata = {
        "format": FORMAT,
        "architecture": json.dumps(architecture),
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
    arch = metadata["architecture"]
    model = build_model(arch["arch"], arch["width"], **({"cam_threshold": arch["cam_threshold"]} if "cam_threshold" in arch else {}))
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval(), metadata
