"""The client commands against real servers: the connection options on every command
(TLS with trustme, bearer tokens), what each exit code means, ``--reconnect`` across a
server restart, ``--stats``, and real ffmpeg output cut into segments that each decode
on their own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from trickle_trio import LocalPublisher, Settings, open_server
from trickle_trio.server import RunningServer

from .client_support import STEP, fresh_name, wait_until
from .test_client_cli import Pipe, Run, finished_files, run

PUB = "publish-token-0123456789"
SUB = "subscribe-token-0123456789"
COMMANDS = ["publish", "subscribe", "next", "delete", "status"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_settings(ca: trustme.CA, tmp_path: Path) -> Settings:
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    return Settings(
        host="127.0.0.1",
        port=0,
        autocreate=True,
        certfile=str(pem),
        keyfile=str(pem),
        publish_token=PUB,
        subscribe_token=SUB,
    )


def prepare(server: RunningServer, command: str) -> tuple[list[str], bytes]:
    """The command's arguments (a fresh channel where it needs one) and its stdin."""
    name = fresh_name()
    url = f"{server.url}/{name}"
    if command == "publish":
        return [url], b"over TLS"
    pub = LocalPublisher(server.registry, name, "text/plain")
    pub.create_channel()
    pub.write_nowait(b"hello")
    if command == "subscribe":
        return [url, "--start", "0", "--count", "1"], b""
    if command == "status":
        return [server.url], b""
    return [url], b""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("options", ["untrusted", "no-token", "token-file", "env-insecure"])
async def test_every_command_takes_the_connection_options(
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    options: str,
) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    token_file = tmp_path / "token"
    token_file.write_text(PUB + "\n")
    extra = {
        "untrusted": [],
        "no-token": ["--cacert", str(cafile)],
        "token-file": ["--cacert", str(cafile), "--token-file", str(token_file)],
        "env-insecure": ["--insecure"],
    }[options]
    monkeypatch.delenv("TRICKLE_TOKEN", raising=False)
    if options == "env-insecure":
        monkeypatch.setenv("TRICKLE_TOKEN", PUB)
    with trio.fail_after(STEP):
        async with open_server(tls_settings(ca, tmp_path)) as server:
            argv, stdin = prepare(server, command)
            result = await run(command, *argv, *extra, stdin=stdin)
    err = result.stderr.getvalue()
    if options == "untrusted":
        assert result.code == 1  # refused by us, not "the server went away"
        assert "CERTIFICATE_VERIFY_FAILED" in err
        assert "--cacert FILE" in err
    elif options == "no-token":
        assert result.code == 1
        assert err.endswith(
            ": HTTP 401: Unauthorized (give a token with --token-file FILE or TRICKLE_TOKEN)\n"
        )
    else:
        assert (result.code, err) == (0, "")
        expected = {"subscribe": b"hello", "next": b"1\n", "publish": b"", "delete": b""}
        if command == "status":
            assert b"CHANNEL" in result.output
        else:
            assert result.output == expected[command]


async def test_status_errors_say_why(tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, publish_token=PUB, subscribe_token=SUB)
    token_file = tmp_path / "token"
    token_file.write_text(SUB)
    with trio.fail_after(STEP):
        async with open_server(settings) as server:
            weak = await run("status", server.url, "--token-file", str(token_file))
            assert weak.code == 1
            assert weak.stderr.getvalue() == (
                f"trickle-trio: {server.url}: HTTP 401: Unauthorized"
                " (give a token with --token-file FILE or TRICKLE_TOKEN)\n"
            )
            empty = tmp_path / "empty"
            empty.write_text("\n")
            blank = await run("status", server.url, "--token-file", str(empty))
            assert (blank.code, blank.stderr.getvalue()) == (
                1,
                f"trickle-trio: token file {empty} is empty\n",
            )
    gone = await run("status", server.url)
    assert gone.code == 3
    assert gone.stderr.getvalue().startswith(f"trickle-trio: {server.urls[0]}")


# -- exit codes ------------------------------------------------------------------------------


async def test_a_server_shutting_down_is_exit_3_a_deleted_channel_exit_0() -> None:
    settings = Settings(host="127.0.0.1", port=0, autocreate=True)
    pipe = Pipe()
    with trio.fail_after(STEP):
        async with open_server(settings) as server, trio.open_nursery() as nursery:
            name = fresh_name()
            url = f"{server.url}/{name}"
            publish = Run("publish", url, "--lines", stdin=pipe.reader)
            subscribe = Run("subscribe", url, "--start", "0", "--wait")
            nursery.start_soon(publish.run)
            nursery.start_soon(subscribe.run)
            await pipe.write(b"one\n")
            await wait_until(lambda: subscribe.output == b"one\n")
            await server.shutdown()  # drain: both get Lp-Trickle-Closed, then it stops
            await publish.done.wait()
            await subscribe.done.wait()
    await pipe.close()
    pipe.reader.close()
    assert publish.code == subscribe.code == 3
    for command in (publish, subscribe):
        err = command.stderr.getvalue()
        assert err.count("\n") == 1
        assert "server shutting down" in err or "server unreachable" in err


async def test_reconnect_across_a_server_restart(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(host="127.0.0.1", port=port, autocreate=True)
    url = f"http://127.0.0.1:{port}/{fresh_name()}"
    pipe = Pipe()
    publish = Run("publish", url, "--lines", "--reconnect", "30", stdin=pipe.reader)
    subscribe = Run("subscribe", url, "--start", "0", "--wait", "--reconnect", "30")
    files = tmp_path / "files"
    saved = Run("subscribe", url, "--wait", "--out-dir", str(files), "--reconnect", "30")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            async with open_server(settings) as server:
                for command in (publish, subscribe, saved):
                    nursery.start_soon(command.run)
                await wait_until(lambda: len(server.registry) == 1)
                await pipe.write(b"before\n")
                await wait_until(lambda: subscribe.output == b"before\n")
                await server.shutdown()
            for command in (publish, subscribe, saved):
                await wait_until(lambda c=command: "reconnecting" in c.stderr.getvalue())
            async with open_server(settings) as server:
                await wait_until(lambda: len(server.registry) == 1)  # publish again
                await pipe.write(b"after\n")
                await wait_until(lambda: subscribe.output == b"before\nafter\n")
                await wait_until(
                    lambda: b"after\n" in [f.read_bytes() for f in finished_files(files)]
                )
                await pipe.close()  # end of input: publish deletes its channel
                for command in (publish, subscribe, saved):
                    await command.done.wait()
    pipe.reader.close()
    assert (publish.code, subscribe.code, saved.code) == (0, 0, 0)
    assert "server lost" in subscribe.stderr.getvalue()


async def test_stats_lines_on_stderr(trickle_server: RunningServer) -> None:
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    pub = LocalPublisher(trickle_server.registry, name, "text/plain")
    pub.create_channel()
    subscribe = Run("subscribe", url, "--start", "0", "--stats", "0.05")
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe.run)
            pub.write_nowait(b"x" * 1000)
            await wait_until(lambda: "segments=1 bytes=1.0kB" in subscribe.stderr.getvalue())
            await trickle_server.registry.delete(name)
    assert subscribe.code == 0
    line = subscribe.stderr.getvalue().splitlines()[-1]
    assert line.startswith("trickle-trio: subscribe segments=1 bytes=1.0kB bitrate=")
    assert " seq=0 lag=0 reconnects=0" in line


# -- video -------------------------------------------------------------------------------------


def ffmpeg_stream(codec: list[str], seconds: int) -> bytes:
    """A test pattern with a tone, as MPEG-TS, made by ffmpeg now (GOPs of 1 s)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (.ci/run installs it)")
    argv = [
        ffmpeg, "-hide_banner", "-loglevel", "error",
        "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=320x240:rate=25",
        "-f", "lavfi", "-i", f"sine=duration={seconds}",
        *codec, "-g", "25", "-f", "mpegts", "-",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout


def decode_errors(path: Path) -> tuple[str, str]:
    """ffmpeg's complaints decoding ``path`` alone, and whether its first frame is key."""
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    assert ffmpeg is not None
    assert ffprobe is not None
    errors = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    first = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v", "-show_entries", "frame=key_frame",
         "-read_intervals", "%+#1", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return errors.stderr.strip() + (f" (exit {errors.returncode})" * bool(errors.returncode)), (
        first.stdout.strip().rstrip(",")
    )


@pytest.mark.parametrize(
    "codec",
    [["-c:v", "libx264", "-c:a", "aac"], ["-c:v", "mpeg2video", "-c:a", "mp2"]],
    ids=["h264-aac", "mpeg2-mp2"],
)
async def test_every_segment_of_an_ffmpeg_stream_decodes_on_its_own(
    trickle_server: RunningServer, tmp_path: Path, codec: list[str]
) -> None:
    stream = ffmpeg_stream(codec, seconds=4)
    name = fresh_name()
    url = f"{trickle_server.url}/{name}"
    trickle_server.registry.create(name, "video/mp2t")  # publish leaves it open
    pipe = Pipe()
    publish = Run("publish", url, stdin=pipe.reader)
    subscribe = Run("subscribe", url, "--start", "0", "--out-dir", str(tmp_path))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscribe.run)
            nursery.start_soon(publish.run)
            for start in range(0, len(stream), 10_000):  # pieces that ignore packets
                await pipe.write(stream[start : start + 10_000])
            await pipe.close()
            await publish.done.wait()
            # Four GOPs, and the empty segment publish's idle preconnect ends as when it
            # leaves a channel open (the protocol's rule).
            await wait_until(lambda: len(finished_files(tmp_path)) == 5)
            await trickle_server.registry.delete(name)
    pipe.reader.close()
    assert (publish.code, subscribe.code) == (0, 0), publish.stderr.getvalue()
    segments = [p for p in finished_files(tmp_path) if p.stat().st_size]
    assert len(segments) == 4  # one per GOP of 1 s
    assert segments[0].read_bytes().startswith(stream[:4096])  # the stream's own start
    for path in segments[1:]:  # the others start with the tables: PAT, then ffmpeg's PMT
        head = path.read_bytes()[:376]
        assert [(head[i + 1] & 0x1F) << 8 | head[i + 2] for i in (0, 188)] == [0, 0x1000]
    for path in segments:
        errors, key = await trio.to_thread.run_sync(decode_errors, path)
        assert (path.name, errors, key) == (path.name, "", "1")


def test_a_server_that_is_gone_is_one_line_and_exit_3() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    for command in ("subscribe", "publish", "next", "status"):
        proc = subprocess.run(
            [sys.executable, "-m", "trickle_trio", command, f"http://127.0.0.1:{port}/ch"],
            input=b"",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 3, (command, proc.stderr)
        assert proc.stderr.count(b"\n") == 1, (command, proc.stderr)
        assert b"all attempts to connect" in proc.stderr
