"""The far side of an ssh transfer: ``rtransfer send|recv --stdio`` talks the protocol over its
own standard input and output, which ssh carries. One connection, and no other: when it ends,
the process ends, and the side that started ssh starts it again (with a new process here).

The event loop drives sockets; sshd hands us pipes (or a socket). Two threads move bytes
between them and one end of a socket pair, so the protocol sees a socket as it does everywhere
else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import threading
from collections.abc import Callable

from rtransfer.errors import NetworkError
from rtransfer.transport.source import P, driven

_COPY_BYTES = 1 << 20


def _pump(src: int, dst: int, done: Callable[[], None]) -> None:
    """Copy until end of file, then ``done`` (which passes the end on). Plain reads and writes:
    ``splice`` between these pipes and a socket pair stalled here (the stdin side never moved),
    and ssh's cipher, not this copy, is what bounds the rate."""
    try:
        while data := os.read(src, _COPY_BYTES):
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
    except OSError:
        pass
    finally:
        done()


def stdio_socket() -> socket.socket:
    """A socket whose far end is this process's standard input and output."""
    ours, theirs = socket.socketpair()
    if stat.S_ISSOCK(os.fstat(0).st_mode) and os.path.samestat(os.fstat(0), os.fstat(1)):
        ours.close()
        theirs.close()
        return socket.socket(fileno=os.dup(0))

    def stdin_ended() -> None:
        with contextlib.suppress(OSError):
            theirs.shutdown(socket.SHUT_WR)

    def socket_ended() -> None:
        with contextlib.suppress(OSError):
            os.close(1)

    for fd in (0, 1):  # fewer, larger reads and writes: a pipe holds 64 KiB unless asked
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _COPY_BYTES)
    for src, dst, done in ((0, theirs.fileno(), stdin_ended), (theirs.fileno(), 1, socket_ended)):
        threading.Thread(target=_pump, args=(src, dst, done), daemon=True).start()
    return ours


class StdioLink:
    """The one connection ssh carries, as a source: a second ``open`` is final (see above)."""

    dials = True
    path = "ssh"
    secret = None
    where = "the ssh connection"

    def __init__(self) -> None:
        self._sock: socket.socket | None = stdio_socket()

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        if self._sock is None:
            raise NetworkError("the ssh connection ended")
        sock, self._sock = self._sock, None
        sock.setblocking(False)
        return await driven(make, sock)

    def further(self, session_key: bytes, stream: int) -> StdioLink:
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
