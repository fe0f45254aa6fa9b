"""The load test's lean HTTP client: its forms parse as the server parses them, and it reads replies."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from bench.raw_http import Connection, ProtocolError, multipart, parse_head, post


def parse_form(body: bytes, content_type: str) -> dict:
    """The form starlette (and so the service) reads from this multipart body."""

    async def stream():
        yield body

    async def read() -> dict:
        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        return {k: (await v.read(), v.filename) if isinstance(v, UploadFile) else v for k, v in form.multi_items()}

    return asyncio.run(read())


def test_multipart_form_parses_back_to_its_files_and_fields():
    image = bytes(range(256)) * 3 + b"\r\n--not-a-boundary\r\n"
    body, content_type = multipart([("image", image, "q.jpg"), ("k", b"10", None)])
    assert parse_form(body, content_type) == {"image": (image, "q.jpg"), "k": "10"}


def test_post_is_a_complete_keep_alive_request_with_the_body_length():
    request = post("127.0.0.1:8000", "/v1/search", [("k", b"5", None)], {"X-API-Key": "s"})
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/search HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == "127.0.0.1:8000" and headers["X-API-Key"] == "s"
    assert int(headers["Content-Length"]) == len(body)
    assert parse_form(body, headers["Content-Type"]) == {"k": "5"}


def test_parse_head_reads_status_length_and_close():
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n") == (200, 12, False)
    assert parse_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") == (503, 0, True)


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"garbage\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"]
)
def test_parse_head_refuses_replies_it_cannot_read(head):
    with pytest.raises(ProtocolError):
        parse_head(head)


async def echo_server(closes_after: int) -> tuple[asyncio.Server, list[int]]:
    """A 127.0.0.1 server answering each request with its body length; closes after `closes_after` replies."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        for n in range(closes_after):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            _, length, _ = parse_head(head.replace(b"POST /x HTTP/1.1", b"HTTP/1.1 200 X"))
            reply = str(len(await reader.readexactly(length))).encode()
            close = b"Connection: close\r\n" if n == closes_after - 1 else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(reply), close, reply))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


def test_connection_keeps_alive_and_reconnects_after_the_server_closes():
    async def run() -> tuple[list[bytes], list[bytes], int]:
        server, connections = await echo_server(closes_after=2)
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port)
        requests = [post(f"127.0.0.1:{port}", "/x", [("f", b"x" * n, None)]) for n in (1, 10, 100)]
        try:
            bodies = [(await conn.send(r)).body for r in requests]
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()
        return requests, bodies, len(connections)

    requests, bodies, n_connections = asyncio.run(run())
    assert bodies == [str(len(r.partition(b"\r\n\r\n")[2])).encode() for r in requests]
    assert n_connections == 2  # two replies on the first connection, the third on a new one


def test_connection_raises_and_recovers_when_the_server_vanishes():
    async def run() -> bytes:
        server, _ = await echo_server(closes_after=0)  # accepts and hangs up at once
        port = server.sockets[0].getsockname()[1]
        conn = Connection("127.0.0.1", port)
        request = post(f"127.0.0.1:{port}", "/x", [("f", b"abc", None)])
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await conn.send(request)
        server.close()
        await server.wait_closed()
        server, _ = await echo_server(closes_after=1)
        conn.port = server.sockets[0].getsockname()[1]
        try:
            return (await conn.send(request)).body
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()).isdigit()
