"""ChunkedBody (the fast path's chunked-body decoder) against h11, which it stands in for.

The decoder runs from a chunk boundary to the last-chunk line and hands the rest back
to h11; the combination must accept exactly what h11 alone accepts, deliver the same
payload bytes, and leave h11 the same end of message.
"""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickle_trio.core.chunked import BadChunk, ChunkedBody

HEAD = b"POST /cam/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def decode(pieces: list[bytes], max_line: int = 16 * 1024) -> tuple[bytes, bytes | None]:
    """Payload delivered and the bytes handed back (None: the body is not finished)."""
    body = ChunkedBody(max_line)
    out: list[bytes] = []
    for number, piece in enumerate(pieces):
        rest = body.feed(piece, out.append)
        if rest is not None:
            return b"".join(out), rest + b"".join(pieces[number + 1 :])
    return b"".join(out), None


def h11_outcome(body: bytes) -> tuple[bytes, str]:
    """What h11 alone makes of a request with this chunked body: payload and ending."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HEAD + body)
    payload: list[bytes] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return b"".join(payload), "error"
        if type(event) is h11.Data:
            payload.append(bytes(event.data))
        elif type(event) is h11.EndOfMessage:
            return b"".join(payload), "end"
        elif event is h11.NEED_DATA:
            return b"".join(payload), "more"


def combined_outcome(pieces: list[bytes]) -> tuple[bytes, str]:
    """The decoder up to the last chunk, then h11 (at a boundary) for the rest."""
    try:
        payload, rest = decode(pieces)
    except BadChunk:
        # Compare payloads on the valid prefix only: h11 reports the same error.
        return b"", "error"
    if rest is None:
        return payload, "more"
    tail_payload, ending = h11_outcome(rest)
    assert tail_payload == b""  # only the last chunk and trailer were handed back
    return payload, ending


def encode(chunks: list[bytes], ext: bytes = b"", trailer: bytes = b"") -> bytes:
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk) for chunk in chunks)
    return framed + b"0\r\n" + trailer + b"\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def test_payload_and_the_last_chunk_come_apart() -> None:
    body = encode([b"hello", b" ", b"world"]) + b"GET /next HTTP/1.1\r\n"
    payload, rest = decode([body])
    assert payload == b"hello world"
    assert rest == b"0\r\n\r\nGET /next HTTP/1.1\r\n"


def test_a_piece_that_is_all_payload_is_passed_as_it_is() -> None:
    body = ChunkedBody()
    got: list[bytes] = []
    assert body.feed(b"10000\r\n", got.append) is None
    piece = bytes(range(256)) * 64
    assert body.feed(piece, got.append) is None
    assert got[0] is piece


def test_a_size_line_split_over_reads_is_handed_back_whole() -> None:
    assert decode([b"5\r\nabcde\r\n", b"0", b"\r", b"\n\r\n"]) == (b"abcde", b"0\r\n\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nabcdeXY",  # no CRLF after the payload
        b"5\r\nabcde\r",  # then a bad second byte of it:
        b"g\r\n",  # not hex
        b" 5\r\nabcde\r\n",  # leading space
        b"5 ;x\r\nabcde\r\n",  # space before the extension
        b"5\nabcde\r\n",  # a bare LF
        b"123456789012345678901\r\n",  # 21 digits
    ],
)
def test_what_h11_refuses_is_refused(body: bytes) -> None:
    pieces = [body, b"Z"] if body.endswith(b"\r") else [body]
    assert h11_outcome(b"".join(pieces))[1] == "error"
    with pytest.raises(BadChunk):
        decode(pieces)


def test_a_long_size_line_is_refused_at_the_limit() -> None:
    with pytest.raises(BadChunk):
        decode([b"5;" + b"x" * 100], max_line=64)
    assert decode([b"5;" + b"x" * 50], max_line=64) == (b"", None)


chunk_lists = st.lists(st.binary(min_size=1, max_size=300), max_size=8)
extensions = st.sampled_from([b"", b";name=value", b" ", b"\t \t", b";"])
trailers = st.sampled_from([b"", b"X-Checksum: 1\r\n"])
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=300, deadline=None)
@given(chunks=chunk_lists, ext=extensions, trailer=trailers, cut=cuts)
def test_well_formed_bodies_decode_as_h11_decodes_them(
    chunks: list[bytes], ext: bytes, trailer: bytes, cut: list[int]
) -> None:
    body = encode(chunks, ext, trailer)
    assert combined_outcome(split(body, cut)) == h11_outcome(body) == (b"".join(chunks), "end")


def mutate(data: bytes, where: int, how: str, byte: int) -> bytes:
    i = where % (len(data) + 1)
    if how == "replace" and i < len(data):
        return data[:i] + bytes([byte]) + data[i + 1 :]
    if how == "delete" and i < len(data):
        return data[:i] + data[i + 1 :]
    return data[:i] + bytes([byte]) + data[i:]


@settings(max_examples=1000, deadline=None)
@given(
    chunks=chunk_lists,
    ext=extensions,
    cut=cuts,
    where=st.integers(min_value=0, max_value=5_000),
    how=st.sampled_from(["replace", "delete", "insert"]),
    byte=st.sampled_from(list(b"\r\n \t;0123456789abcdefABCDEFgG\x00")),
)
def test_damaged_bodies_are_judged_as_h11_judges_them(
    chunks: list[bytes], ext: bytes, cut: list[int], where: int, how: str, byte: int
) -> None:
    body = mutate(encode(chunks, ext), where, how, byte)
    mine: Any = combined_outcome(split(body, cut))
    theirs: Any = h11_outcome(body)
    if theirs[1] == "error":
        assert mine[1] == "error"
    else:
        assert mine == theirs
