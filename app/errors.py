"""Typed errors with a code; the API turns each into its HTTP status and {"detail": ..., "code": ...}."""
from __future__ import annotations


class ApiError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


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


class Unavailable(ApiError):
    status_code = 503
    code = "UNAVAILABLE"
