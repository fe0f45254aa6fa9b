"""The multipart fast path: plain forms split as Starlette parses them; anything else is left to Starlette."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from service.multipart import split_form

BINARY = bytes(range(256)) + b"\r\n--\r\n\r\n--x--\r\n" + bytes(range(255, -1, -1))


def form(files=None, data=None) -> tuple[bytes, str]:
    """A body and content type as httpx (a typical client) sends them."""
    req = httpx.Request("POST", "http://test/", files=files, data=data)
    return req.read(), req.headers["content-type"]


def starlette_parts(body: bytes, content_type: str) -> list[tuple[str, bytes | str, str | None]]:
    """What Starlette's own parser reads from the body: (name, bytes of a file or a field's text, file name)."""

    async def stream():
        yield body

    async def read():
        parsed = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        out = []
        for name, v in parsed.multi_items():
            out.append((name, await v.read(), v.filename) if isinstance(v, UploadFile) else (name, v, None))
        return out

    return asyncio.run(read())


def fast_parts(body: bytes, content_type: str) -> list[tuple[str, bytes | str, str | None]]:
    parts = split_form(body, content_type, max_parts=100)
    assert parts is not None, "the fast path refused a plain form"
    return [(p.name, p.data if p.filename is not None else p.data.decode(), p.filename) for p in parts]


@pytest.mark.parametrize(
    "files, data",
    [
        ({"image": ("q.jpg", BINARY, "image/jpeg")}, {"k": "10", "mirror": "true"}),
        ({"image_a": ("a.png", b"A" * 5000), "image_b": ("b.png", b"")}, None),
        ([("images", ("1.jpg", b"one")), ("images", ("2.jpg", BINARY))], {"metadata": '{"tag": "ünï"}'}),
        ({"image": ("name with spaces & ü.jpg", b"x")}, {"name": "日本語"}),
        ({"k": (None, ""), "where": (None, '{"a": 1}')}, None),
    ],
    ids=["file-and-fields", "empty-file", "repeated", "unicode-names", "fields-only"],
)
def test_plain_forms_split_as_starlette_parses_them(files, data):
    body, content_type = form(files, data)
    assert fast_parts(body, content_type) == starlette_parts(body, content_type)


def test_a_quoted_boundary_and_a_missing_final_crlf_are_plain_too():
    body, content_type = form({"image": ("q.jpg", BINARY)}, {"k": "3"})
    boundary = content_type.split("boundary=")[1]
    quoted = f'multipart/form-data; boundary="{boundary}"'
    assert body.endswith(b"--\r\n")
    assert fast_parts(body, quoted) == fast_parts(body[:-2], content_type) == starlette_parts(body, content_type)


def edits() -> dict[str, tuple[bytes, str]]:
    """Bodies that are valid or malformed, but not plain: each must be left to Starlette."""
    body, ctype = form({"image": ("q.jpg", b"data")}, {"k": "3"})
    b = ctype.split("boundary=")[1].encode()
    return {
        "preamble": (b"hello\r\n" + body, ctype),
        "epilogue": (body + b"trailing words", ctype),
        "lf-line-ends": (body.replace(b"\r\n", b"\n"), ctype),
        "no-closing-delimiter": (body[: body.rindex(b"--" + b + b"--")], ctype),
        "extra-header": (
            body.replace(b"Content-Disposition", b"Content-Transfer-Encoding: binary\r\nContent-Disposition", 1),
            ctype,
        ),
        "rfc2231-file-name": (body.replace(b'filename="q.jpg"', b"filename*=UTF-8''q.jpg"), ctype),
        "no-blank-line": (body.replace(b"\r\n\r\n", b"\r\n", 1), ctype),
        "other-boundary": (body, "multipart/form-data; boundary=somethingelse"),
        "no-boundary": (body, "multipart/form-data"),
        "not-multipart": (body, "application/x-www-form-urlencoded"),
        "empty": (b"", ctype),
        "long-file-name": (body.replace(b'filename="q.jpg"', b'filename="' + b"n" * 5000 + b'.jpg"'), ctype),
    }


@pytest.mark.parametrize("name", list(edits()))
def test_bodies_out_of_the_plain_shape_are_left_to_starlette(name):
    body, content_type = edits()[name]
    assert split_form(body, content_type, max_parts=100) is None


def test_more_parts_than_allowed_are_left_to_starlette():
    body, content_type = form({f"f{i}": (None, "v") for i in range(5)})
    assert split_form(body, content_type, max_parts=5) is not None
    assert split_form(body, content_type, max_parts=4) is None


def mutations(body: bytes, n: int, seed: int = 0) -> list[bytes]:
    """n copies of body, each with a few bytes deleted, inserted (CR, LF, '-', '"', ';') or flipped."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.choice(("delete", "insert", "flip"))
            if op == "delete":
                del b[i]
            elif op == "insert":
                b[i:i] = rng.choice([b"\r", b"\n", b"-", b'"', b";", b"\r\n"])
            else:
                b[i] = rng.randrange(256)
        out.append(bytes(b))
    return out


def test_whatever_the_fast_path_accepts_starlette_reads_the_same():
    body, content_type = form({"image": ("q.jpg", b"\xff\xd8" + bytes(range(200)))}, {"k": "10"})
    accepted = 0
    for mutated in mutations(body, 400):
        parts = split_form(mutated, content_type, max_parts=100)
        if parts is None:
            continue
        accepted += 1
        fast = [(p.name, p.data if p.filename is not None else p.data.decode("latin-1"), p.filename) for p in parts]
        slow = starlette_parts(mutated, content_type)
        slow = [
            (n, v.encode("latin-1", "replace").decode("latin-1") if isinstance(v, str) else v, f) for n, v, f in slow
        ]
        assert fast == slow, mutated
    assert accepted > 50  # most mutations fall inside the file's bytes and stay plain
