"""Server-side overlays for the HTL gallery (PIL and numpy, no torch): an image with the ground-truth
contour and the dense and pruned models' predicted masks drawn on it, cached as PNG per layer set."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from contract.layout import IMAGE_SUFFIXES, find_mask, read_mask

MAX_SIZE = 1024
# RGB per layer: ground truth green; dense blue; pruned models in warm colours, by rank of sparsity
COLOURS = {"gt": (40, 220, 60), "dense": (40, 120, 255)}
PRUNED_COLOURS = [(255, 170, 0), (255, 90, 40), (230, 30, 120), (170, 40, 220), (255, 230, 60), (200, 0, 0)]


class GalleryError(LookupError):
    pass


def gallery_index(run_dir: Path) -> dict:
    path = run_dir / "gallery.json"
    if not path.is_file():
        raise GalleryError("this job kept no gallery masks (it ran before the gallery existed)")
    return json.loads(path.read_text())


def image_file(dataset_dir: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (dataset_dir / "images" / f"{image_id}{suffix}", dataset_dir / "images" / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise GalleryError(f"image {image_id!r} is not in the dataset")


def layer_colour(layer: str, layers: list[str]) -> tuple[int, int, int]:
    if layer in COLOURS:
        return COLOURS[layer]
    pruned = [name for name in layers if name.startswith("pruned@")]
    return PRUNED_COLOURS[pruned.index(layer) % len(PRUNED_COLOURS)] if layer in pruned else (255, 255, 255)


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    shape = Image.fromarray(mask.astype(np.uint8) * 255)
    inner = shape.filter(ImageFilter.MinFilter(2 * width + 1))
    return (np.asarray(shape) > 127) & ~(np.asarray(inner) > 127)


def render_overlay(dataset_dir: Path, run_dir: Path, image_id: str, layers: list[str], size: int, cache_dir: Path) -> bytes:
    """The image at most `size` pixels on its long side; gt as a contour, dense as a tinted fill with
    a contour, each pruned model as a contour. Unknown layers raise GalleryError naming them."""
    index = gallery_index(run_dir)
    known = ["gt", *index["layers"]]
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise GalleryError(f"unknown layers {unknown}; this job has {known}")
    if any(layer != "gt" for layer in layers) and image_id not in index["images"]:
        raise GalleryError(f"the job kept predicted masks only for its HTL images and {index['sample']} others; not for {image_id!r}")
    source = image_file(dataset_dir, image_id)
    key = hashlib.sha256(json.dumps([image_id, layers, size, source.stat().st_mtime_ns]).encode()).hexdigest()[:24]
    cached = cache_dir / f"{key}.png"
    if cached.is_file():
        return cached.read_bytes()
    with Image.open(source) as img:
        base = img.convert("RGB")
    base.thumbnail((size, size))
    canvas = np.asarray(base).astype(np.float32)
    h, w = canvas.shape[:2]
    width = max(1, round(max(h, w) / 200))
    for layer in layers:
        if layer == "gt":
            mask_path = find_mask(dataset_dir / "masks", image_id)
            if mask_path is None:
                continue  # an image without a mask has no ground truth to draw
            mask = read_mask(mask_path)
        else:
            with Image.open(run_dir / "gallery" / layer / f"{image_id}.png") as m:
                mask = np.asarray(m.convert("L")) > 127
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        colour = np.array(layer_colour(layer, index["layers"]), dtype=np.float32)
        if layer == "dense":
            canvas[mask] = 0.7 * canvas[mask] + 0.3 * colour
        canvas[_contour(mask, width)] = colour
    out = io.BytesIO()
    Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(out, format="PNG", optimize=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(cached)
    return out.getvalue()
