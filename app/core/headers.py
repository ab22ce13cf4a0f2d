"""What the service tells only whom it should: response headers every answer carries (no content
sniffing, no framing: the web app and /docs are never meant to sit inside another site's page; no
caching of anything under /v1: scores, overlays and checkpoints are one owner's data, a shared
cache must not keep them), and the operator-only /metrics."""

from __future__ import annotations

import hmac

from app.core.errors import Forbidden, Unauthorized

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_metrics_access(request, token: str | None) -> None:
    """/metrics counts every tenant's jobs and workers: with a token, the bearer must be it; without
    one, the client must be on this host."""
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized("send the metrics token as 'Authorization: Bearer <HTL_METRICS_TOKEN>'")
        return
    host = request.client.host if request.client else ""
    if host not in LOOPBACK:
        raise Forbidden("/metrics answers this host only; set HTL_METRICS_TOKEN to scrape it from elsewhere")


ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]
NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """ASGI middleware adding ALWAYS to every response, and Cache-Control: no-store to the API's."""

    def __init__(self, app, api_prefix: str = "/v1/"):
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api = scope["path"].startswith(self.api_prefix)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in ALWAYS if k not in names]
                headers = [(k, v) for k, v in message.get("headers", []) if not (api and k.lower() == NO_STORE[0])]
                message = {**message, "headers": headers + extra + ([NO_STORE] if api else [])}
            await send(message)

        await self.app(scope, receive, send_with_headers)
