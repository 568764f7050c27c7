"""The sources of connections: each ``open`` hands back one connected stream, driven by the
protocol object ``make`` builds (a Connection), or raises OSError for the reconnect loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, TypeVar

from rtransfer.errors import UnknownHost, reason

P = TypeVar("P", bound=asyncio.BaseProtocol)
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
# What a new connection must pass before the protocol takes it (direct.py: proving the session's
# key); it raises OSError or TimeoutError, having closed the socket, to refuse it.
Vet = Callable[[socket.socket], Awaitable[object]]


class WaitedOut(OSError):
    """The peer did not come within the time ``open`` was given to wait for it: that time is spent."""


class Route(Enum):
    """How a connection's bytes travel: the ``path`` of the progress and done events."""

    DIRECT = "direct"  # one TCP connection between the two sides: dialed, accepted, or found through a relay
    RELAY = "relay"  # through a transit relay, which copies the bytes between two connections
    SSH = "ssh"  # through an ssh session, which carries the protocol on its standard input and output

    @property
    def relayed(self) -> bool:
        """A relay sees (and carries) the bytes, which are counted apart (``relay_bytes``)."""
        return self is Route.RELAY


class Way:
    """One way of reaching the peer, the one value the session is given (built from the options by
    cli/configure.py); what differs between the ways is here, never asked of its type:

    - ``dials``: a failed ``open`` is worth a pause before the next (a listener's is the wait);
    - ``authenticated``: the path itself proves who is at the other end (ssh): the code is no secret;
    - ``route`` how the bytes travel, ``where`` the peer in messages, ``hint`` what to check
      when it cannot be reached, and ``how`` the path was made, for the moved event;
    - ``rendezvous``: the peer is met at a third place (a relay), where it may simply not be yet;
    - ``server``: what is dialed is a server that is always up (a relay, sshd), not the peer: one
      that refuses before it ever answered is a wrong address, said at once, not waited for;
    - ``names_remote_errors``: the peer's errors are said as coming from ``where`` (its host);
    - ``secret``: what the next connection's key exchange runs on instead of the transfer's keys;
    - ``relayed``: this connection could still move to a direct path (``go_direct``);
    - ``further(stream)``: where further connection number ``stream`` comes from.

    ``open`` gets ``timeout_s`` to reach the source and ``wait_s`` to wait there for the peer
    (None: as long as it takes), the time left in the reconnect loop's outage; it hands back one
    connected stream driven by ``make``'s protocol, or raises OSError."""

    dials = True
    authenticated = False
    rendezvous = False
    server = False
    names_remote_errors = False
    where = ""
    hint = ""
    how = ""  # how its connections are made, where that is news (relay.py, direct.py)

    @property
    def route(self) -> Route:
        return Route.DIRECT

    @property
    def secret(self) -> bytes | None:
        return None

    @property
    def relayed(self) -> bool:
        return False

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        raise NotImplementedError

    def further(self, stream: int) -> Way:
        return self

    def go_direct(self, path: Way) -> None:
        """The relayed connection found ``path``: the next ``open`` takes it (only where ``relayed``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


async def connect_socket(host: str, port: int, timeout_s: float | None) -> socket.socket:
    """A TCP connection to HOST:PORT, given ``timeout_s``: a host that drops our SYNs would
    otherwise hold an attempt for minutes. A name that does not exist is UnknownHost (final)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            for family, kind, proto, _, address in infos[:-1]:
                with contextlib.suppress(OSError):
                    return await _connect_to(family, kind, proto, address)
            family, kind, proto, _, address = infos[-1]
            return await _connect_to(family, kind, proto, address)
    except TimeoutError:
        raise TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout_s or 0:g} s") from None
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            raise UnknownHost(f"could not connect to {host}:{port}: {reason(exc)}") from None
        raise


async def _connect_to(family: int, kind: int, proto: int, address: Any) -> socket.socket:
    """Each of a name's addresses in turn, as ``create_connection`` does."""
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and exc.errno:  # the words, not "Connect call failed (address)"
            raise type(exc)(exc.errno, os.strerror(exc.errno)) from None
        raise
    return sock


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from a non-blocking socket, before a protocol drives it (a direct
    path's proof, a STUN answer); ConnectionResetError if it closes first."""
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < n:
        more = await loop.sock_recv(sock, n - len(got))
        if not more:
            raise ConnectionResetError(errno.ECONNRESET, "closed before its answer was whole")
        got += more
    return got


async def driven(make: Callable[[], P], sock: socket.socket) -> P:
    """Hand a connected socket to the protocol ``make`` builds."""
    _, proto = await asyncio.get_running_loop().connect_accepted_socket(make, sock)
    return proto


class Dial(Way):
    """Connect to HOST:PORT (and, given ``vet``, have the connection pass it)."""

    def __init__(self, host: str, port: int, vet: Vet | None = None, hint: str = "") -> None:
        self.host = host
        self.port = port
        self.vet = vet
        self.where = f"{host}:{port}"
        self.hint = hint

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None = None) -> P:
        sock = await connect_socket(self.host, self.port, timeout_s)
        if self.vet is not None:
            await self.vet(sock)
        return await driven(make, sock)


class Listen(Way):
    """Take connections arriving on a listening socket (opened early by the CLI, see listen.py).
    One task accepts; ``open`` takes the next arrival, waiting at most ``wait_s``, and wraps
    it in ``make``'s protocol, so a listener's key exchange can start before anyone connects.

    Given ``vet``, each arrival is vetted as it comes, from its accept on (its deadline is the
    vet's), at most MAX_VETTING at once; one that fails is dropped. However many connections
    someone opens, this side holds at most MAX_WAITING of them: the rest are closed at once."""

    dials = False
    MAX_VETTING = 4
    MAX_WAITING = 16

    def __init__(self, listener: socket.socket, vet: Vet | None = None) -> None:
        self.listener = listener
        self.vet = vet
        name = listener.getsockname()
        self.where = name if isinstance(name, str) else f"{name[0]}:{name[1]}"  # a Unix socket's path, or HOST:PORT
        self._arrivals: asyncio.Queue[socket.socket] = asyncio.Queue()
        self._vetting: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            full = self._arrivals.qsize() + len(self._vetting) >= self.MAX_WAITING
            if full or (self.vet is not None and len(self._vetting) >= self.MAX_VETTING):
                sock.close()
            elif self.vet is None:
                self._arrivals.put_nowait(sock)
            else:
                task = asyncio.ensure_future(self._vetted(self.vet, sock))
                self._vetting.add(task)
                task.add_done_callback(self._vetting.discard)

    async def _vetted(self, vet: Vet, sock: socket.socket) -> None:
        """``sock`` among the arrivals once it passes ``vet`` (which closes it otherwise)."""
        with contextlib.suppress(OSError, TimeoutError):
            await vet(sock)
            self._arrivals.put_nowait(sock)

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._accept_forever())
        try:
            async with asyncio.timeout(wait_s):
                sock = await self._arrivals.get()
        except TimeoutError:
            raise WaitedOut(errno.ETIMEDOUT, f"nobody came back within {wait_s or 0:.0f} s") from None
        return await driven(make, sock)

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        for task in self._vetting:
            task.cancel()  # the vet closes its socket as it ends
        while not self._arrivals.empty():
            self._arrivals.get_nowait().close()
        with contextlib.suppress(OSError):
            self.listener.close()
