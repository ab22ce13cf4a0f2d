"""Opaque cursors for keyset pagination."""
from __future__ import annotations

import base64
import json

from app.errors import InvalidInput

MAX_LIMIT = 1000


def encode_cursor(values: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, keys: tuple[str, ...]) -> dict | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput("cursor is not one this API issued") from e
    if not isinstance(values, dict) or set(values) != set(keys):
        raise InvalidInput("cursor is not one this API issued")
    return values
