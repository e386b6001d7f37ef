"""Connection caps at accept (trickle-trio's own server): sync rules on socket pairs, and
over real sockets a refused connection's answer, the others untouched, and recovery."""

from __future__ import annotations

import socket

import pytest
import trio

from trickle_trio.config import Settings
from trickle_trio.h1.admission import Admission
from trickle_trio.server import open_server

from .sockets import call, connect, until

LIMIT = 10


def _answer(peer: socket.socket) -> bytes:
    peer.settimeout(LIMIT)
    got = b""
    while chunk := peer.recv(4096):
        got += chunk
    return got


def test_past_the_total_cap_a_connection_is_answered_503_and_closed() -> None:
    admission = Admission(max_connections=2)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        assert admission.admit(pairs[0][0], ("10.0.0.1", 1)) == "10.0.0.1"
        assert admission.admit(pairs[1][0], ("10.0.0.2", 1)) == "10.0.0.2"
        pairs[2][1].sendall(b"GET /cam/0 HTTP/1.1\r\nHost: x\r\n\r\n")  # read and dropped
        assert admission.admit(pairs[2][0], ("10.0.0.3", 1)) is None
        answer = _answer(pairs[2][1])
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"connection: close" in answer
        assert answer.endswith(b"Too many connections\n")
        assert pairs[2][0].fileno() == -1  # closed
        assert admission.refused == {"max_connections": 1, "max_connections_per_client": 0}
        admission.leave("10.0.0.1")
        assert admission.admit(pairs[0][0], ("10.0.0.3", 1)) == "10.0.0.3"
        assert admission.open == 2
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_past_the_per_client_cap_one_address_gets_429_and_others_go_on() -> None:
    admission = Admission(max_per_client=1)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        assert admission.admit(pairs[0][0], ("10.0.0.1", 1)) is not None
        assert admission.admit(pairs[1][0], ("10.0.0.1", 2)) is None
        assert _answer(pairs[1][1]).startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert admission.admit(pairs[2][0], ("10.0.0.2", 1)) is not None
        admission.leave("10.0.0.1")
        assert admission._per_client == {"10.0.0.2": 1}
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_no_caps_admit_everything() -> None:
    admission = Admission()
    a, b = socket.socketpair()
    try:
        for port in range(100):
            assert admission.admit(a, ("10.0.0.1", port)) == "10.0.0.1"
        assert admission.open == 100
    finally:
        a.close()
        b.close()


@pytest.mark.fast_path  # the caps live in trickle-trio's own server
async def test_over_sockets_the_cap_refuses_then_recovers_and_held_connections_work() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, max_connections=3)
    with trio.fail_after(LIMIT):
        async with open_server(settings) as server:
            # Three held connections: an idle preconnect, a parked GET, a keep-alive one.
            preconnect = await connect(server.url)
            await preconnect.start("POST", "/cam/0")
            parked = await connect(server.url)
            await parked.start("GET", "/cam/0")
            await parked.end()
            idle = await connect(server.url)
            await idle.start("GET", "/healthz")
            await idle.end()
            assert (await idle.response()).status == 200
            reply = await call(server.url, "GET", "/healthz")
            assert reply.status == 503
            assert reply.body == b"Too many connections\n"
            # The held ones are untouched: the preconnect's bytes reach the parked GET.
            await preconnect.send(b"held")
            await preconnect.end()
            assert (await preconnect.response()).status == 200
            assert (await parked.response()).body == b"held"
            admission = server.admission
            assert admission is not None
            assert admission.gauges() == {"connections_open": 3, "connections_refused": 1}
            for conn in (preconnect, parked, idle):
                await conn.aclose()
            await until(lambda: admission.open == 0)
            assert (await call(server.url, "GET", "/healthz")).status == 200
            metrics = (await call(server.url, "GET", "/metrics")).body.decode()
            assert "trickle_connections_refused 1.0" in metrics
