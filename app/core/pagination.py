"""Opaque cursors for keyset pagination. A cursor is checked field by field before it reaches a
query: a forged or foreign one is a 422 naming the problem, never a 500."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

from app.core.errors import InvalidInput

MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 512
MAX_RANK = 2**31 - 1


def _aware_datetime(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _uuid(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# what each key of a cursor must hold
CHECKS = {
    "created_at": _aware_datetime,
    "id": _uuid,
    "rank": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_RANK,
    "name": lambda v: isinstance(v, str) and 0 < len(v) <= 200 and "\x00" not in v,  # PostgreSQL text holds no NUL
    "image_id": lambda v: isinstance(v, str) and 0 < len(v) <= 200 and "\x00" not in v,
    "position": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_RANK,
}


def encode_cursor(values: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if cursor is None:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidInput("cursor is not one this API issued (too long)", code="INVALID_CURSOR")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput("cursor is not one this API issued (not decodable)", code="INVALID_CURSOR") from e
    if not isinstance(values, dict) or set(values) != set(keys):
        raise InvalidInput("cursor is not one this API issued (it belongs to another list)", code="INVALID_CURSOR")
    bad = [k for k in keys if not CHECKS[k](values[k])]
    if bad:
        raise InvalidInput(f"cursor is not one this API issued (bad {', '.join(bad)})", code="INVALID_CURSOR")
    return values
