"""The far side of an ssh transfer: ``rtransfer send|recv --stdio`` talks the protocol over its
own standard input and output, which ssh carries. One connection, and no other: when it ends,
the process ends, and the side that started ssh starts it again (with a new process here).

sshd hands us pipes (or a socket): the event loop reads and writes them as it does a socket
(pipes.py). ``rtransfer join``, which only relays a further session's bytes, copies with two
threads.
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
from rtransfer.transport.pipes import driven_pipes
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


def _larger_pipes() -> None:
    """Fewer, larger reads and writes: a pipe holds 64 KiB unless asked."""
    for fd in (0, 1):
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _COPY_BYTES)


def _bridge(sock: socket.socket) -> threading.Thread:
    """Copy standard input into ``sock`` and ``sock`` into standard output, a thread each; the
    one that ends with ``sock``'s end of file is returned, to wait for."""
    _larger_pipes()

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


def take_stdio() -> socket.socket | tuple[int, int]:
    """Standard input and output, taken over for the protocol: the socket they both are, or the
    two pipes (anything else goes through a socket pair that threads copy to). Both are then
    /dev/null, so a stray print can't land in the stream, nor a file opened later take fd 1."""
    stdin, stdout = os.fstat(0), os.fstat(1)
    if stat.S_ISSOCK(stdin.st_mode) and os.path.samestat(stdin, stdout):
        taken: socket.socket | tuple[int, int] = socket.socket(fileno=os.dup(0))
    elif stat.S_ISFIFO(stdin.st_mode) and stat.S_ISFIFO(stdout.st_mode):
        _larger_pipes()
        taken = (_own(0, os.O_RDONLY), _own(1, os.O_WRONLY))
    else:
        ours, theirs = socket.socketpair()
        _bridge(theirs)
        return ours
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    return taken


def _own(fd: int, mode: int) -> int:
    """``fd``'s pipe, non-blocking, through an open file description of its own: O_NONBLOCK on the
    one ``fd`` shares with sshd (or a wrapper script that runs something after us) would stay
    behind. Without /proc, a duplicate (PipeTransport makes it blocking again when it ends)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", mode | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return os.dup(fd)


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
        self._stdio: socket.socket | tuple[int, int] | None = take_stdio()
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
        stdio, self._stdio = self._stdio, None
        if stdio is None:
            raise NetworkError("the ssh connection ended")
        if isinstance(stdio, tuple):
            return driven_pipes(make, *stdio)
        stdio.setblocking(False)
        return await driven(make, stdio)

    def further(self, stream: int) -> Listen:
        return self._further

    def close(self) -> None:
        if isinstance(self._stdio, socket.socket):
            self._stdio.close()
        elif self._stdio is not None:
            for fd in self._stdio:
                os.close(fd)
        self._further.close()
        shutil.rmtree(self._dir, ignore_errors=True)
