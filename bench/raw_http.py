"""A lean HTTP/1.1 load client: requests encoded once up front, sent over keep-alive asyncio streams.

The load test shares the machine with the server it measures, so every CPU millisecond the client
spends per request is taken from the server. httpx spends about 1.4 ms of CPU per multipart request
(building the body, its header and connection machinery); this client sends bytes that were built
before the clock started and reads the reply with two stream calls, a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

Field = tuple[str, bytes, str | None]  # (form name, value, file name or None for a plain field)


def multipart(fields: list[Field]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form with these fields."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: application/octet-stream\r\n" if filename else ""
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(host: str, path: str, fields: list[Field], headers: dict[str, str] | None = None) -> bytes:
    """The whole bytes of a keep-alive HTTP/1.1 multipart POST."""
    body, content_type = multipart(fields)
    lines = {"Host": host, "Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n"
    return head.encode() + body


class ProtocolError(Exception):
    """A reply this client does not read (no Content-Length, malformed status line)."""


@dataclass
class Reply:
    status: int
    body: bytes


class Connection:
    """One keep-alive connection; reconnects after a failure. Not shared between tasks."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> Reply:
        """Send one pre-encoded request and read its reply; a broken connection is dropped and raises."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, close = parse_head(head)
            body = await reader.readexactly(length)
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return Reply(status, body)

    async def close(self) -> None:
        """Close the connection if one is open."""
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the server closes) of a reply's status line and headers."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as e:
        raise ProtocolError(f"bad status line {lines[0]!r}") from e
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" not in headers:
        raise ProtocolError(f"reply {status} has no Content-Length")
    return status, int(headers["content-length"]), headers.get("connection", "").lower() == "close"
