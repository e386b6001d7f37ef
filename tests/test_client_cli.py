"""``trickle-trio publish | subscribe | next | delete`` against our server.

Most tests run the commands in-process (``run_client_command`` with pipes and buffers
for stdio); the last ones run real processes: a live MPEG-TS stream (from ffmpeg when
it is installed, else synthetic packets) piped through ``publish`` and ``subscribe``
byte for byte, and Ctrl-C.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trickle_trio import Settings, open_server
from trickle_trio.cli import build_parser
from trickle_trio.client import Transport, open_publisher
from trickle_trio.client.cli import run_client_command
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name, wait_until

PACKET = 188


def ts_packets(count: int, seed: int = 0) -> bytes:
    """Synthetic MPEG-TS: 188-byte packets, sync byte 0x47, every one different."""
    packets = []
    for i in range(count):
        head = bytes([0x47, (i >> 8) & 0x1F, i & 0xFF, 0x10 | (i & 0x0F)])
        body = bytes((seed + i * 7 + j) & 0xFF for j in range(PACKET - 4))
        packets.append(head + body)
    return b"".join(packets)


class Pipe:
    """An OS pipe: the command reads ``reader``; the test writes and closes."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb")
        self._writer = trio.lowlevel.FdStream(write_fd)

    async def write(self, data: bytes) -> None:
        await self._writer.send_all(data)

    async def close(self) -> None:
        await self._writer.aclose()


class Run:
    """One command running in-process; ``code`` once it has returned."""

    def __init__(self, *argv: str, stdin: Any = None) -> None:
        self.args = build_parser().parse_args(list(argv))
        self.stdin = stdin if stdin is not None else io.BytesIO(b"")
        self.stdout = io.BytesIO()
        self.stderr = io.StringIO()
        self.code: int | None = None
        self.done = trio.Event()

    async def run(self) -> int:
        self.code = await run_client_command(
            self.args,
            stdin=self.stdin,
            stdout=self.stdout,
            stderr=self.stderr,
            handle_signals=False,
        )
        self.done.set()
        return self.code

    @property
    def output(self) -> bytes:
        return self.stdout.getvalue()


async def run(*argv: str, stdin: bytes = b"") -> Run:
    command = Run(*argv, stdin=io.BytesIO(stdin))
    await command.run()
    return command


async def test_publish_and_subscribe_pipe_a_live_stream_byte_for_byte(
    trickle_server: RunningServer, tmp_path: Path
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    data = ts_packets(2000)  # 376 000 bytes
    pipe = Pipe()
    publish = Run("publish", url, "--interval", "0.05", stdin=pipe.reader)
    subscribe = Run("subscribe", url, "--start", "0", "--wait")  # started first
    files = Run("subscribe", url, "--start", "0", "--out-dir", str(tmp_path))
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe.run)
            nursery.start_soon(publish.run)
            await wait_until(lambda: name in trickle_server.registry)  # publish created it
            nursery.start_soon(files.run)
            channel = trickle_server.registry.get(name)
            assert channel is not None
            piece = len(data) // 4
            for seq, start in enumerate(range(0, len(data), piece)):
                await pipe.write(data[start : start + piece])
                # Live: the interval ends this segment before the next bytes come.
                await wait_until(lambda seq=seq: (s := channel.window.get(seq)) and s.closed)
            # Every byte is through before the end of input ends the channel.
            await wait_until(lambda: len(subscribe.output) == len(data))
            await pipe.close()
    pipe.reader.close()
    assert (publish.code, subscribe.code, files.code) == (0, 0, 0)
    assert subscribe.output == data
    assert publish.stderr.getvalue() == subscribe.stderr.getvalue() == ""
    segments = finished_files(tmp_path)
    assert len(segments) == 4
    assert all(path.suffix == ".ts" for path in segments)
    assert all(path.stat().st_size % PACKET == 0 for path in segments)  # cut on packets
    assert b"".join(path.read_bytes() for path in segments) == data
    assert name not in trickle_server.registry  # publish created it, so it deleted it


def finished_files(directory: Path) -> list[Path]:
    """The segment files ``subscribe --out-dir`` has completed, in seq order."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.endswith(".part"))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (["--lines"], [b'{"n": 1}\n', b'{"n": 2}\n', b'{"n": 3}\n']),
        (["--segment-bytes", "10"], [b'{"n": 1}\n{', b'"n": 2}\n{"', b'n": 3}\n']),
    ],
)
async def test_lines_and_byte_counts(
    trickle_server: RunningServer, tmp_path: Path, mode: list[str], expected: list[bytes]
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        async with Transport() as transport:
            mime = "application/jsonl" if "--lines" in mode else "video/mp2t"
            # It exists: publish leaves it open (and the MIME type is the channel's).
            await transport.request("POST", url, [("Expect-Content", mime)])
        async with trio.open_nursery() as nursery:
            subscribe = Run("subscribe", url, "--start", "0", "--out-dir", str(tmp_path))
            nursery.start_soon(subscribe.run)
            publish = await run("publish", url, *mode, stdin=b"".join(expected))
            assert publish.code == 0
            await wait_until(lambda: len(finished_files(tmp_path)) >= len(expected))
            await trickle_server.registry.delete(name)
    assert subscribe.code == 0
    files = finished_files(tmp_path)
    assert [p.read_bytes() for p in files[: len(expected)]] == expected
    assert files[0].name == ("0000000000.jsonl" if "--lines" in mode else "0000000000.ts")


async def test_next_and_delete(trickle_server: RunningServer) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    with trio.fail_after(STEP):
        async with open_publisher(url, delete_on_close=False) as pub:
            for i in range(3):
                await pub.write(b"%d" % i)
        # Closing without DELETE let the idle preconnect (seq 3) go: an empty segment.
        assert (await run("next", url)).output == b"4\n"
        assert (await run("delete", url, "--seq", "3")).code == 0
        gone = await run("delete", url, "--seq", "9")
        assert (gone.code, gone.stderr.getvalue()) == (
            1,
            f"trickle-trio: segment 9 is not in the window of {url}\n",
        )
        assert (await run("delete", url)).code == 0
        assert name not in trickle_server.registry
        for argv in (("delete", url), ("next", url), ("subscribe", url)):
            command = await run(*argv)
            assert (command.code, command.stderr.getvalue()) == (
                1,
                f"trickle-trio: channel not found: {url}\n",
            )


async def test_one_line_errors() -> None:
    with trio.fail_after(STEP):
        async with open_server(Settings(host="127.0.0.1", port=0, autocreate=False)) as server:
            url = f"{server.url}/{fresh_name()}"
            publish = await run("publish", url, stdin=b"data")
            assert (publish.code, publish.stderr.getvalue()) == (
                1,
                f"trickle-trio: channel not found: {url}\n",
            )
            server.registry.create("seven", "")
            async with open_publisher(f"{server.url}/seven", delete_on_close=False) as pub:
                for i in range(7):
                    await pub.write(b"%d" % i)
            stale = await run(
                "subscribe", f"{server.url}/seven", "--start", "0", "--on-gap", "fail"
            )
            assert stale.code == 1
            assert stale.stderr.getvalue() == (
                "trickle-trio: segment 0 not found (latest 8)"
                " (use --on-gap jump to follow the live edge)\n"
            )
        bad = await run("subscribe", "ftp://127.0.0.1/ch")
        assert (bad.code, bad.stderr.getvalue()) == (
            2,
            "trickle-trio: not an http(s) URL: 'ftp://127.0.0.1/ch'\n",
        )
        unreachable = await run("next", server.url + "/x")  # the server has stopped
        assert unreachable.code == 3  # the server went away
        assert unreachable.stderr.getvalue().count("\n") == 1
        assert unreachable.stderr.getvalue().startswith("trickle-trio: http://127.0.0.1:")


# -- real processes --------------------------------------------------------------------------------

COMMAND = [sys.executable, "-m", "trickle_trio"]


@asynccontextmanager
async def process(*argv: str, **kwargs: Any) -> AsyncIterator[trio.Process]:
    proc = await trio.lowlevel.open_process([*COMMAND, *argv], **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()


def without_tables(data: bytes) -> bytes:
    packets = [data[i : i + PACKET] for i in range(0, len(data), PACKET)]
    return b"".join(p for p in packets if ((p[1] & 0x1F) << 8 | p[2]) not in (0, 0x1000))


async def read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some(65536):
        into += chunk


async def live_ts_source(seconds: float) -> AsyncIterator[bytes]:
    """A live MPEG-TS stream: ffmpeg's test pattern in real time if ffmpeg is there,
    else synthetic packets at a similar pace."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        for i in range(int(seconds * 20)):
            yield ts_packets(100, seed=i)
            await trio.sleep(0.05)  # pacing a live source, not synchronisation
        return
    argv = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=320x240:rate=25",
        "-f", "lavfi", "-i", f"sine=duration={seconds}",
        "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", "-",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        while chunk := await proc.stdout.receive_some(65536):
            yield chunk
    finally:
        await proc.wait()
        await proc.stdout.aclose()


async def test_a_live_mpeg_ts_stream_through_real_processes(
    trickle_server: RunningServer,
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    sent = bytearray()
    received = bytearray()
    with trio.fail_after(30):
        async with (
            process("publish", url, "--interval", "0.5", stdin=subprocess.PIPE) as publisher,
            trio.open_nursery() as nursery,
        ):
            assert publisher.stdin is not None
            await wait_until(lambda: name in trickle_server.registry)
            async with process("subscribe", url, "--start", "0", stdout=subprocess.PIPE) as sub:
                assert sub.stdout is not None
                nursery.start_soon(read_all, sub.stdout, received)
                async for chunk in live_ts_source(2.0):
                    sent += chunk
                    await publisher.stdin.send_all(chunk)
                await wait_until(lambda: without_tables(received) == without_tables(sent))
                await publisher.stdin.aclose()  # end of input: the channel is deleted
                assert await sub.wait() == 0
            assert await publisher.wait() == 0
    assert len(sent) > 100_000
    # Every byte through, in order; publish only repeated the PAT and PMT (PIDs 0 and
    # ffmpeg's 0x1000) at the start of each segment.
    assert without_tables(bytes(received)) == without_tables(bytes(sent))
    assert sent[0] == 0x47  # MPEG-TS sync byte


@pytest.mark.parametrize("created", [True, False])
async def test_ctrl_c_closes_the_channel_politely_if_publish_created_it(
    trickle_server: RunningServer, created: bool
) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    if not created:
        trickle_server.registry.create(name, "video/mp2t")
    with trio.fail_after(STEP):
        async with process(
            "publish", url, stdin=subprocess.PIPE, stderr=subprocess.PIPE
        ) as publisher:
            assert publisher.stdin is not None
            assert publisher.stderr is not None
            channel = None
            await wait_until(lambda: name in trickle_server.registry)
            channel = trickle_server.registry.get(name)
            assert channel is not None
            await publisher.stdin.send_all(ts_packets(10))
            await wait_until(lambda: channel.next_write >= 1)  # a segment is under way
            publisher.send_signal(signal.SIGINT)
            assert await publisher.wait() == 130
            errors = bytearray()
            await read_all(publisher.stderr, errors)
    assert errors == b""
    if created:
        assert channel.closed
        assert name not in trickle_server.registry
    else:
        assert not channel.closed  # not ours: left open
        segment = channel.window.get(0)
        assert segment is not None
        assert segment.closed
        assert segment.size == 10 * PACKET  # the segment under way was ended, not lost


async def test_bearer_tokens(tmp_path: Path) -> None:
    token = "publish-token-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    settings = Settings(host="127.0.0.1", port=0, autocreate=True, publish_token=token)
    with trio.fail_after(STEP):
        async with open_server(settings) as server:
            url = f"{server.url}/{fresh_name()}"
            refused = await run("publish", url, stdin=b"x")
            assert (refused.code, refused.stderr.getvalue()) == (
                1,
                f"trickle-trio: {url}: HTTP 401: Unauthorized"
                " (give a token with --token-file FILE or TRICKLE_TOKEN)\n",
            )
            published = await run("publish", url, "--token-file", str(token_file), stdin=b"x")
            assert (published.code, published.stderr.getvalue()) == (0, "")
            missing = await run("next", url, "--token-file", str(tmp_path / "nope"))
            assert missing.code == 1
            assert missing.stderr.getvalue().startswith("trickle-trio: cannot read token file")
