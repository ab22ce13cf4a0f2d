"""Encoder weights a job starts from (model.weights): read from a path on the worker or an http(s)
URL, and checked against the encoder before anything trains, so a missing, unreadable or mismatched
file fails the job naming what is wrong and never becomes a silent random start.

The file is a state dict of the encoder (.pt, .pth, .bin: torch.load with weights_only; or
.safetensors), possibly wrapped ({"state_dict": ...}, {"model": ...}) or under a prefix ("module.",
"encoder.", "model.encoder."). Every tensor of the encoder must be there with its shape. Keys the
encoder lacks are refused too, except a classifier head (fc., _fc., classifier.) and, for the
ResNets, torchvision's projection shortcuts (downsample.: MONAI's ResNet-18/34 shortcut pads instead),
so torchvision's ImageNet ResNet weights load as they are, and ResNet-34 weights into a ResNet-18 do not."""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path

import torch
from torch import nn

MAX_BYTES = 2 * 1024**3
PREFIXES = ("", "module.", "encoder.", "model.encoder.", "model.")
IGNORABLE = ("fc.", "_fc.", "classifier.")
RESNET_SHORTCUTS = ".downsample."
TIMEOUT_S = 60


class WeightsError(ValueError):
    """The encoder weights cannot be used; the message says why."""


def fetch(source: str, cache_dir: Path, sha256: str | None) -> Path:
    """A local file with the weights: the path itself, or the URL downloaded once into cache_dir;
    checked against sha256 when given."""
    if source.startswith(("http://", "https://")):
        target = cache_dir / f"weights-{hashlib.sha256(source.encode()).hexdigest()[:16]}"
        if not target.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            try:
                with urllib.request.urlopen(source, timeout=TIMEOUT_S) as response, partial.open("wb") as out:
                    copied = 0
                    while chunk := response.read(1 << 20):
                        copied += len(chunk)
                        if copied > MAX_BYTES:
                            raise WeightsError(f"model.weights {source} is over {MAX_BYTES} bytes")
                        out.write(chunk)
            except OSError as e:
                partial.unlink(missing_ok=True)
                raise WeightsError(f"model.weights {source} could not be downloaded: {e}") from e
            shutil.move(partial, target)
        path = target
    else:
        path = Path(source)
        if not path.is_file():
            raise WeightsError(f"model.weights {source} is not a file on this worker")
    if sha256 is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256:
            raise WeightsError(f"model.weights {source} has sha256 {digest}, not model.weights_sha256 {sha256}")
    return path


def read_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the reader says, the file is unusable
        raise WeightsError(f"model.weights {source} is not a torch state dict or safetensors file: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"model.weights {source} holds no state dict (a mapping of names to tensors)")
    return raw


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _unprefixed(weights: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """The weights under the prefix that names the most of the encoder's keys."""
    best = max(PREFIXES, key=lambda p: sum(k.startswith(p) and k[len(p) :] in wanted for k in weights))
    return {k[len(best) :]: v for k, v in weights.items() if k.startswith(best)}


def matched(encoder: nn.Module, weights: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The weights as the encoder's state dict, or WeightsError naming what is missing, extra or misshapen."""
    expected = encoder.state_dict()
    found = _unprefixed(weights, set(expected))
    missing = [k for k in expected if k not in found]
    misshapen = [k for k in expected if k in found and found[k].shape != expected[k].shape]
    extra = [k for k in found if k not in expected and not k.startswith(IGNORABLE) and RESNET_SHORTCUTS not in f".{k}"]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the encoder's {len(expected)} tensors are missing (e.g. {missing[0]})")
    if misshapen:
        k = misshapen[0]
        problems.append(
            f"{len(misshapen)} have another shape (e.g. {k}: {tuple(found[k].shape)} where the encoder has "
            f"{tuple(expected[k].shape)})"
        )
    if extra:
        problems.append(f"{len(extra)} tensors are not the encoder's (e.g. {extra[0]})")
    if problems:
        raise WeightsError(
            f"model.weights {source} does not fit the encoder: " + "; ".join(problems) + " - is it another encoder's?"
        )
    return {k: found[k].to(expected[k].dtype) for k in expected}
