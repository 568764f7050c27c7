"""Standard input and output as streams of the event loop, for ``send -`` and ``recv -``.

Why not a worker thread per read: a pipe hands over at most its capacity (64 KiB by
default) per read, so reading a chunk that way cost a thread hand-off per 64 KiB,
and the pipe path ran far behind nc. Why not O_NONBLOCK: that flag
belongs to the open file description, which the shell and the other processes of
a pipeline share, and it would outlive us. ``preadv2``/``pwritev2`` with
``RWF_NOWAIT`` make this one call non-blocking instead; when it would block, the
loop waits for readiness. Where the kernel or the file type refuses ``RWF_NOWAIT``
(a terminal, a regular file that must wait for the disk), the call goes to a worker
thread. A worker blocked on a terminal cannot be stopped: its caller abandons the
buffer (it never goes back to the pool) and the descriptor is never closed, so
nothing it touches is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable

from rtransfer.protocol.model import Buffer, WritableBuffer
from rtransfer.workers import settle

PIPE_BYTES = 1024 * 1024  # the default limit for an unprivileged F_SETPIPE_SZ
_REFUSED = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class StdStream:
    """One of the process's standard descriptors; never closed here."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        mode = os.fstat(fd).st_mode
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
        self._nowait = bool(_RWF_NOWAIT) and hasattr(os, "preadv")
        self._endless = os.isatty(fd)  # a blocking call on a terminal may never end: never wait one out
        if stat.S_ISFIFO(mode):
            # A larger pipe lets the other end run ahead while we seal and send (fewer wake-ups).
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    async def readinto(self, view: memoryview) -> int:
        """Some bytes into ``view``; 0 only at end of input."""
        return await self._io(os.preadv, os.readv, view, reading=True)

    async def fill(self, buf: WritableBuffer, on_bytes: Callable[[memoryview], None]) -> int:
        """Read until ``buf`` is full or the input ends; each piece goes to ``on_bytes`` as it arrives."""
        view = memoryview(buf)
        got = 0
        while got < len(view) and (n := await self.readinto(view[got:])):
            on_bytes(view[got : got + n])
            got += n
        return got

    async def write_all(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[await self._io(os.pwritev, os.writev, view, reading=False) :]

    async def _io(
        self,
        nowait: Callable[[int, list[memoryview], int, int], int],
        blocking: Callable[[int, list[memoryview]], int],
        view: memoryview,
        reading: bool,
    ) -> int:
        loop = asyncio.get_running_loop()
        while self._nowait:
            try:
                return nowait(self.fd, [view], -1, _RWF_NOWAIT)
            except BlockingIOError:
                if not (self._pollable and await _ready(loop, self.fd, reading)):
                    break  # a file waiting for its disk: that one call goes to a worker
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self._nowait = False
        call = loop.run_in_executor(None, blocking, self.fd, [view])
        return await (call if self._endless else settle(call))


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, reading: bool) -> bool:
    """Wait until ``fd`` can be read (or written); False if it cannot be watched."""
    waiter = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add, remove = (loop.add_reader, loop.remove_reader) if reading else (loop.add_writer, loop.remove_writer)
    try:
        add(fd, wake)
    except (OSError, ValueError, NotImplementedError):
        return False
    try:
        await waiter
    finally:
        remove(fd)
    return True
