"""COCO annotation files: each listed image's annotations (polygons or RLE, every category) become
one lesion mask, rasterized by pycocotools.

Nothing in the file is trusted, and pycocotools trusts it all: its C code decodes a compressed RLE
string without bounds checks (an empty or short string decodes uninitialised memory) and allocates
by each polygon edge's length (one coordinate of 8e9 exhausts the memory). So RLE counts are decoded
and checked here (each >= 0, summing to height x width), and polygon coordinates must lie within the
image, before pycocotools sees either."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as coco_mask

from app.core.errors import InvalidInput, TooLarge

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_ANNOTATIONS = 200_000
MAX_POLYGON_NUMBERS = 10_000_000  # coordinates over the whole file
EDGE_SLACK = 1.0  # pixels a polygon vertex may lie outside the image (annotation tools round outwards)


@dataclass
class CocoImage:
    key: int | str  # the file's image id
    file_name: PurePosixPath
    width: int
    height: int
    segmentations: list = field(default_factory=list)


@dataclass
class CocoFile:
    images: list[CocoImage]
    categories: list[str]


def load_json(path: Path) -> object | None:
    """The file's JSON, or None for a file that is no JSON (or over MAX_JSON_BYTES)."""
    if path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None


def is_coco(doc: object) -> bool:
    """A JSON object with 'images' and 'annotations' lists."""
    return isinstance(doc, dict) and isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list)


def _positive_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInput(f"{what} must be a positive whole number, not {str(value)[:40]!r}")
    return value


def _image(entry, k: int, name: str) -> CocoImage:
    if not isinstance(entry, dict):
        raise InvalidInput(f"{name}: images[{k}] is not an object")
    key = entry.get("id")
    if not isinstance(key, int | str) or isinstance(key, bool):
        raise InvalidInput(f"{name}: images[{k}] has no id (a number or a string)")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name or "\\" in file_name or "\0" in file_name:
        raise InvalidInput(f"{name}: images[{k}] has no usable file_name")
    path = PurePosixPath(file_name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidInput(f"{name}: images[{k}].file_name {file_name[:80]!r} leaves the archive")
    width = _positive_int(entry.get("width"), f"{name}: images[{k}].width")
    height = _positive_int(entry.get("height"), f"{name}: images[{k}].height")
    return CocoImage(key, path, width, height)


def read_coco(doc: dict, name: str) -> CocoFile:
    """A COCO file's images (doc: its JSON, which is_coco) with their annotations' segmentations;
    every field checked for type."""
    images = [_image(entry, k, name) for k, entry in enumerate(doc["images"])]
    by_key: dict[int | str, CocoImage] = {}
    for image in images:
        if image.key in by_key:
            raise InvalidInput(f"{name} lists image id {image.key!r} twice")
        by_key[image.key] = image
    annotations = doc["annotations"]
    if len(annotations) > MAX_ANNOTATIONS:
        raise TooLarge(f"{name} holds {len(annotations)} annotations, over the limit of {MAX_ANNOTATIONS}")
    for k, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "segmentation" not in annotation:
            raise InvalidInput(f"{name}: annotations[{k}] has no segmentation")
        key = annotation.get("image_id")
        if isinstance(key, bool) or key not in by_key:
            raise InvalidInput(f"{name}: annotations[{k}] names image id {str(key)[:40]!r}, which images does not list")
        by_key[key].segmentations.append(annotation["segmentation"])
    categories = [str(c.get("name", c.get("id"))) for c in doc.get("categories") or [] if isinstance(c, dict)]
    return CocoFile(images, categories)


def rle_counts(text: str | bytes) -> list[int]:
    """The run lengths a compressed COCO RLE string holds (pycocotools' rleFrString, in Python)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data) or k > 12:
                raise ValueError("a run length is cut short or too long")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {data[p]} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _checked_counts(counts, height: int, width: int, where: str) -> list[int]:
    if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise InvalidInput(f"{where}: RLE counts must be a string or a list of whole numbers")
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise InvalidInput(
            f"{where}: RLE run lengths must be >= 0 and add up to height x width = {height * width} "
            f"(they add up to {sum(counts)})"
        )
    return counts


def _rle(segmentation: dict, height: int, width: int, where: str) -> np.ndarray:
    size = segmentation.get("size")
    if size != [height, width]:
        raise InvalidInput(f"{where}: RLE size {str(size)[:40]} is not the image's [height, width] [{height}, {width}]")
    counts = segmentation.get("counts")
    if isinstance(counts, str | bytes):
        try:
            counts = rle_counts(counts)
        except ValueError as e:
            raise InvalidInput(f"{where}: the compressed RLE string is malformed: {e}") from e
    counts = _checked_counts(counts, height, width, where)
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return coco_mask.decode(rle).astype(bool)


def _polygons(segmentation: list, height: int, width: int, where: str, budget: list[int]) -> np.ndarray:
    polygons = []
    for polygon in segmentation:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            raise InvalidInput(f"{where}: a polygon is a list of at least 3 x, y pairs")
        budget[0] -= len(polygon)
        if budget[0] < 0:
            raise TooLarge(f"{where}: the file's polygons hold over {MAX_POLYGON_NUMBERS} coordinates")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
            raise InvalidInput(f"{where}: polygon coordinates must be finite numbers")
        xs, ys = polygon[0::2], polygon[1::2]
        if (
            min(xs) < -EDGE_SLACK
            or max(xs) > width + EDGE_SLACK
            or min(ys) < -EDGE_SLACK
            or max(ys) > height + EDGE_SLACK
        ):
            raise InvalidInput(f"{where}: a polygon reaches outside the {width}x{height} image")
        polygons.append([float(v) for v in polygon])
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))).astype(bool)


def rasterize(image: CocoImage, name: str, budget: list[int]) -> np.ndarray:
    """The union of the image's annotations, (height, width) boolean. budget: coordinates left in the file."""
    mask = np.zeros((image.height, image.width), dtype=bool)
    for k, segmentation in enumerate(image.segmentations):
        where = f"{name}: annotation {k + 1} of image id {image.key!r}"
        if isinstance(segmentation, dict):
            mask |= _rle(segmentation, image.height, image.width, where)
        elif isinstance(segmentation, list):
            mask |= _polygons(segmentation, image.height, image.width, where, budget)
        else:
            raise InvalidInput(f"{where}: a segmentation is a list of polygons or an RLE object")
    return mask
