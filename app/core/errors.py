"""Typed errors with a code; the API turns each into its HTTP status and {"detail": ..., "code": ...}."""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidInput(ApiError):
    status_code = 422
    code = "INVALID_INPUT"


class TooLarge(ApiError):
    status_code = 413
    code = "TOO_LARGE"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class NotFound(ApiError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(ApiError):
    status_code = 409
    code = "CONFLICT"


class Unauthorized(ApiError):
    status_code = 401
    code = "UNAUTHORIZED"


class Forbidden(ApiError):
    status_code = 403
    code = "FORBIDDEN"


class Unavailable(ApiError):
    status_code = 503
    code = "UNAVAILABLE"


class TooManyRequests(ApiError):
    status_code = 429
    code = "RATE_LIMITED"


# the code of an error raised as a plain HTTP status (unknown route, wrong method, ...)
CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_INPUT",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
