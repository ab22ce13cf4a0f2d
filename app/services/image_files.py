"""Limits on what an upload may hold, and the checks on one image file: its header read and its
pixels counted before anything is decoded, then a full decode. Shared by the archive's unpacking
(app.services.ingest) and the layouts that convert masks (app.services.layouts, app.services.coco)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app.core.errors import InvalidInput


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_uncompressed_bytes: int
    max_compression_ratio: float
    max_image_pixels: int


def reason(e: Exception, path: Path, what: str) -> str:
    """A decoder's message without this server's folders in it (Pillow names the file it opened)."""
    return str(e).replace(str(path), what)


def image_header(path: Path, limits: Limits, what: str) -> tuple[int, int, str | None]:
    try:
        with Image.open(path) as img:
            width, height, fmt = img.width, img.height, img.format
    except Image.DecompressionBombError as e:
        raise InvalidInput(
            f"{what} is over the limit of {limits.max_image_pixels} pixels ({reason(e, path, what)})"
        ) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure is the upload's fault
        raise InvalidInput(f"{what} is not a readable image: {reason(e, path, what)}") from e
    if width * height > limits.max_image_pixels:
        raise InvalidInput(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {limits.max_image_pixels}"
        )
    return width, height, fmt


def decode_fully(path: Path, what: str) -> None:
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # noqa: BLE001
        raise InvalidInput(f"{what} does not decode: {reason(e, path, what)}") from e
