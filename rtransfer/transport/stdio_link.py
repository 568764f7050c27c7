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
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable

from rtransfer.errors import NetworkError
from rtransfer.transport.source import Listen, P, Route, Way, driven

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


def _bridge(sock: socket.socket) -> threading.Thread:
    """Copy standard input into ``sock`` and ``sock`` into standard output, a thread each; the
    one that ends with ``sock``'s end of file is returned, to wait for."""
    for fd in (0, 1):  # fewer, larger reads and writes: a pipe holds 64 KiB unless asked
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _COPY_BYTES)

    def stdin_ended() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def sock_ended() -> None:
        with contextlib.suppress(OSError):
            os.close(1)

    threading.Thread(target=_pump, args=(0, sock.fileno(), stdin_ended), daemon=True).start()
    out = threading.Thread(target=_pump, args=(sock.fileno(), 1, sock_ended), daemon=True)
    out.start()
    return out


def stdio_socket() -> socket.socket:
    """A socket whose far end is this process's standard input and output."""
    if stat.S_ISSOCK(os.fstat(0).st_mode) and os.path.samestat(os.fstat(0), os.fstat(1)):
        return socket.socket(fileno=os.dup(0))
    ours, theirs = socket.socketpair()
    _bridge(theirs)
    return ours


def join(path: str) -> None:
    """``rtransfer join --stdio PATH``: a further ssh session of a transfer, which joins the first
    session's process through its private socket (``StdioLink.further``) and copies both ways."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError as exc:
        raise NetworkError(f"{path}: the transfer to join is gone ({exc.strerror or exc})") from None
    _bridge(sock).join()


class StdioLink(Way):
    """The one connection ssh carries, as a source: a second ``open`` is final (see above).
    Further connections (``--streams``) come as further ssh sessions running ``rtransfer join``,
    through a Unix socket in a directory only this user can enter, announced on standard error
    (``joinable``) for the side that started ssh."""

    authenticated = True
    names_remote_errors = True
    where = "the ssh connection"

    def __init__(self, announce: Callable[[str], None]) -> None:
        self._sock: socket.socket | None = stdio_socket()
        self._dir = tempfile.mkdtemp(prefix="rtransfer-")  # 0700
        self._streams = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._streams.bind(os.path.join(self._dir, "join"))
        self._streams.listen(16)
        self._streams.setblocking(False)
        self._further = Listen(self._streams)
        announce(self._further.where)

    @property
    def route(self) -> Route:
        return Route.SSH

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        if self._sock is None:
            raise NetworkError("the ssh connection ended")
        sock, self._sock = self._sock, None
        sock.setblocking(False)
        return await driven(make, sock)

    def further(self, stream: int) -> Listen:
        return self._further

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._further.close()
        shutil.rmtree(self._dir, ignore_errors=True)
