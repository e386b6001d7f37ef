"""``trickle-trio cluster``: the protocol through HAProxy with several backend processes.

Each test starts a real cluster (``trickle-trio cluster`` in a subprocess: N ``serve``
processes and HAProxy) on loopback and speaks raw HTTP/1.1 to it with ``tests.sockets``.
Where a test must know what a backend has seen (a preconnect attached, a subscriber
waiting), it polls that backend's ``/_status`` under ``fail_after``. Skipped when HAProxy
is not installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from trickle_trio.ops.cluster import ClusterOptions, _start_backends
from trickle_trio.ops.haproxy import Shard as ClusterShard
from trickle_trio.ops.haproxy import channel_field, find_haproxy
from trickle_trio.ops.processes import die_with_parent

from .sockets import POLL_INTERVAL, Conn, Reply, call, connect, until
from .test_deployments import free_port

LIMIT = 30
BIN = Path(sys.executable).parent
HAPROXY = find_haproxy()
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (apt-get install haproxy; .ci/run installs it)",
)


@dataclass
class Shard:
    name: str
    url: str
    pid: int


@dataclass
class Cluster:
    process: subprocess.Popen[bytes]
    url: str  # the proxy, without the base path
    base: str  # "/" or "/trickle/"
    run_dir: Path
    shards: list[Shard]
    proxy_pid: int

    def path(self, rest: str) -> str:
        return self.base + rest

    def output(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.read().decode()

    async def owner(self, channel: str) -> str:
        """The one shard that holds ``channel``, asked of every backend directly."""
        owners = []
        for shard in self.shards:
            reply = await call(shard.url, "GET", self.path(f"{channel}/next"))
            if reply.status == 200:
                owners.append(shard.name)
        assert len(owners) == 1, (channel, owners)
        return owners[0]

    async def status(self, shard: str) -> dict[str, Any]:
        """The ``/_status`` of one backend, through the proxy's per-shard route."""
        reply = await call(self.url, "GET", f"/_shard/{shard}/_status")
        assert reply.status == 200, reply
        status: dict[str, Any] = json.loads(reply.body)
        return status

    async def wait_attached(
        self, shard: str, channel: str, *, publishers: int = 0, subscribers: int = 0
    ) -> None:
        """Poll until the backend sees that many POSTs and GETs attached to ``channel``."""
        while True:
            listing = {c["channel"]: c for c in (await self.status(shard))["channels"]}
            entry = listing.get(channel)
            if (
                entry is not None
                and entry["publishers"] >= publishers
                and entry["subscribers"] >= subscribers
            ):
                return
            await trio.sleep(POLL_INTERVAL)


def launch(tmp_path: Path, args: Sequence[str], base: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``trickle-trio cluster`` on a free port, keeping its files in ``tmp_path``."""
    port = free_port()
    command = [str(BIN / "trickle-trio"), "cluster", "--port", str(port), "--base-path", base]
    command += ["--run-dir", str(tmp_path / f"run-{port}"), *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # should pytest itself be killed
    )
    return process, port


#: HAProxy binds the port the test picked a moment later; something else may take it in
#: between (the machine is shared): then the cluster is started again on another port.
START_ATTEMPTS = 3


async def start_cluster(tmp_path: Path, *args: str, base: str = "/") -> Cluster:
    for attempt in range(1, START_ATTEMPTS + 1):
        started = await start_once(tmp_path, args, base)
        if isinstance(started, Cluster):
            return started
        if "cannot bind socket" not in started or attempt == START_ATTEMPTS:
            raise AssertionError(started)
    raise AssertionError("unreachable")  # pragma: no cover


async def start_once(tmp_path: Path, args: Sequence[str], base: str) -> Cluster | str:
    """The running cluster, or what it printed before it exited."""
    process, port = launch(tmp_path, args, base)
    state_file = tmp_path / f"run-{port}" / "cluster.json"
    try:
        # cluster.json is written once HAProxy routes to every shard.
        await until(lambda: state_file.exists() or process.poll() is not None)
        if process.poll() is None:
            state = json.loads(state_file.read_text())
            shards = [Shard(s["name"], s["url"], s["pid"]) for s in state["shards"]]
            url = f"http://127.0.0.1:{port}"
            return Cluster(process, url, base, state_file.parent, shards, state["proxy_pid"])
    except BaseException:
        discard(process)
        raise
    return discard(process)


def discard(process: subprocess.Popen[bytes]) -> str:
    """Stop a cluster that failed to start (its children get SIGTERM from the kernel,
    PR_SET_PDEATHSIG); what it printed."""
    process.kill()
    process.wait()
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    process.stdout.close()
    return output


def kill_all(cluster: Cluster) -> None:
    """Teardown: nothing the cluster started may outlive the test."""
    for pid in [cluster.process.pid, cluster.proxy_pid, *(s.pid for s in cluster.shards)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.process.wait()
    assert cluster.process.stdout is not None
    cluster.process.stdout.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Three autocreating backends behind HAProxy, base path ``/``."""
    with trio.fail_after(LIMIT):
        running = await start_cluster(tmp_path, "--workers", "3")
    try:
        yield running
    finally:
        kill_all(running)


def trickle_view(reply: Reply) -> tuple[int, dict[str, str], bytes]:
    """What a trickle client looks at: status, Lp-Trickle-* and Content-Type, body."""
    headers = {
        k: v for k, v in reply.headers.items() if k.startswith("lp-trickle-") or k == "content-type"
    }
    return reply.status, headers, reply.body


async def request(
    url: str, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    conn = await connect(url)
    try:
        await conn.start(method, path, [("Content-Length", str(len(body))), *headers])
        if body:
            await conn.send(body)
        await conn.end()
        return await conn.response()
    finally:
        await conn.aclose()


async def get_waiting(url: str, path: str) -> Conn:
    conn = await connect(url)
    await conn.start("GET", path)
    await conn.end()
    return conn


async def protocol_transcript(
    url: str, base: str, channel: str, wait_attached: Any
) -> list[tuple[str, Any]]:
    """Every route of the protocol on ``channel`` at ``url``; what a client saw, in order.

    ``wait_attached(channel, publishers=, subscribers=)`` polls the backend that holds it.
    Streaming is checked on the way: a subscriber gets each chunk before the publisher
    sends the next one, and early answers come while the request body is still open.
    """
    seen: list[tuple[str, Any]] = []
    ch = f"{base}{channel}"

    def note(label: str, reply: Reply) -> None:
        seen.append((label, trickle_view(reply)))

    note("create", await request(url, "POST", ch, headers=[("Expect-Content", "video/mp2t")]))
    note("next empty", await request(url, "GET", f"{ch}/next"))

    # A subscriber waits on seq 0, then a publisher streams it chunk by chunk.
    subscriber = await get_waiting(url, f"{ch}/0")
    await wait_attached(channel, subscribers=1)
    publisher = await connect(url)
    await publisher.start("POST", f"{ch}/0")
    await publisher.send(b"one")
    head = await subscriber.head()
    assert await subscriber.chunk() == b"one"  # before "two" exists: nothing buffered
    await publisher.send(b"two")
    assert await subscriber.chunk() == b"two"
    await publisher.end()
    note("publish 0", await publisher.response())
    assert await subscriber.chunk() is None
    seen.append(("subscribe 0", (head.status, trickle_view(head)[1], b"".join(head.chunks))))
    for conn in (subscriber, publisher):
        await conn.aclose()

    for n in range(1, 7):
        note(f"publish -1 #{n}", await request(url, "POST", f"{ch}/-1", b"seg%d" % n))
    note("evicted: 470", await request(url, "GET", f"{ch}/0"))
    note("current -2", await request(url, "GET", f"{ch}/-2"))
    note("older -3", await request(url, "GET", f"{ch}/-3"))
    note("next", await request(url, "GET", f"{ch}/next"))
    note("close missing seq", await request(url, "DELETE", f"{ch}/99"))
    note("bad seq", await request(url, "GET", f"{ch}/abc"))

    # A preconnected POST and a waiting GET on seq 7; DELETE of that seq releases both.
    preconnect = await connect(url)
    await preconnect.start("POST", f"{ch}/7")
    await wait_attached(channel, publishers=1)
    waiting = await get_waiting(url, f"{ch}/7")
    await wait_attached(channel, publishers=1, subscribers=1)
    note("close seq 7", await request(url, "DELETE", f"{ch}/7"))
    note("released 7", await preconnect.head())
    assert preconnect.h11.our_state is h11.SEND_BODY  # the answer came before our body ended
    # Its Latest is 7 or 8 whether or not the released POST has moved nextWrite yet: a
    # race inside one server process (both wake on the same close), so left out here.
    status, headers, body = trickle_view(await waiting.response())
    headers.pop("lp-trickle-latest", None)
    seen.append(("waiting 7", (status, headers, body)))
    for conn in (preconnect, waiting):
        await conn.aclose()

    # End of stream: DELETE of the channel ends a waiting subscriber and an idle preconnect.
    waiting = await get_waiting(url, f"{ch}/8")
    await wait_attached(channel, subscribers=1)
    preconnect = await connect(url)
    await preconnect.start("POST", f"{ch}/8")
    await wait_attached(channel, publishers=1, subscribers=1)
    note("delete", await request(url, "DELETE", ch))
    note("end of stream", await waiting.response())
    note("released 8", await preconnect.head())
    assert preconnect.h11.our_state is h11.SEND_BODY
    for conn in (preconnect, waiting):
        await conn.aclose()
    note("next after delete: 404", await request(url, "GET", f"{ch}/next"))
    note("delete again: 400", await request(url, "DELETE", ch))
    return seen


@needs_haproxy
async def test_channels_spread_over_shards_and_stay_there(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        names = [f"cam{i}" for i in range(24)]
        for name in names:
            reply = await request(cluster.url, "POST", f"/{name}/0", name.encode())
            assert reply.status == 200
        owners = {name: await cluster.owner(name) for name in names}
        assert set(owners.values()) == {"b1", "b2", "b3"}  # every shard holds some
        for name in names:  # each later request reaches the same process
            assert (await request(cluster.url, "GET", f"/{name}/0")).body == name.encode()
            per_shard = await call(cluster.url, "GET", f"/_shard/{owners[name]}/{name}/next")
            assert per_shard.status == 200
        listed = {
            c["channel"] for s in cluster.shards for c in (await cluster.status(s.name))["channels"]
        }
        assert listed == set(names)  # and nowhere else


@needs_haproxy
async def test_protocol_through_the_proxy_is_the_protocol_of_one_process(
    cluster: Cluster,
) -> None:
    holders: dict[str, str] = {}

    async def attached(shard: str | None, channel: str, **counts: int) -> None:
        if shard is None:
            shard = holders.setdefault(channel, await cluster.owner(channel))
        await cluster.wait_attached(shard, channel, **counts)

    with trio.fail_after(LIMIT):
        # Straight to one backend: the reference transcript.
        direct = cluster.shards[0]
        expected = await protocol_transcript(
            direct.url, "/", "solo", lambda ch, **kw: attached(direct.name, ch, **kw)
        )
        evicted = (470, {"lp-trickle-latest": "7", "lp-trickle-seq": "0"}, b"Entry not found")
        assert ("evicted: 470", evicted) in [
            (label, (s, {k: v for k, v in h.items() if k != "content-type"}, b))
            for label, (s, h, b) in expected
        ]
        # Through the proxy, on channels that the hash puts on different backends.
        for name in ("alpha", "charlie", "echo"):
            seen = await protocol_transcript(
                cluster.url, "/", name, lambda ch, **kw: attached(None, ch, **kw)
            )
            assert seen == expected
        assert set(holders.values()) == {"b1", "b2", "b3"}, holders


@needs_haproxy
async def test_idle_preconnect_gets_its_early_404_at_once(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        running = await start_cluster(
            tmp_path, "--workers", "2", "--no-autocreate", base="/trickle/"
        )
    try:
        with trio.fail_after(LIMIT):
            for name in ("nope", "none", "nada", "zilch"):
                conn = await connect(running.url)
                await conn.start("POST", f"/trickle/{name}/0")  # headers only, body left open
                with trio.fail_after(5):
                    reply = await conn.response()
                assert conn.h11.our_state is h11.SEND_BODY  # answered before our body ended
                assert (reply.status, reply.body) == (404, b"Stream not found\n")
                await conn.aclose()
    finally:
        kill_all(running)


@needs_haproxy
async def test_proxy_answers_for_itself_and_routes_per_shard(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        running = await start_cluster(
            tmp_path, "--workers", "2", "--no-autocreate", "--changefeed", base="/trickle/"
        )
    try:
        with trio.fail_after(LIMIT):
            for prefix in ("/", "/trickle/"):  # at the root and under the base path
                assert (await call(running.url, "GET", f"{prefix}healthz")).body == b"ok\n"
                assert (await call(running.url, "GET", f"{prefix}readyz")).body == b"ready\n"
                assert (await call(running.url, "GET", f"{prefix}_status")).body == (
                    b"Per shard: /_shard/<name>/_status\n"
                )
                assert (await call(running.url, "GET", f"{prefix}_/watch/")).body == (
                    b"Per shard: /_shard/<name>/_/watch/\n"
                )
            for shard in running.shards:  # each shard's own, and its reserved names
                own = await call(running.url, "GET", f"/_shard/{shard.name}/trickle/readyz")
                assert (own.status, own.body) == (200, b"ready\n")
            # The hashed changefeed would be one shard's: refused, with the way to each.
            refused = await call(running.url, "GET", "/trickle/_changes/0")
            assert refused.status == 404
            assert b"per shard, at /_shard/<name>/trickle/_changes" in refused.body
            for shard in running.shards:
                feed = await call(running.url, "GET", f"/_shard/{shard.name}/trickle/_changes/0")
                assert (feed.status, json.loads(feed.body)) == (200, {"added": ["_changes"]})
                metrics = await call(running.url, "GET", f"/_shard/{shard.name}/metrics")
                assert metrics.status == 200
                page = await call(running.url, "GET", f"/_shard/{shard.name}/_/watch/")
                assert (page.status, page.body[:15]) == (200, b"<!doctype html>")
            assert (await call(running.url, "GET", "/metrics")).body == (
                b"Per shard: /_shard/<name>/metrics\n"
            )
            unknown = await call(running.url, "GET", "/_shard/b9/healthz")
            assert (unknown.status, unknown.body) == (404, b"No such shard\n")
    finally:
        kill_all(running)


@needs_haproxy
async def test_losing_one_shard_affects_only_its_channels(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        cluster = await start_cluster(tmp_path, "--workers", "3", "--no-restart")
    try:
        await lose_one_shard(cluster)
    finally:
        kill_all(cluster)


async def lose_one_shard(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        assert (await call(cluster.url, "GET", "/readyz")).body == b"ready\n"
        for name in ("alpha", "charlie", "echo"):
            assert (await request(cluster.url, "POST", f"/{name}")).status == 200
        assert [await cluster.owner(n) for n in ("alpha", "charlie", "echo")] == ["b2", "b1", "b3"]
        victim = next(shard for shard in cluster.shards if shard.name == "b2")

        # On the victim: an idle preconnect and a waiting subscriber.
        preconnect = await connect(cluster.url)
        await preconnect.start("POST", "/alpha/0")
        waiting = await get_waiting(cluster.url, "/alpha/1")
        await cluster.wait_attached("b2", "alpha", publishers=1, subscribers=1)
        # On a survivor: a segment half written and half read.
        publisher = await connect(cluster.url)
        await publisher.start("POST", "/charlie/0")
        await publisher.send(b"first")
        subscriber = await get_waiting(cluster.url, "/charlie/0")
        assert (await subscriber.head()).status == 200
        assert await subscriber.chunk() == b"first"

        os.kill(victim.pid, signal.SIGKILL)

        # The victim's clients get the proxy's 502 at once (no headers had gone out)...
        for conn in (preconnect, waiting):
            with trio.fail_after(5):
                reply = await conn.response()
            assert (reply.status, reply.body) == (502, b"Shard failed\n")
        # ...and once its listening socket is gone too (a moment later: until then a
        # connection may still be accepted, then reset: 502), its channels get a 503
        # until it is back (after HAProxy's retries).
        await until(lambda: gone(victim.pid))
        reply = await request(cluster.url, "GET", "/alpha/next")
        assert (reply.status, reply.body) == (503, b"Shard unavailable\n")
        assert (await call(cluster.url, "GET", "/_shard/b2/healthz")).status == 503
        degraded = await call(cluster.url, "GET", "/readyz")  # the proxy says so
        assert (degraded.status, degraded.body) == (503, b"degraded: b2 down\n")

        # The survivor's stream goes on as if nothing happened, and so do new ones.
        await publisher.send(b"second")
        assert await subscriber.chunk() == b"second"
        await publisher.end()
        assert (await publisher.response()).headers["lp-trickle-seq"] == "0"
        assert await subscriber.chunk() is None
        assert (await request(cluster.url, "POST", "/echo/0", b"still here")).status == 200
        assert (await request(cluster.url, "GET", "/echo/0")).body == b"still here"
        for conn in (preconnect, waiting, publisher, subscriber):
            await conn.aclose()

        assert cluster.process.poll() is None  # the cluster carries on without b2
        cluster.process.send_signal(signal.SIGTERM)
        await until(lambda: cluster.process.poll() is not None)
    assert cluster.process.returncode == 0
    output = cluster.output()
    assert "shard b2 exited status=-9" in output
    assert "not restarted: restart off" in output


def cluster_state(cluster: Cluster) -> dict[str, Any]:
    """The cluster's ``cluster.json`` as it is now."""
    state: dict[str, Any] = json.loads((cluster.run_dir / "cluster.json").read_text())
    return state


@needs_haproxy
async def test_a_dead_backend_is_restarted_with_backoff_and_its_channels_come_back(
    tmp_path: Path,
) -> None:
    # Every backend reads this file as it starts: spoiled, it makes each restart of the
    # killed backend fail (exit status 2) until it is mended, so "down" lasts as long as
    # the test needs, whatever the machine's speed.
    settings = tmp_path / "backend.toml"
    settings.write_text("idle_timeout = 300\n")
    args = ["--workers", "3", "--config", str(settings)]
    args += ["--restart-delay", "0.05", "--restart-delay-max", "0.2"]
    with trio.fail_after(LIMIT):
        cluster = await start_cluster(tmp_path, *args)
    try:
        with trio.fail_after(LIMIT):
            assert (await request(cluster.url, "POST", "/alpha/0", b"before")).status == 200
            assert await cluster.owner("alpha") == "b2"
            victim = next(shard for shard in cluster.shards if shard.name == "b2")
            settings.write_text("idle_timeout = [not toml\n")
            os.kill(victim.pid, signal.SIGKILL)

            # Down, and the proxy's readiness says which shard, while restarts fail.
            await until(lambda: cluster_state(cluster)["shards"][1]["restarts"] >= 2)
            assert cluster_state(cluster)["shards"][1]["up"] is False
            degraded = await call(cluster.url, "GET", "/readyz")
            assert (degraded.status, degraded.body) == (503, b"degraded: b2 down\n")
            assert (await call(cluster.url, "GET", "/healthz")).status == 200  # still alive

            settings.write_text("idle_timeout = 300\n")
            while (await call(cluster.url, "GET", "/readyz")).status != 200:  # ruff: ignore[async-busy-wait]
                await trio.sleep(POLL_INTERVAL)
            entry = cluster_state(cluster)["shards"][1]
            assert entry["up"] is True
            assert entry["pid"] != victim.pid
            # Its share of channel names works again (a fresh process: no old state).
            assert (await request(cluster.url, "GET", "/alpha/next")).status == 404
            assert (await request(cluster.url, "POST", "/alpha/0", b"after")).status == 200
            assert (await request(cluster.url, "GET", "/alpha/0")).body == b"after"
            assert await cluster.owner("alpha") == "b2"

            cluster.process.send_signal(signal.SIGTERM)
            await until(lambda: cluster.process.poll() is not None)
        assert cluster.process.returncode == 0
        with pytest.raises(ProcessLookupError):
            os.kill(entry["pid"], 0)  # the restarted backend was stopped too
        output = cluster.output()
        assert "shard b2 exited status=-9" in output
        assert "restarting in 0.05s" in output
        assert "shard b2 restart 1 failed status=2: trickle-trio:" in output
        assert f"shard b2 back pid={entry['pid']}" in output
    finally:
        kill_all(cluster)


@needs_haproxy
async def test_sigterm_drains_every_shard_through_the_proxy_then_stops(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        for name in ("alpha", "charlie", "echo"):
            assert (await request(cluster.url, "POST", f"/{name}")).status == 200
        # A segment half written and half read (b1), a waiting subscriber (b3), an idle
        # preconnect (b2): one of each on a different shard.
        publisher = await connect(cluster.url)
        await publisher.start("POST", "/charlie/0")
        await publisher.send(b"half")
        reader = await get_waiting(cluster.url, "/charlie/0")
        assert (await reader.head()).status == 200
        assert await reader.chunk() == b"half"
        waiting = await get_waiting(cluster.url, "/echo/0")
        preconnect = await connect(cluster.url)
        await preconnect.start("POST", "/alpha/0")
        await cluster.wait_attached("b3", "echo", subscribers=1)
        await cluster.wait_attached("b2", "alpha", publishers=1)

        cluster.process.send_signal(signal.SIGTERM)

        assert await reader.chunk() is None  # a clean end of the body, not a cut stream
        answer = await publisher.response()
        assert answer.headers["lp-trickle-closed"] == "terminated"
        ended = await waiting.response()
        assert (ended.status, ended.headers["lp-trickle-closed"]) == (200, "terminated")
        released = await preconnect.head()
        assert (released.status, released.headers["lp-trickle-closed"]) == (200, "terminated")
        assert preconnect.h11.our_state is h11.SEND_BODY
        for conn in (publisher, reader, waiting, preconnect):
            await conn.aclose()
        await until(lambda: cluster.process.poll() is not None)
        with pytest.raises(OSError, match="all attempts to connect"):
            await connect(cluster.url)  # the proxy is gone too
    assert cluster.process.returncode == 0
    for pid in [cluster.proxy_pid, *(shard.pid for shard in cluster.shards)]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    output = cluster.output()
    assert "cluster stopping signal=SIGTERM" in output
    assert "cluster stopped" in output


@needs_haproxy
async def test_a_subscriber_that_hangs_up_leaves_its_backend_too(cluster: Cluster) -> None:
    # (The reference subscriber drops a preconnect that got no headers for 20 s.)
    with trio.fail_after(LIMIT):
        assert (await request(cluster.url, "POST", "/alpha")).status == 200
        waiting = [await get_waiting(cluster.url, "/alpha/0") for _ in range(3)]
        await cluster.wait_attached("b2", "alpha", subscribers=3)
        for conn in waiting:
            await conn.aclose()

        async def subscribers() -> int:
            listing = {c["channel"]: c for c in (await cluster.status("b2"))["channels"]}
            count: int = listing["alpha"]["subscribers"]
            return count

        # HAProxy (option abortonclose) ends them on the backend: poll its state.
        while await subscribers():  # ruff: ignore[async-busy-wait] - another process
            await trio.sleep(POLL_INTERVAL)


def backend_sockets(url: str) -> set[tuple[int, int]]:
    """The established TCP connections into the backend at ``url`` (Linux /proc)."""
    port = int(url.rpartition(":")[2])
    found = set()
    with open("/proc/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            local, remote, state = row.split()[1:4]
            if state == "01" and int(local.split(":")[1], 16) == port:
                found.add((port, int(remote.split(":")[1], 16)))
    return found


@needs_haproxy
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
async def test_requests_of_one_client_connection_reuse_one_backend_connection(
    cluster: Cluster,
) -> None:
    with trio.fail_after(LIMIT):
        assert (await request(cluster.url, "POST", "/alpha/0", b"x")).status == 200
        owner = await cluster.owner("alpha")
        backend = next(shard for shard in cluster.shards if shard.name == owner)
        conn = await connect(cluster.url)
        used = []
        for _ in range(5):
            await conn.start("GET", "/alpha/next")
            await conn.end()
            assert (await conn.response()).body == b"1"
            used.append(backend_sockets(backend.url))
            conn.h11.start_next_cycle()  # keep-alive: the next request on the same socket
            del conn.reply
        await conn.aclose()
    # HTTP/1.1 keep-alive from HAProxy to the backend: the same TCP connection each time.
    # (The first sample may still show the connection of an earlier request closing.)
    assert all(sockets <= used[0] for sockets in used), used  # no new backend connection
    assert set.intersection(*used), used  # and one carried every request


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return True


@needs_haproxy
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_nothing_outlives_a_killed_cluster(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        running = await start_cluster(tmp_path, "--workers", "2")
        try:
            running.process.kill()  # no chance to stop anything in order
            children = [running.proxy_pid, *(shard.pid for shard in running.shards)]
            await until(lambda: all(gone(pid) for pid in children))
            with pytest.raises(OSError, match="all attempts to connect"):
                await connect(running.url)
        finally:
            kill_all(running)


def test_print_config_for_remote_backends(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "trickle-trio"),
            "cluster",
            "--print-config",
            "--backend",
            "10.0.0.5:2939",
            "--backend",
            "3=[fd00::6]:2939",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--base-path",
            "/trickle/",
            "--stream-timeout",
            "7200",
        ],
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=True,
    )
    config = result.stdout
    for line in (
        "bind 0.0.0.0:8080",
        "balance hash path,url_dec,field(3,/)",
        "hash-type consistent",
        "server b1 10.0.0.5:2939 id 1",
        "server b3 [fd00::6]:2939 id 3",
        "use-server b3 if { var(txn.shard) -m str b3 }",
        "timeout client 7200s",
        "timeout server 7200s",
        "option http-no-delay",
        "option abortonclose",
        # No supervisor beside remote backends: the proxy answers /readyz itself.
        'string "ready\\n" if { path /readyz /trickle/readyz }',
        "if { path /healthz /trickle/healthz }",
    ):
        assert line in config, line
    assert "backend readiness" not in config
    assert "redispatch" not in config.replace("No `option redispatch`", "")
    assert [channel_field(base) for base in ("/", "/trickle/", "/a/b/")] == [2, 3, 4]
    if HAPROXY is not None:
        path = tmp_path / "haproxy.cfg"
        path.write_text(config)
        check = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, timeout=LIMIT)
        assert check.returncode == 0, check.stderr


def test_cluster_without_haproxy_says_so_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "trickle-trio"), "cluster", "--haproxy", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("trickle-trio cluster: haproxy not found: install it")
    )


@needs_haproxy
def test_a_taken_port_fails_fast_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # accepts connections and never answers them
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "trickle-trio"), "cluster", "--workers", "1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=LIMIT,
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trickle-trio cluster: haproxy exited with status 1 while starting")
    assert "cannot bind socket" in last


async def test_a_backend_whose_port_was_taken_meanwhile_moves_to_another(tmp_path: Path) -> None:
    # The cluster picks free ports and its backends bind them a moment later; something
    # else may take one in between (here: on purpose, before the start).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        shards = [ClusterShard(1, "127.0.0.1", port)]
        backends: list[Any] = []
        try:
            with trio.fail_after(LIMIT):
                moved = await _start_backends(ClusterOptions(), shards, tmp_path, backends)
            assert moved
            assert shards[0].port != port
            assert (await call(shards[0].url, "GET", "/healthz")).status == 200
            assert len(backends) == 1
            assert backends[0].running
        finally:
            for child in backends:
                child.send_signal(signal.SIGTERM)
                with trio.fail_after(LIMIT):
                    await child.wait()
    log = (tmp_path / "b1.log").read_text()
    assert f"cannot bind 127.0.0.1:{port}: address already in use" in log
