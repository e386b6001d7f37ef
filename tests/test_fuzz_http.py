"""HTTP-level fuzz: random requests against the whole app, in-process, beside a witness.

Each Hypothesis example is one trio run (pytest-trio's Hypothesis support) under
``autojump_clock``: a fresh registry and ``create_app(Settings(autocreate=True, ..))``,
a *witness* (a well-behaved publisher and subscriber on channel ``witness``, speaking
the protocol as the reference clients do: preconnect ``seq + 1``, stream, end), and a
batch of fuzz requests started at random (virtual) times: random methods, paths, seq
forms (huge, negative, non-numeric, unicode, empty), headers (odd ``Lp-Trickle-Reset``,
missing or odd ``Content-Type``/``Expect-Content``, bearer tokens), bodies cut at
random chunk boundaries, clients that leave mid-body, after the status line, after one
chunk, that stop reading (every send waits for them), or that never end their body (a
preconnect, let go after a while). Half the examples run with tight limits (preconnect
timeout, segment bytes, publishers and subscribers per channel, channels), a third with
bearer tokens.

Checked, for every example:
- no response is 5xx, and every response the app starts is one h11 would send
  (status, header names and values, a body as long as its Content-Length), with no
  message after the last;
- no exception escapes the app (``Exchange.run`` re-raises into the test's nursery);
- a client that stays gets a complete response; a client that leaves sees its request
  finish within a bounded (virtual) time: nothing waits on a client that is gone;
- no task leaks: once every client is done only the channel tasks are alive, and after
  ``close_all`` the task count is back to the baseline;
- the witness's subscriber receives, segment by segment, exactly the bytes its
  publisher sent, with the right ``Lp-Trickle-Seq``, never a 470, and the released last
  preconnect as an empty segment.

Budget: ``FUZZ_EXAMPLES`` examples in CI (derandomized: the same inputs every run);
``TRICKLE_FUZZ_EXAMPLES=N`` for a long local run with fresh random inputs; add ``-s`` to
see how many requests were tried.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trickle_trio.config import Settings
from trickle_trio.http.app import create_app
from trickle_trio.registry import ChannelRegistry
from trickle_trio.testing import Exchange

#: In-process tests fail at a deadline instead of hanging (tests/conftest.py).
pytestmark = pytest.mark.deadline

WITNESS = "witness"
PUBLISH_TOKEN = "publish-token-0123456789"
SUBSCRIBE_TOKEN = "subscribe-token-0123456789"
#: A client that has left must see its request end within this (virtual) time.
HANG_LIMIT = 30.0
#: The whole example must end within this (virtual) time.
EXAMPLE_LIMIT = 600.0

LONG_RUN = int(os.environ.get("TRICKLE_FUZZ_EXAMPLES", "0"))
FUZZ_EXAMPLES = LONG_RUN or 400

#: What the fuzz tried, for the report at the end of a long run (pytest -s).
TRIED: Counter[str] = Counter()


# -- checking what the app sends -------------------------------------------------------------


@dataclass
class Seen:
    """What one request's app task sent, and any rule it broke."""

    status: int | None = None
    ended: bool = False
    declared_length: int | None = None
    body_length: int = 0
    violations: list[str] = field(default_factory=list)


class CheckedApp:
    """Wraps the ASGI app and checks each response message as hypercorn would need it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, Seen]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        seen = Seen()
        scope["extensions"]["fuzz.seen"] = seen
        self.seen.append((f"{scope['method']} {scope['path']!r}", seen))

        async def checked_send(message: Any) -> None:
            kind = message.get("type")
            if seen.ended:
                seen.violations.append(f"{kind} after the response ended")
            elif kind == "http.response.start":
                if seen.status is not None:
                    seen.violations.append("a second http.response.start")
                seen.status = message["status"]
                try:
                    response = h11.Response(
                        status_code=message["status"], headers=message["headers"]
                    )
                except (h11.LocalProtocolError, TypeError, ValueError) as exc:
                    seen.violations.append(f"h11 would refuse the response: {exc}")
                else:
                    for name, value in response.headers:
                        if name == b"content-length" and scope["method"] != "HEAD":
                            seen.declared_length = int(value)
            elif kind == "http.response.body":
                if seen.status is None:
                    seen.violations.append("body before http.response.start")
                body = message.get("body", b"")
                if not isinstance(body, bytes):
                    seen.violations.append("body is not bytes")
                seen.body_length += len(body)
                seen.ended = not message.get("more_body", False)
                if seen.ended and seen.declared_length not in (None, seen.body_length):
                    seen.violations.append(
                        f"Content-Length {seen.declared_length}, body {seen.body_length}"
                    )
            else:
                seen.violations.append(f"unknown message {kind!r}")
            await send(message)

        await self.app(scope, receive, checked_send)


# -- the fuzz requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    #: The request body, in the pieces the client sends.
    chunks: tuple[bytes, ...]
    #: "end": the body ends; "leave": the client disconnects after the chunks;
    #: "idle": the body stays open (a preconnect) until the client's patience runs out.
    body_end: str
    #: How much of the response the client reads before it leaves: "all", "start",
    #: "one" (the first body chunk) or "none".
    read: str
    start_at: float
    gap: float
    patience: float
    #: The client reads only when it wants to: every message the app sends waits for
    #: it (a subscriber that stops reading); otherwise sends never block.
    stalls: bool


FUZZ_CHANNELS = ["a", "b", "c"]
ODD_NAMES = [
    "",
    "witnes",
    "witness2",
    "_changes",
    "next",
    "-1",
    "0",
    "x" * 300,
    "ü",
    "日本",
    "a b",
    "a%2Fb",
    "..",
    ".",
    "_status",
    "metrics",
    "healthz",
    "a\x00b",
    "a\nb",
]
ODD_SEQS = [
    "-1",
    "-2",
    "-3",
    "-7",
    "next",
    "",
    "abc",
    "1.5",
    "+1",
    "01",
    "-0",
    " 1",
    "1 ",
    "\uff11",  # fullwidth digit one
    "\u0663",  # arabic-indic digit three
    "1e3",
    "0x10",
    "NaN",
    str(2**53 - 1),
    str(2**53),
    str(-(2**53 - 1)),
    str(-(2**53)),
    str(10**30),
    "-" + "9" * 40,
    "9" * 3000,
]
PLAIN_PATHS = [
    "/",
    "//",
    "/a/",
    "/a//1",
    "/a/1/2",
    "/a/next/x",
    "/a/next",
    "/b/next",
    "/healthz",
    "/readyz",
    "/metrics",
    "/_status",
    "/" + "y" * 3000,
]
METHODS = ["GET", "POST", "DELETE"] * 4 + ["PUT", "HEAD", "OPTIONS", "PATCH", "TRACE", "get", "FOO"]
HEADER_NAMES = [
    "Content-Type",
    "Expect-Content",
    "Lp-Trickle-Reset",
    "Lp-Trickle-Seq",
    "Lp-Trickle-Latest",
    "Authorization",
    "Connection",
    "Expect",
    "Accept",
    "X-Junk",
]
HEADER_VALUES = [
    "",
    "0",
    "1",
    "true",
    "false",
    "no",
    "terminated",
    "video/mp2t",
    "application/json",
    "text/plain; charset=utf-8",
    "100-continue",
    "close",
    "Bearer " + PUBLISH_TOKEN,
    "Bearer " + SUBSCRIBE_TOKEN,
    "Bearer",
    "Bearer nope",
    "bearer " + PUBLISH_TOKEN,
    "Basic Zm9vOmJhcg==",
    "v" * 5000,
]
#: What h11 delivers as a header value: visible ASCII and obs-text, no surrounding spaces.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]),
    max_size=24,
).map(str.strip)
token = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}", fullmatch=True)


def not_witness(path: str) -> bool:
    return path.split("/")[1:2] != [WITNESS]


channel_names = st.one_of(
    st.sampled_from(FUZZ_CHANNELS),
    st.sampled_from(FUZZ_CHANNELS),
    st.sampled_from(ODD_NAMES),
    st.text(max_size=10),
)
seq_forms = st.one_of(
    st.integers(-3, 12).map(str),
    st.integers(-3, 12).map(str),
    st.sampled_from(ODD_SEQS),
    st.integers(-(2**62), 2**62).map(str),
    st.text(max_size=6),
)
#: Requests a real client could send, on the shared fuzz channels: these make state.
plausible_paths = st.builds(
    "/{}/{}".format, st.sampled_from(FUZZ_CHANNELS), st.integers(-2, 8).map(str)
)
paths = st.one_of(
    plausible_paths,
    plausible_paths,
    plausible_paths,
    st.builds("/{}/{}".format, channel_names, seq_forms),
    st.builds("/{}/{}".format, channel_names, seq_forms),
    st.builds("/{}/{}".format, channel_names, seq_forms),
    st.builds("/{}".format, channel_names),
    st.sampled_from(PLAIN_PATHS),
    st.text(max_size=16).map(lambda text: "/" + text),
).filter(not_witness)
headers = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(HEADER_NAMES), token),
        st.one_of(st.sampled_from(HEADER_VALUES), header_text),
    ),
    max_size=5,
)
#: Mostly small pieces; sometimes one past Quart's MAX_CONTENT_LENGTH (64 KiB). Big bodies
#: are made from a size, not drawn byte by byte.
body_chunks = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.binary(max_size=40),
        st.integers(1_000, 70_000).map(lambda n: b"\xab" * n),
    ),
    max_size=4,
)
quarter_seconds = st.integers(0, 40).map(lambda n: n / 4)


plausible_headers = st.lists(
    st.tuples(
        st.sampled_from(["Content-Type", "Lp-Trickle-Reset", "Expect-Content"]),
        st.sampled_from(["", "1", "video/mp2t", "application/json", "true", "0"]),
    ),
    max_size=2,
)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> FuzzRequest:
    """Half of them what a client could send on the fuzz channels (they build state for
    the others to trip over), half wild."""
    if draw(st.booleans()):
        method = draw(st.sampled_from(["GET", "POST", "POST", "DELETE"]))
        path = draw(plausible_paths)
        header_list = draw(plausible_headers)
    else:
        method = draw(st.sampled_from(METHODS))
        path = draw(paths)
        header_list = draw(headers)
    chunks = tuple(draw(body_chunks))
    body_end = draw(st.sampled_from(["end", "end", "leave", "idle"]))
    # With tokens configured, most clients present one (else nearly all would get 401).
    token_value = draw(st.sampled_from([PUBLISH_TOKEN] * 4 + [SUBSCRIBE_TOKEN] * 2 + ["", "x"]))
    if token_value:
        header_list.insert(0, ("Authorization", f"Bearer {token_value}"))
    if body_end == "end" and draw(st.booleans()):
        # What h11 would pass on for a body with a declared length.
        header_list.append(("Content-Length", str(sum(map(len, chunks)))))
    elif draw(st.booleans()):
        header_list.append(("Transfer-Encoding", "chunked"))
    return FuzzRequest(
        method=method,
        path=path,
        headers=tuple(header_list),
        chunks=chunks,
        body_end=body_end,
        read=draw(st.sampled_from(["all", "all", "start", "one", "none"])),
        start_at=draw(quarter_seconds),
        gap=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 2.0])),
        patience=draw(st.sampled_from([0.5, 2.0, 5.0, 15.0])),
        stalls=draw(st.booleans()),
    )


async def run_fuzz_request(app: CheckedApp, request: FuzzRequest) -> None:
    """One client: send, read as much as it wants, leave; the app must then finish."""
    await trio.sleep(request.start_at)
    exchange = Exchange(
        app,
        request.method,
        request.path,
        request.headers,
        response_buffer=0 if request.stalls else math.inf,
    )
    disconnected = False
    async with trio.open_nursery() as nursery:
        await nursery.start(exchange.run)
        seen: Seen = exchange.scope["extensions"]["fuzz.seen"]
        with trio.move_on_after(request.patience):
            for chunk in request.chunks:
                await exchange.send_body(chunk)
                await trio.sleep(request.gap)
            if request.body_end == "end":
                await exchange.end_body()
            elif request.body_end == "leave":
                disconnected = True
                await exchange.disconnect()
            if not await read_some(exchange, request.read):
                await trio.sleep_forever()  # hold on until patience runs out
        # The app returned, or said all it had to say, while the client was still there.
        answered = not disconnected and (exchange.finished.is_set() or seen.ended)
        if not disconnected:
            # The client leaves (or, after a complete response, hypercorn closes the
            # stream): either way the app hears http.disconnect.
            await exchange.disconnect()
        # Sending to a client that is gone never blocks (hypercorn drops it).
        nursery.start_soon(drain, exchange)
        with trio.fail_after(HANG_LIMIT):
            await exchange.finished.wait()
    if answered:
        assert seen.ended, f"{request.method} {request.path!r}: no complete response"
    TRIED["requests"] += 1
    TRIED["answered" if answered else "left early"] += 1
    if seen.status is not None:
        TRIED[f"status {seen.status}"] += 1


async def drain(exchange: Exchange) -> None:
    with contextlib.suppress(EOFError):
        while await exchange.read_chunk() is not None:
            pass


async def read_some(exchange: Exchange, how: str) -> bool:
    """Read as the client wants to; True if it read a whole response."""
    try:
        if how == "all":
            await exchange.read_response()
            return True
        if how == "start":
            await exchange.read_start()
        elif how == "one":
            await exchange.read_chunk()
    except EOFError:
        pass  # the app ended without (all of) a response: judged by the caller
    return False


# -- the witness -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessPlan:
    """Segment ``i`` is sent as pieces of ``sizes[i]`` bytes; ``gap`` seconds apart."""

    sizes: tuple[tuple[int, ...], ...]
    gap: float
    seed: int

    def segments(self) -> list[list[bytes]]:
        rng = random.Random(self.seed)
        return [[rng.randbytes(n) for n in pieces] for pieces in self.sizes]


witness_plans = st.builds(
    WitnessPlan,
    sizes=st.lists(
        st.lists(st.integers(1, 3000), min_size=1, max_size=4).map(tuple),
        min_size=2,
        max_size=5,
    ).map(tuple),
    gap=st.sampled_from([0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**32),
)


def auth(token: str | None) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")] if token else []


async def run_witness(app: CheckedApp, plan: WitnessPlan, tokens: bool) -> None:
    """A publisher and a subscriber that follow the protocol; every byte must match."""
    pub_auth = auth(PUBLISH_TOKEN if tokens else None)
    sub_auth = auth(SUBSCRIBE_TOKEN if tokens else None)
    segments = plan.segments()
    received: list[bytes] = []

    async def publisher() -> None:
        preconnect = Exchange(
            app, "POST", f"/{WITNESS}/0", [*pub_auth, ("Content-Type", "video/mp2t")]
        )
        async with trio.open_nursery() as posts:
            await posts.start(preconnect.run)
            for seq, pieces in enumerate(segments):
                current, preconnect = (
                    preconnect,
                    Exchange(
                        app,
                        "POST",
                        f"/{WITNESS}/{seq + 1}",
                        [*pub_auth, ("Content-Type", "video/mp2t")],
                    ),
                )
                await posts.start(preconnect.run)
                for piece in pieces:
                    await current.send_body(piece)
                    await trio.sleep(plan.gap)
                await current.end_body()
                answer = await current.read_response()
                assert (answer.status, answer.headers["lp-trickle-seq"]) == (200, str(seq))
            # The subscriber has everything: let the last preconnect go (an empty segment).
            await subscriber_done.wait()
            await preconnect.end_body()
            answer = await preconnect.read_response()
            assert answer.status == 200
            assert answer.headers["lp-trickle-seq"] == str(len(segments))
            assert answer.headers["connection"] == "close"

    subscriber_done = trio.Event()
    empty_seen = trio.Event()

    async def subscriber() -> None:
        for seq in range(len(segments) + 1):
            if seq == len(segments):
                subscriber_done.set()
            get = Exchange(app, "GET", f"/{WITNESS}/{seq}", sub_auth)
            async with trio.open_nursery() as gets:
                await gets.start(get.run)
                await get.end_body()
                answer = await get.read_response()
            assert answer.status == 200, (seq, answer.status, answer.body)
            assert answer.headers["lp-trickle-seq"] == str(seq)
            received.append(answer.body)
        empty_seen.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        nursery.start_soon(subscriber)
    assert empty_seen.is_set()
    assert received == [b"".join(pieces) for pieces in segments] + [b""]
    TRIED["witness segments"] += len(segments)


# -- the test ----------------------------------------------------------------------------------


def example_settings() -> settings:
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [
            HealthCheck.function_scoped_fixture,  # the clock: stateless between runs
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    }
    if LONG_RUN:
        return settings(max_examples=LONG_RUN, **common)
    return settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,
        report_multiple_bugs=False,
        **common,
    )


def tasks_living() -> int:
    return trio.lowlevel.current_statistics().tasks_living


#: Tight limits, so that 408, 413 and 429 answers are fuzzed too. The witness stays
#: inside them: at most 12,000 bytes a segment, 2 POSTs and 1 GET at once, created
#: before any fuzz request; with a short preconnect timeout it writes quickly (no
#: preconnect of its own idles for more than 4 x 0.1 s).
@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], WitnessPlan]:
    plan = draw(witness_plans)
    if not draw(st.booleans()):
        return {}, plan
    timeout = draw(st.sampled_from([1.0, 10.0]))
    if timeout < 4 * plan.gap:
        plan = WitnessPlan(plan.sizes, gap=0.1, seed=plan.seed)
    limits = {
        "preconnect_timeout": timeout,
        "max_segment_bytes": draw(st.sampled_from([16_384, 40_000])),
        "max_publishers_per_channel": 3,
        "max_subscribers_per_channel": 2,
        "max_channels": 6,
    }
    return limits, plan


@pytest.mark.timeout(0 if LONG_RUN else 900)  # a failure is shrunk: that can take minutes
@example_settings()
@given(
    requests=st.lists(fuzz_requests(), min_size=2, max_size=14),
    scenario=scenarios(),
    tokens=st.sampled_from([False, False, True]),
)
async def test_http_fuzz(
    autojump_clock: trio.testing.MockClock,
    requests: list[FuzzRequest],
    scenario: tuple[dict[str, Any], WitnessPlan],
    tokens: bool,
) -> None:
    limits, plan = scenario
    options: dict[str, Any] = {"autocreate": True, **limits}
    if tokens:
        options.update(publish_token=PUBLISH_TOKEN, subscribe_token=SUBSCRIBE_TOKEN)
    settings = Settings(**options)
    async with trio.open_nursery() as nursery:
        registry = ChannelRegistry.from_settings(nursery, settings)
        baseline = tasks_living()
        for name in FUZZ_CHANNELS[:2]:  # so that reads find something ("c" starts absent)
            registry.create(name, "video/mp2t")
        app = CheckedApp(create_app(settings, registry))
        async with trio.open_nursery() as create:
            witness = Exchange(app, "POST", f"/{WITNESS}", auth(PUBLISH_TOKEN if tokens else None))
            await create.start(witness.run)
            await witness.end_body()
            assert (await witness.read_response()).status == 200
        with trio.fail_after(EXAMPLE_LIMIT):
            async with trio.open_nursery() as clients:
                clients.start_soon(run_witness, app, plan, tokens)
                for request in requests:
                    clients.start_soon(run_fuzz_request, app, request)
        await trio.testing.wait_all_tasks_blocked()

        for label, seen in app.seen:
            assert not seen.violations, (label, seen.violations)
            assert seen.status is None or seen.status < 500, (label, seen.status)
        # One task per channel and nothing else: no request left anything behind.
        assert tasks_living() == baseline + len(registry), [c.name for c in registry.channels()]
        await registry.close_all()
        await trio.testing.wait_all_tasks_blocked()
        assert tasks_living() == baseline
        nursery.cancel_scope.cancel()
    TRIED["examples"] += 1


def teardown_module() -> None:
    if LONG_RUN:
        print(f"\nHTTP fuzz tried: {dict(TRIED)}")
