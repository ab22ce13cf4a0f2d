"""Request limits that protect the service: a cap on every body but an upload's (read whole, so
bounded), no NUL where PostgreSQL cannot store it, a per-key token bucket, and a bound on uploads
ingesting at once."""

from __future__ import annotations

import json
import math
import threading
import time

from app.core.errors import TooManyRequests, Unavailable


def _error_message(status: int, detail: str, code: str, headers: dict[str, str] | None = None) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail, "code": code}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def holds_nul(value) -> bool:
    """Whether a decoded JSON value holds U+0000 in any string (key or value): PostgreSQL's text and
    jsonb refuse it, so it must be refused as input before it reaches a query."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


NUL_DETAIL = "the request holds a NUL character (U+0000) {where}; no field accepts it"


class RequestLimits:
    """ASGI middleware, before any route: a NUL in the path or query string is a 422; a request body
    may hold at most max_bytes unless it is a multipart upload to one of upload_paths (which stream
    to disk under their own limit), and a larger one is answered 413 before the app sees it, with or
    without a key (declared Content-Length, or bytes counted as they arrive). The body is read here
    and replayed to the app; a JSON body holding a NUL string is a 422."""

    def __init__(self, app, max_bytes: int, upload_paths: tuple[str, ...] = ()):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_paths = upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
            return await _answer(send, 422, NUL_DETAIL.format(where="in its URL"), "INVALID_INPUT")
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").lower()
        if (
            content_type.startswith(b"multipart/form-data")
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") in self.upload_paths
        ):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await self._too_large(send)
            chunks.append(body)
            if not message.get("more_body"):
                break
        whole = b"".join(chunks)
        if b"\\u0000" in whole and content_type.startswith(b"application/json"):
            try:
                nul = holds_nul(json.loads(whole))
            except ValueError:
                nul = False  # not JSON: the route's own validation says so
            if nul:
                return await _answer(send, 422, NUL_DETAIL.format(where="in its JSON body"), "INVALID_INPUT")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        await _answer(
            send, 413, f"the request body is over the limit of {self.max_bytes} bytes (HTL_MAX_JSON_BYTES)", "TOO_LARGE"
        )


async def _answer(send, status: int, detail: str, code: str) -> None:
    start, body = _error_message(status, detail, code)
    await send(start)
    await send(body)


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute on average, bursts up to a tenth of a
    minute's worth (at least 10). Per API process: several processes each allow the rate."""

    def __init__(self, per_minute: int, what: str = "requests a minute for this key (HTL_RATE_LIMIT)"):
        self.rate = per_minute / 60.0
        self.capacity = max(10.0, per_minute / 6.0)
        self.what = what
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise TooManyRequests(
                    f"over the rate limit of {self.rate * 60:g} {self.what}", headers={"Retry-After": str(wait)}
                )
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle keys rather than grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}


class UploadSlots:
    """At most `limit` uploads stream and ingest at once; one more is told to come back later."""

    def __init__(self, limit: int, retry_after_s: int = 10):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.active = 0
        self._lock = threading.Lock()

    def __enter__(self) -> UploadSlots:
        with self._lock:
            if self.active >= self.limit:
                raise Unavailable(
                    f"{self.active} uploads are being ingested (HTL_MAX_CONCURRENT_UPLOADS); try again shortly",
                    code="BUSY",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.active += 1
        return self

    def __exit__(self, *_exc) -> None:
        with self._lock:
            self.active -= 1
