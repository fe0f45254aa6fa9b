"""A fast path for the plain multipart forms that clients send: the whole body split on its boundary.

Starlette parses a form through python-multipart, byte-level callbacks in Python, and spools each file
into a `SpooledTemporaryFile`: under load that was 17 % of the event loop's time (docs/results.md).
`split_form` takes only the common shape — CRLF line ends, no preamble or epilogue, each part with a
`Content-Disposition: form-data; name="…"` header (plus `; filename="…"` for a file) and at most a
`Content-Type` header, quoted strings without escapes — and returns None for
anything else, which then goes through Starlette's parser as before, errors and limits included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOUNDARY = re.compile(rb'multipart/form-data\s*;\s*boundary=(?:"([^"\\\r\n]{1,70})"|([^\s;"]{1,70}))\s*', re.I)
_DISPOSITION = re.compile(rb'form-data; name="([^"\\\r\n]*)"(?:; filename="([^"\\\r\n]*)")?', re.I)
_HEADERS = {b"content-disposition", b"content-type"}
MAX_HEAD_BYTES = 4096  # a part's headers; longer ones go to python-multipart, which limits each line to 4,224


@dataclass(frozen=True)
class Part:
    """One form part: its field name, its bytes, and its file name (None for a plain field)."""

    name: str
    data: bytes
    filename: str | None
    content_type: str | None = None


def split_form(body: bytes, content_type: str, max_parts: int) -> list[Part] | None:
    """The parts of a plain multipart/form-data body, in order; None if the body is not that simple."""
    m = _BOUNDARY.fullmatch(content_type.encode("latin-1", "replace"))
    if m is None:
        return None
    delim = b"--" + (m.group(1) or m.group(2))
    close = b"\r\n" + delim + b"--"
    if not body.startswith(delim + b"\r\n") or not (body.endswith(close) or body.endswith(close + b"\r\n")):
        return None
    inner = body[len(delim) : body.rindex(close)]
    chunks = inner.split(b"\r\n" + delim)
    if len(chunks) > max_parts:
        return None
    parts = []
    for chunk in chunks:
        part = _part(chunk)
        if part is None:
            return None
        parts.append(part)
    return parts


def _part(chunk: bytes) -> Part | None:
    """One part from `\\r\\n` + its headers + a blank line + its bytes; None if out of the simple shape."""
    if not chunk.startswith(b"\r\n"):
        return None
    head, blank, data = chunk[2:].partition(b"\r\n\r\n")
    if not blank or len(head) > MAX_HEAD_BYTES:
        return None
    headers = {}
    for line in head.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        key = key.lower()
        if not colon or key not in _HEADERS or key in headers or b"\r" in line or b"\n" in line:  # stray CR/LF
            return None
        headers[key] = value.strip(b" \t")
    m = _DISPOSITION.fullmatch(headers.get(b"content-disposition", b""))
    if m is None:
        return None
    filename = None if m.group(2) is None else text(m.group(2))
    kind = headers[b"content-type"].decode("latin-1") if b"content-type" in headers else None
    return Part(text(m.group(1)), data, filename, kind)


def text(b: bytes) -> str:
    """UTF-8, else Latin-1: how Starlette decodes names, file names and fields."""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")
