"""A real MPEG-TS stream through GET /{ch}/live: ffmpeg publishes, ffmpeg and ffprobe read.

ffmpeg's test pattern and a sine tone (H.264 + AAC) are encoded live (``-re``) and piped
through ``trickle-trio publish --interval 1`` (1 s segments); the test keeps every byte
it hands the publisher. Readers on the live route: ffprobe (finds both streams), and
ffmpeg decoding every frame (``framecrc``): no decode error, and frame for frame the
same pictures and sound as the bytes published, across every segment join; and an
ffmpeg that joins mid-stream at the default start (the next segment boundary, a
keyframe since publish cuts there) decodes from its first byte. Real
processes and sockets (level 4): skipped, saying why, where ffmpeg is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trickle_trio.server import RunningServer

SECONDS = 5
PUBLISH = [sys.executable, "-m", "trickle_trio", "publish", "--interval", "1"]

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe are not installed (.ci/run installs them: apt-get install ffmpeg)",
)


def _source_argv() -> list[str]:
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc=duration={SECONDS}:size=320x240:rate=25",
        "-f", "lavfi", "-i", f"sine=duration={SECONDS}",
        "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-f", "mpegts", "-",
    ]  # fmt: skip


def _framecrc(source: str) -> list[str]:
    return ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", source,
            "-map", "0", "-f", "framecrc", "-"]  # fmt: skip


async def _run(argv: list[str], into: dict[str, bytes], key: str) -> None:
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    into[key] = result.stdout
    into[key + ".err"] = result.stderr
    into[key + ".code"] = str(result.returncode).encode()


def _frames(framecrc: bytes) -> list[tuple[str, str, str]]:
    """(stream, size, crc) of every decoded frame in framecrc's output. Timestamps are
    left out: ffmpeg derives audio ones a little differently from a file it can seek."""
    frames = []
    for line in framecrc.decode().splitlines():
        if line and not line.startswith("#"):
            stream, _dts, _pts, _duration, size, crc = (field.strip() for field in line.split(","))
            frames.append((stream, size, crc))
    return frames


async def test_a_live_mpeg_ts_stream_decodes_through_the_live_route(
    trickle_server: RunningServer, tmp_path: Path
) -> None:
    registry = trickle_server.registry
    channel = registry.create("media", "video/mp2t")
    live = f"{trickle_server.url}/media/live?start=0"  # from the stream's first byte
    live_default = f"{trickle_server.url}/media/live"
    sent = bytearray()
    out: dict[str, bytes] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # Both readers attach before a byte is published: they wait on seq 0.
            nursery.start_soon(_run, _framecrc(live), out, "live")
            nursery.start_soon(
                _run,
                ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name",
                 "-of", "csv=p=0", live],
                out,
                "probe",
            )  # fmt: skip
            while len(channel.subscribers) < 2:  # ruff: ignore[async-busy-wait] - other processes
                await trio.sleep(0.01)
            publisher = await trio.lowlevel.open_process(
                [*PUBLISH, f"{trickle_server.url}/media"], stdin=subprocess.PIPE
            )
            source = await trio.lowlevel.open_process(_source_argv(), stdout=subprocess.PIPE)
            assert publisher.stdin is not None
            assert source.stdout is not None
            joined = False
            while chunk := await source.stdout.receive_some(65536):
                sent += chunk
                await publisher.stdin.send_all(chunk)
                if not joined and channel.next_write >= 2:
                    # A third reader joins mid-stream at the default start, the next
                    # segment boundary (publish cuts MPEG-TS at keyframes).
                    nursery.start_soon(_run, _framecrc(live_default), out, "joined")
                    joined = True
            await publisher.stdin.aclose()
            assert await source.wait() == 0
            assert await publisher.wait() == 0
            segments = channel.next_write
            # The channel was ours (created above): end it, and the live readers end cleanly.
            registry.remove("media")
    assert segments >= 4, "want several segment joins"
    assert out["probe.code"] == b"0", out["probe.err"]
    assert set(out["probe"].decode().split()) == {"aac", "h264"}
    assert out["live.code"] == b"0"
    assert out["live.err"] == b""  # not one decode error, across every join
    published = tmp_path / "published.ts"
    published.write_bytes(sent)
    reference = await trio.run_process(_framecrc(str(published)), capture_stdout=True)
    frames = _frames(out["live"])
    assert frames == _frames(reference.stdout)
    pictures = [frame for frame in frames if frame[0] == "0"]
    assert len(pictures) == SECONDS * 25  # every picture
    # Joined at a segment boundary: decodable from its first byte, and from there on
    # the very same pictures.
    assert out["joined.code"] == b"0"
    assert out["joined.err"] == b""
    joined = [frame for frame in _frames(out["joined"]) if frame[0] == "0"]
    assert 0 < len(joined) < len(pictures)
    assert joined == pictures[-len(joined) :]
