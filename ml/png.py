"""A minimal PNG writer for binary masks: 8-bit greyscale, 0 and 255. Pillow's save costs about
0.4 ms per small file in its own bookkeeping; evaluation writes one file per model and image."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mask_png(mask: np.ndarray, level: int = 1) -> bytes:
    """The PNG bytes of a 2-D boolean mask, lesion 255, background 0."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, not {mask.shape}")
    height, width = mask.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each scanline starts with filter type 0 (none)
    rows[:, 1:] = mask.astype(bool) * np.uint8(255)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    Path(path).write_bytes(mask_png(mask))
