"""The response side of one connection: the head, the body's framing, every write.

Rules:
1. Nothing is ever written while another write is under way. Writes come from the
   connection's task (the app's sends) or, for a chunk of a streaming response, from any
   task through :meth:`Output.try_push`, which never waits: what the socket does not take
   goes to a backlog that the next write sends first.
2. The head is held until the first body bytes, so that a head and its first body (a
   whole small answer) leave in one ``writev``.
3. A write that fails or is cut short (cancelled) leaves the output *broken*: nothing more
   is written, and the connection is reset rather than ended cleanly (:meth:`abort`).

Imports: trio, the stdlib and ``.heads``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import trio

from .heads import CONTINUE, CRLF, LAST_CHUNK, date_header, error_answer, has_close, status_line

__all__ = ["IOV_MAX", "LINGER", "YIELD_EVERY", "Output"]

#: Buffers per ``writev`` (Linux refuses more than 1024).
IOV_MAX = 1024
#: Longest a closing connection reads (and drops) what its client still sends.
LINGER = 1.0
#: At most this many writes in a row complete without a scheduler pass.
YIELD_EVERY = 16
#: Bytes asked of the socket per read while lingering.
_DRAIN_SIZE = 64 * 1024


class Output:
    """Writes one connection's responses, one after another.

    ``sock`` is the plain socket (``None`` for TLS, written through ``stream``);
    ``on_broken`` is called (sync) when a write finds the connection gone.
    """

    def __init__(self, stream: Any, sock: Any, on_broken: Callable[[], None]) -> None:
        self.stream = stream
        self._sock = sock
        self._on_broken = on_broken
        # The response being written.
        self.status = 0
        self._head: list[bytes] | None = None  # held until the first body bytes
        self.started = False  # the head is written (or queued in the backlog)
        self.ended = False
        self._chunked = False
        self._bare = False  # no body may be sent (HEAD, 204, 304)
        self.close_after = False
        # Writes.
        self._writing = False
        self._backlog: list[bytes | memoryview] = []
        self.broken = False
        self._unyielded = 0

    def begin(self, *, close_after: bool) -> None:
        """Make ready for the next response."""
        self.status = 0
        self._head = None
        self.started = self.ended = self._chunked = self._bare = False
        self.close_after = close_after

    def detach(self) -> None:  # sync on purpose
        """Forget ``on_broken`` (the connection has ended), so that no cycle holds the
        connection until the cycle collector runs."""
        self._on_broken = _nothing

    # -- a response ---------------------------------------------------------------------

    def start(
        self,
        status: int,
        headers: Any,
        *,
        method: str,
        http_version: str,
        body_unread: bool,
        stopping: bool,
    ) -> None:
        """Build the head of an answer (written with the first body bytes)."""
        if self.status:
            raise RuntimeError("response already started")
        self.status = status
        self._bare = method == "HEAD" or status in (204, 304)
        lines = [status_line(status), date_header()]
        length = None
        close = False
        for name, value in headers:
            lower = bytes(name).lower()
            if lower == b"content-length":
                length = value
            elif lower == b"connection" and b"close" in bytes(value).lower():
                close = True
            elif lower == b"date":
                lines[1] = b""
            lines.append(bytes(name) + b": " + bytes(value) + CRLF)
        if length is None and not self._bare:
            if http_version == "1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                close = True  # the body ends with the connection
        if body_unread or stopping:
            close = True  # a body we did not read: don't parse what follows
        if close:
            self.close_after = True
        if self.close_after and not has_close(headers):
            lines.append(b"connection: close\r\n")
        lines.append(CRLF)
        self._head = lines

    async def body(self, parts: Sequence[bytes], *, more: bool) -> None:
        """Write body ``parts`` (framed as one chunk); ``more=False`` ends the response.

        Cancellation: as :meth:`write`.
        """
        if self.ended or not self.status:
            if not self.status:
                raise RuntimeError("response body before its start")
            return
        out: list[bytes | memoryview] = []
        if self._head is not None:
            out.extend(self._head)
            self._head = None
        if parts and not self._bare:
            if self._chunked:
                size = sum(map(len, parts)) if len(parts) != 1 else len(parts[0])
                if size:
                    out.append(b"%x\r\n" % size)
                    out.extend(parts)
                    out.append(CRLF)
            else:
                out.extend(parts)
        if not more:
            self.ended = True
            if self._chunked:
                out.append(LAST_CHUNK)
        self.started = True
        if out:
            await self.write(out)

    async def send_parts(self, parts: Sequence[bytes], more_body: bool) -> None:
        """``PARTS_EXTENSION``: :meth:`body` under the extension's signature.

        Cancellation: as :meth:`write`.
        """
        await self.body(parts, more=more_body)

    async def send_continue(self) -> None:
        """``100 Continue``, unless the answer has begun. Cancellation: as :meth:`write`."""
        if not self.started:
            await self.write((CONTINUE,))

    async def answer_error(self, status: int, reason: str) -> None:
        """A whole plain-text answer in place of the app's; the connection closes after.

        Cancellation: as :meth:`write`.
        """
        self.started = self.ended = True
        await self.write(error_answer(status, reason))

    def try_push(self, parts: Sequence[bytes]) -> int:
        """``PUSH_EXTENSION``: the next chunk of a streaming body, now or not at all.

        0: nothing sent (no chunked body under way, a write in progress or backlogged,
        the socket full or gone); 1: sent; 2: sent in part, the rest backlogged (an
        awaited :meth:`flush` must follow). Never a checkpoint.
        """
        if (
            self._writing
            or self._backlog
            or not self.started
            or self.ended
            or not self._chunked
            or self._head is not None
            or self.broken
        ):
            return 0
        fd = self._sock.fileno()
        if fd < 0:
            return 0
        size = sum(map(len, parts)) if len(parts) != 1 else len(parts[0])
        if not size:
            return 1
        framed = [b"%x\r\n" % size, *parts, CRLF]
        try:
            written = os.writev(fd, framed)
        except OSError:  # BlockingIOError included: nothing was written
            return 0
        for index, part in enumerate(framed):
            if written < len(part):
                self._backlog = [memoryview(part)[written:], *framed[index + 1 :]]
                return 2
            written -= len(part)
        return 1

    async def flush(self) -> None:
        """Write what :meth:`try_push` left in the backlog. Cancellation: as :meth:`write`."""
        await self.write(())

    # -- writing ------------------------------------------------------------------------

    async def write(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write ``parts`` whole (the backlog first).

        Cancellation: a write cut short leaves the connection unusable: it is marked
        broken, and the connection resets it.
        """
        if self.broken:
            await trio.lowlevel.checkpoint()
            return
        pending: list[bytes | memoryview] = (
            [*self._backlog, *parts] if self._backlog else [part for part in parts if part]
        )
        self._backlog = []
        if self._sock is None:
            await self._write_tls(pending)
            return
        self._writing = True
        immediate = True
        try:
            sock = self._sock
            while pending:
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("connection closed")
                try:
                    written = os.writev(
                        fd, pending if len(pending) <= IOV_MAX else pending[:IOV_MAX]
                    )
                except BlockingIOError:
                    written = 0
                while written:
                    first = pending[0]
                    if written >= len(first):
                        written -= len(first)
                        del pending[0]
                    else:
                        pending[0] = memoryview(first)[written:]
                        written = 0
                if pending:
                    immediate = False
                    await trio.lowlevel.wait_writable(sock)
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            self.broken = True
            self._on_broken()
        except BaseException:
            self.broken = True  # cut mid-write (cancelled): never reused, reset
            raise
        finally:
            self._writing = False
        if not immediate:
            self._unyielded = 0
        elif self._unyielded < YIELD_EVERY:
            # Written without waiting and without a scheduler pass: the app yields
            # anyway (a subscriber waits for its next chunk), so only every
            # YIELD_EVERY-th such write yields, for fairness.
            self._unyielded += 1
        else:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_tls(self, pending: list[bytes | memoryview]) -> None:
        self._writing = True
        try:
            await self.stream.send_all(b"".join(pending))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.broken = True
            self._on_broken()
        except BaseException:
            self.broken = True
            raise
        finally:
            self._writing = False

    # -- ending the connection ----------------------------------------------------------

    def abort(self, sock: Any) -> None:  # sync on purpose
        """Reset ``sock`` now (RST, unsent bytes dropped): every wait on it fails at once,
        and the client sees an error, never a clean end of a cut response."""
        self.broken = True
        if sock is None or sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # trio wakes every task waiting on it (ClosedResourceError)

    async def close(self, *, client_gone: bool) -> None:
        """Close gracefully: FIN after the last answer, then read and drop what the
        client still sends, until it closes too (at most :data:`LINGER` seconds), so
        that the kernel does not reset the connection (and lose our answer) over bytes
        we never read: a 413 or 404 answered while the body still comes in.

        Cancellation: the stream is closed (shielded, at most a second) either way.
        """
        try:
            if not self.broken and not client_gone and self._sock is not None:
                with (
                    trio.move_on_after(LINGER),
                    contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError
                    ),
                ):
                    await self.stream.send_eof()
                    while await self.stream.receive_some(_DRAIN_SIZE):
                        pass
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                await self.stream.aclose()


def _nothing() -> None:
    pass
