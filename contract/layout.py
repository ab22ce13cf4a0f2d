"""The dataset folder layout, torch-free: images/<id>.(jpg|jpeg|png), masks/<id>_segmentation.png or
masks/<id>.png, optional metadata.csv with an image_id column. Masks are read by displayed grey
level (Pillow's convert("L"), so palette PNGs are not inverted) and binarized at > 127."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

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


MAX_COLUMNS = 200
MAX_VALUE_CHARS = 1000
# no line of a metadata.csv within the limits is longer: every column at its longest value, quoted
MAX_LINE_CHARS = MAX_COLUMNS * (MAX_VALUE_CHARS + 3)


def _bounded_lines(f: TextIO, path: Path) -> Iterator[str]:
    """The file's lines, each read at most MAX_LINE_CHARS (+1) at a time: a 30-million-column header
    is refused after reading 200 kB of it, not after parsing it whole."""
    number = 0
    while line := f.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise LayoutError(
                f"{path.name} line {number} is over {MAX_LINE_CHARS} characters "
                f"(at most {MAX_COLUMNS} columns of {MAX_VALUE_CHARS} characters)"
            )
        yield line


def read_metadata(
    path: Path,
    known_ids: set[str] | None = None,
    *,
    id_column: str = "image_id",
    on_unknown: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns other than the id column, and each row's values by image id (strings, stripped). Read
    row by row: with known_ids, a row naming another image is refused as soon as it is read (or, with
    on_unknown, handed to it and left out), so memory holds at most one row per known image; columns
    and values are capped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(_bounded_lines(f, path))
            fields = [c.strip() for c in reader.fieldnames or []]
            if any("\x00" in c for c in fields):
                raise LayoutError(f"{path.name}'s header holds a NUL character (U+0000)")
            if id_column not in fields:
                raise LayoutError(f"{path.name} has no {id_column} column (columns: {fields[:20]})")
            if len(fields) > MAX_COLUMNS:
                raise LayoutError(f"{path.name} has {len(fields)} columns, over the limit of {MAX_COLUMNS}")
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise LayoutError(f"{path.name} line {line} has more values than columns")
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if any(len(v) > MAX_VALUE_CHARS for v in row.values()):
                    raise LayoutError(f"{path.name} line {line} has a value over {MAX_VALUE_CHARS} characters")
                if any("\x00" in k or "\x00" in v for k, v in row.items()):
                    raise LayoutError(f"{path.name} line {line} holds a NUL character (U+0000)")
                image_id = row.pop(id_column)
                if not image_id:
                    raise LayoutError(f"{path.name} line {line} has an empty {id_column}")
                if known_ids is not None and image_id not in known_ids:
                    if on_unknown is None:
                        raise LayoutError(
                            f"{path.name} line {line} names image {image_id[:80]!r}, which is not in images/"
                        )
                    on_unknown(image_id)
                    continue
                if image_id in rows:
                    raise LayoutError(f"{path.name} lists image {image_id!r} twice")
                rows[image_id] = row
    except UnicodeDecodeError as e:
        raise LayoutError(f"{path.name} is not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise LayoutError(f"{path.name} is not valid CSV: {e}") from e
    return [c for c in fields if c != id_column], rows


def read_mask(path: Path) -> np.ndarray:
    """A boolean mask at the file's own size: lesion where the displayed grey level is > 127 (ISIC).
    Three other encodings are read as what they mean rather than as empty: a label mask holding only
    0 and 1 (any bit depth: lesion where 1); a 16-bit mask (its grey level scaled from 0..65535); an
    alpha-only mask (uniform colour, the shape in the alpha channel: lesion where opaque)."""
    with Image.open(path) as img:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            values = np.asarray(img, dtype=np.float64)
            if _is_label_mask(values):
                return np.asarray(values == 1)
            return np.asarray(values > 65535 * MASK_THRESHOLD / 255)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            grey = np.asarray(rgba.convert("L"))
            if grey.min() == grey.max():  # all one colour: the shape is in the alpha channel
                return np.asarray(rgba)[..., 3] > MASK_THRESHOLD
            return grey > MASK_THRESHOLD
        grey = np.asarray(img.convert("L"))
        if _is_label_mask(grey):
            return np.asarray(grey == 1)
        return np.asarray(grey > MASK_THRESHOLD)


def _is_label_mask(values: np.ndarray) -> bool:
    """Only 0 and 1, and some 1: a label map, not a grey image (whose lesion would be > 127)."""
    return bool(values.max() == 1 and np.isin(values, (0, 1)).all())
