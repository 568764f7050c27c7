"""A byte stream over two pipes, driven by the event loop: the far side of an ssh session reads
sshd's pipe into the protocol's own buffers, as it reads a socket everywhere else.

asyncio's pipe transports can't serve here: they read into a fresh bytes object each time and
have no ``get_buffer``, so the protocol (an ``asyncio.BufferedProtocol``) would copy every byte
once more. The copy this replaces was worse: two threads moved every byte through a socket pair.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable, Iterable

from rtransfer.protocol.model import Buffer
from rtransfer.transport.source import P

_HIGH_WATER = 1 << 20  # what the protocol may have queued before it is asked to pause writing
_IOV_MAX = 512  # pieces per writev, under the kernel's limit of 1,024


class PipeTransport(asyncio.Transport):
    """Read ``rfd`` into ``protocol``'s buffers and write to ``wfd``, both made non-blocking.
    What the kernel doesn't take at once is copied and kept, as a socket transport keeps it:
    the protocol may reuse its buffers once ``writelines`` returns."""

    def __init__(self, protocol: asyncio.BufferedProtocol, rfd: int, wfd: int) -> None:
        super().__init__({"pipe": (rfd, wfd)})
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._rfd, self._wfd = rfd, wfd
        for fd in (rfd, wfd):
            os.set_blocking(fd, False)
        self._pending: collections.deque[memoryview] = collections.deque()
        self._pending_bytes = 0
        self._reading = False
        self._read_closed = False
        self._closing = False
        self._paused_writing = False
        self._lost = False
        protocol.connection_made(self)
        self.resume_reading()

    # --- reading ---------------------------------------------------------------
    def _read_ready(self) -> None:
        try:
            buffer = memoryview(self._protocol.get_buffer(-1))
            if not buffer.nbytes:  # as asyncio's transports: 0 bytes read would look like end of file
                raise RuntimeError("get_buffer() returned an empty buffer")
            n = os.readv(self._rfd, [buffer])
            if n:
                self._protocol.buffer_updated(n)
                return
        except (BlockingIOError, InterruptedError):
            return
        except Exception as exc:  # as a socket transport does: the connection is lost, and why
            self._fail(exc)
            return
        self.pause_reading()
        self._read_closed = True
        if not self._protocol.eof_received():
            self.close()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._rfd)

    def resume_reading(self) -> None:
        if not (self._reading or self._read_closed or self._closing):
            self._reading = True
            self._loop.add_reader(self._rfd, self._read_ready)

    # --- writing ---------------------------------------------------------------
    def write(self, data: Buffer) -> None:
        self.writelines((data,))

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:  # type: ignore[override]
        if self._closing or self._lost:
            return
        views = [v for v in (memoryview(d).cast("B") for d in list_of_data) if v.nbytes]
        if not self._pending:
            left = self._write_now(views)
            if left is None:
                return
            if left:
                self._loop.add_writer(self._wfd, self._write_ready)
            views = left
        for view in views:  # the kernel didn't take these: keep a copy, the caller's buffers move on
            self._pending.append(memoryview(bytes(view)))
            self._pending_bytes += view.nbytes
        if not self._paused_writing and self._pending_bytes > _HIGH_WATER:
            self._paused_writing = True
            self._protocol.pause_writing()

    def _write_now(self, views: list[memoryview]) -> list[memoryview] | None:
        """Write what the pipe takes; the rest is returned (None: the pipe failed)."""
        while views:
            try:
                n = os.writev(self._wfd, views[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(exc)
                return None
            while n and views:
                taken = min(n, views[0].nbytes)
                n -= taken
                views[0] = views[0][taken:]
                if not views[0].nbytes:
                    views.pop(0)
            if views and views[0].nbytes:  # a partial write: the pipe is full
                break
        return views

    def _write_ready(self) -> None:
        left = self._write_now(list(self._pending))
        if left is None:
            return
        self._pending = collections.deque(left)
        self._pending_bytes = sum(v.nbytes for v in left)
        if self._paused_writing and self._pending_bytes <= _HIGH_WATER // 4:
            self._paused_writing = False
            self._protocol.resume_writing()
        if not self._pending:
            self._loop.remove_writer(self._wfd)
            if self._closing:
                self._finish(None)

    def get_write_buffer_size(self) -> int:
        return self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return _HIGH_WATER // 4, _HIGH_WATER

    def can_write_eof(self) -> bool:
        return False

    # --- ending ----------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Stop reading; end once what is queued is written (the far end then sees end of file)."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.pause_reading()
        if not self._pending:
            self._finish(None)

    def abort(self) -> None:
        self._finish(None)

    def _fail(self, exc: Exception) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self.pause_reading()
        if self._pending:
            self._loop.remove_writer(self._wfd)
            self._pending.clear()
            self._pending_bytes = 0
        for fd in {self._rfd, self._wfd}:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)  # as it came, should the description be shared
            with contextlib.suppress(OSError):
                os.close(fd)
        self._loop.call_soon(self._protocol.connection_lost, exc)


def driven_pipes(make: Callable[[], P], rfd: int, wfd: int) -> P:
    """Hand two pipes to the protocol ``make`` builds, as ``source.driven`` hands it a socket."""
    protocol = make()
    assert isinstance(protocol, asyncio.BufferedProtocol)
    PipeTransport(protocol, rfd, wfd)
    return protocol
