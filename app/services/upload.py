"""Streams a multipart upload straight to disk, counting bytes, so an upload over the limit is
refused while it arrives and is never held whole in memory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.core.errors import InvalidInput, TooLarge, UnsupportedMediaType

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 1024


class ReceivedUpload:
    def __init__(self) -> None:
        self.file_path: Path | None = None
        self.filename: str | None = None
        self.size = 0
        self.fields: dict[str, str] = {}


def _boundary(request: Request, max_bytes: int) -> bytes:
    """The multipart boundary, once the headers say the body is a form and not declared over the limit."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("send the archive as multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise TooLarge(f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    return params[b"boundary"]


class _Parts:
    """The multipart parser's events, as a ReceivedUpload: the file field streamed to dest (counted
    against max_bytes as it arrives), the other fields kept as short strings."""

    def __init__(self, dest: Path, *, file_field: str, max_bytes: int) -> None:
        self.dest, self.file_field, self.max_bytes = dest, file_field, max_bytes
        self.result = ReceivedUpload()
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.name: str | None = None
        self.out: BinaryIO | None = None
        self.buf = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers, self.name, self.buf = {}, None, bytearray()

    def on_header_field(self, data, start, end) -> None:
        self.field = bytes(data[start:end]).lower()

    def on_header_value(self, data, start, end) -> None:
        self.headers[self.field] = self.headers.get(self.field, b"") + bytes(data[start:end])

    def on_headers_finished(self) -> None:
        _, disp = parse_options_header(self.headers.get(b"content-disposition"))
        self.name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if self.name == self.file_field:
            if self.result.file_path is not None:
                raise InvalidInput(f"send one '{self.file_field}' field, not several")
            self.result.file_path = self.dest
            self.result.filename = filename.decode("utf-8", "replace") if filename is not None else None
            self.out = self.dest.open("wb")

    def on_part_data(self, data, start, end) -> None:
        chunk = data[start:end]
        if self.out is not None:
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise TooLarge(f"upload is over the limit of {self.max_bytes} bytes")
            self.out.write(chunk)
        else:
            self.buf += chunk
            if len(self.buf) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.out is not None:
            self.close()
        elif self.name:
            self.result.fields[self.name] = self.buf.decode("utf-8", "replace")

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


async def receive_upload(request: Request, dest: Path, *, file_field: str, max_bytes: int) -> ReceivedUpload:
    parts = _Parts(dest, file_field=file_field, max_bytes=max_bytes)
    parser = MultipartParser(_boundary(request, max_bytes), parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    finally:
        parts.close()
    if parts.result.file_path is None:
        raise InvalidInput(f"the form has no '{file_field}' field holding the archive")
    return parts.result
