"""Server-side overlays for the HTL gallery (PIL and numpy, no torch): an image with the ground-truth
contour and the dense and pruned models' predicted masks drawn on it, cached as PNG per layer set."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from app.core.storage import Store
from contract.layout import IMAGE_SUFFIXES, mask_names, read_mask

MAX_SIZE = 1024
# RGB per layer: ground truth green; dense blue; pruned models in warm colours, by rank of sparsity
COLOURS = {"gt": (40, 220, 60), "dense": (40, 120, 255), "oos": (255, 40, 255)}
PRUNED_COLOURS = [(255, 170, 0), (255, 90, 40), (230, 30, 120), (170, 40, 220), (255, 230, 60), (200, 0, 0)]


class GalleryError(LookupError):
    """Something the gallery does not hold (the API answers 404)."""


class UnknownLayers(GalleryError):
    """An overlay asked for layers the job has not got (the API answers 422)."""


def gallery_index(store: Store, run_prefix: str) -> dict:
    path = store.local_file(f"{run_prefix}/gallery.json")
    if path is None:
        raise GalleryError("this job kept no gallery masks (it ran before the gallery existed)")
    return json.loads(path.read_text())


def image_layers(index: dict, image_id: str) -> list[str]:
    """The predicted layers the job kept for this training image: none outside the gallery; oos (the
    label check's out-of-sample prediction) only for the images it checked."""
    if image_id not in index["images"]:
        return []
    return [layer for layer in index["layers"] if layer != "oos" or image_id in index.get("oos_images", ())]


def first_file(store: Store, keys: list[str]) -> Path | None:
    for key in keys:
        path = store.local_file(key)
        if path is not None:
            return path
    return None


def image_file(store: Store, dataset_key: str, image_id: str) -> Path:
    names = [f"{image_id}{suffix}" for s in IMAGE_SUFFIXES for suffix in (s, s.upper())]
    path = first_file(store, [f"{dataset_key}/images/{name}" for name in names])
    if path is None:
        raise GalleryError(f"image {image_id!r} is not in the dataset")
    return path


OVERLAY_CACHE_FILES = 2000  # rendered overlays kept per job and API process; the oldest go first past it


def _keep_cache_within(cache_dir: Path, limit: int) -> None:
    entries = sorted(cache_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)
    for path in entries[: max(0, len(entries) - limit)]:
        path.unlink(missing_ok=True)


def overlay_cache(settings, job_id) -> Path:
    """This API process's cache of a job's rendered overlays (local, whatever the store)."""
    return settings.scratch / "overlays" / str(job_id)


def layer_colour(layer: str, layers: list[str]) -> tuple[int, int, int]:
    if layer in COLOURS:
        return COLOURS[layer]
    pruned = [name for name in layers if name.startswith("pruned@")]
    return PRUNED_COLOURS[pruned.index(layer) % len(PRUNED_COLOURS)] if layer in pruned else (255, 255, 255)


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    shape = Image.fromarray(mask.astype(np.uint8) * 255)
    inner = shape.filter(ImageFilter.MinFilter(2 * width + 1))
    return (np.asarray(shape) > 127) & ~(np.asarray(inner) > 127)


def render_overlay(
    store: Store, dataset_key: str, run_prefix: str, image_id: str, layers: list[str], size: int, cache_dir: Path
) -> bytes:
    """The image at most `size` pixels on its long side; gt as a contour, dense as a tinted fill with
    a contour, each pruned model as a contour. Unknown layers raise UnknownLayers naming them. Files are
    read through the store (in place, or from its scratch cache); the PNG is cached in cache_dir."""
    index = gallery_index(store, run_prefix)
    known = ["gt", *index["layers"]]
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise UnknownLayers(f"unknown layers {unknown}; this job has {known}")
    if any(layer != "gt" for layer in layers) and image_id not in index["images"]:
        raise GalleryError(
            f"the job kept predicted masks only for its HTL images, its label issues and {index['sample']} others; "
            f"not for {image_id!r}"
        )
    if "oos" in layers and "oos" not in image_layers(index, image_id):
        raise GalleryError(
            f"the label check made no out-of-sample prediction of {image_id!r} (it checks only images with a mask)"
        )
    layers = [layer for layer in known if layer in layers]  # one order, each once: "gt,gt,gt" is "gt"
    # a dataset's files and a finished job's masks never change: the request alone names the picture
    key = hashlib.sha256(json.dumps([dataset_key, run_prefix, image_id, layers, size]).encode()).hexdigest()[:24]
    cached = cache_dir / f"{key}.png"
    if cached.is_file():
        return cached.read_bytes()
    source = image_file(store, dataset_key, image_id)
    with Image.open(source) as img:
        base = img.convert("RGB")
    base.thumbnail((size, size))
    canvas = np.asarray(base).astype(np.float32)
    h, w = canvas.shape[:2]
    width = max(1, round(max(h, w) / 200))
    for layer in layers:
        if layer == "gt":
            mask_path = first_file(store, [f"{dataset_key}/masks/{name}" for name in mask_names(image_id)])
            if mask_path is None:
                continue  # an image without a mask has no ground truth to draw
            mask = read_mask(mask_path)
        else:
            predicted = store.local_file(f"{run_prefix}/gallery/{layer}/{image_id}.png")
            if predicted is None:
                raise GalleryError(f"the job's {layer} mask of {image_id!r} is missing from the store")
            with Image.open(predicted) as m:
                mask = np.asarray(m.convert("L")) > 127
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
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
    _keep_cache_within(cache_dir, OVERLAY_CACHE_FILES)
    return out.getvalue()
