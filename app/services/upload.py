"""Streams a multipart upload straight to disk, counting bytes, so an upload over the limit is
refused while it arrives and is never held whole in memory."""

from __future__ import annotations

from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.core.errors import InvalidInput, TooLarge, UnsupportedMediaType

MAX_FIELD_BYTES = 1024


class ReceivedUpload:
    def __init__(self) -> None:
        self.file_path: Path | None = None
        self.filename: str | None = None
        self.size = 0
        self.fields: dict[str, str] = {}


async def receive_upload(request: Request, dest: Path, *, file_field: str, max_bytes: int) -> ReceivedUpload:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType("send the archive as multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise TooLarge(f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")

    result = ReceivedUpload()
    state: dict = {"headers": {}, "field": b"", "name": None, "filename": None, "out": None, "buf": bytearray()}

    def on_part_begin():
        state.update(headers={}, name=None, filename=None, buf=bytearray())

    def on_header_field(data, start, end):
        state["field"] = bytes(data[start:end]).lower()

    def on_header_value(data, start, end):
        state["headers"][state["field"]] = state["headers"].get(state["field"], b"") + bytes(data[start:end])

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition"))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        state["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        if state["name"] == file_field:
            if result.file_path is not None:
                raise InvalidInput(f"send one '{file_field}' field, not several")
            result.file_path = dest
            result.filename = state["filename"]
            state["out"] = dest.open("wb")

    def on_part_data(data, start, end):
        chunk = data[start:end]
        if state["out"] is not None:
            result.size += len(chunk)
            if result.size > max_bytes:
                raise TooLarge(f"upload is over the limit of {max_bytes} bytes")
            state["out"].write(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {state['name']!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end():
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None
        elif state["name"]:
            result.fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    finally:
        if state["out"] is not None:
            state["out"].close()
    if result.file_path is None:
        raise InvalidInput(f"the form has no '{file_field}' field holding the archive")
    return result
