"""The masks an annotation-tool export carries for one image, at the image's own size: its current
mask from the dataset, and what a model predicted for it (the label check's out-of-sample
prediction of a training image, the dense model's prediction of a held-out one, the dense model's
mask of an unlabeled image in the gallery)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from app.core.storage import Store
from app.services.gallery import first_file, image_file
from contract.layout import mask_names, read_mask


def image_size(store: Store, dataset_key: str, image_id: str) -> tuple[Path, int, int]:
    """The image file as uploaded, and its width and height."""
    path = image_file(store, dataset_key, image_id)
    with Image.open(path) as img:
        return path, img.width, img.height


def current_mask(store: Store, dataset_key: str, image_id: str) -> np.ndarray | None:
    path = first_file(store, [f"{dataset_key}/masks/{name}" for name in mask_names(image_id)])
    return None if path is None else read_mask(path)


def _at_size(path: Path | None, width: int, height: int) -> np.ndarray | None:
    """A predicted mask PNG at the image's own size (nearest neighbour: a model's square mask)."""
    if path is None:
        return None
    with Image.open(path) as img:
        grey = img.convert("L")
        if grey.size != (width, height):
            grey = grey.resize((width, height), Image.Resampling.NEAREST)
        return np.asarray(grey) > 127


def predicted_mask(
    store: Store, run_key: str, image_id: str, split: str, *, seed: int, width: int, height: int, layer: str = "oos"
) -> np.ndarray | None:
    """A training image: the gallery's layer (oos, the label check's prediction; dense). A held-out
    image: the first seed's dense model's prediction the evaluation wrote. None where the job kept none."""
    if split == "train":
        keys = [f"{run_key}/gallery/{layer}/{image_id}.png"]
    else:
        keys = [f"{run_key}/predictions/{name}/{image_id}.png" for name in ("dense", f"dense-s{seed}")]
    return _at_size(first_file(store, keys), width, height)
