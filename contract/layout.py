"""The dataset folder layout, torch-free: images/<id>.(jpg|jpeg|png), masks/<id>_segmentation.png or
masks/<id>.png, optional metadata.csv with an image_id column. Masks are read by displayed grey
level (Pillow's convert("L"), so palette PNGs are not inverted) and binarized at > 127."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_THRESHOLD = 127
METADATA_FILE = "metadata.csv"


class LayoutError(ValueError):
    """The dataset does not follow the layout; the message says where."""


def mask_names(image_id: str) -> tuple[str, str]:
    return f"{image_id}_segmentation.png", f"{image_id}.png"


def find_mask(mask_dir: Path, image_id: str) -> Path | None:
    for name in mask_names(image_id):
        path = mask_dir / name
        if path.is_file():
            return path
    return None


def mask_image_id(name: str) -> str | None:
    """The image id a mask file name belongs to, or None for a name that is no mask."""
    if not name.lower().endswith(".png"):
        return None
    stem = name[: -len(".png")]
    return stem[: -len("_segmentation")] if stem.endswith("_segmentation") else stem


def read_metadata(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns other than image_id, and each row's values by image id (strings, stripped)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or []]
            if "image_id" not in fields:
                raise LayoutError(f"{path.name} has no image_id column (columns: {fields})")
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise LayoutError(f"{path.name} line {line} has more values than columns")
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                image_id = row.pop("image_id")
                if not image_id:
                    raise LayoutError(f"{path.name} line {line} has an empty image_id")
                if image_id in rows:
                    raise LayoutError(f"{path.name} lists image {image_id!r} twice")
                rows[image_id] = row
    except UnicodeDecodeError as e:
        raise LayoutError(f"{path.name} is not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise LayoutError(f"{path.name} is not valid CSV: {e}") from e
    return [c for c in fields if c != "image_id"], rows


def read_mask(path: Path) -> np.ndarray:
    """A boolean mask at the file's own size, by displayed grey level > 127."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > MASK_THRESHOLD
