"""The sources of connections: each ``open`` hands back one connected stream, driven by the
protocol object ``make`` builds (a Connection), or raises OSError for the reconnect loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from rtransfer.errors import UnknownHost, reason

P = TypeVar("P", bound=asyncio.BaseProtocol)
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class ConnectionSource(Protocol):
    """One way of reaching the peer. ``dials``: a failed ``open`` is worth a pause before the
    next (a listener's ``open`` is itself the wait). ``where`` names the peer in messages."""

    dials: bool
    where: str

    async def open(self, make: Callable[[], P], timeout_s: float | None) -> P: ...

    def close(self) -> None: ...


class Dial:
    """Connect to HOST:PORT. Each attempt gets ``timeout_s``: a host that drops our SYNs would
    otherwise hold one for minutes."""

    dials = True

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.where = f"{host}:{port}"

    async def open(self, make: Callable[[], P], timeout_s: float | None) -> P:
        try:
            async with asyncio.timeout(timeout_s):
                _, proto = await asyncio.get_running_loop().create_connection(make, self.host, self.port)
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout_s or 0:g} s") from None
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                raise UnknownHost(f"could not connect to {self.where}: {reason(exc)}") from None
            raise
        return proto

    def close(self) -> None:
        pass


class Accept:
    """Take connections arriving on a listening socket (opened early by the CLI, see listen.py).
    One task accepts; ``open`` takes the next arrival, waiting at most ``timeout_s``, and wraps
    it in ``make``'s protocol, so a listener's key exchange can start before anyone connects."""

    dials = False

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        host, port = listener.getsockname()[:2]
        self.where = f"{host}:{port}"
        self._arrivals: asyncio.Queue[socket.socket] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            self._arrivals.put_nowait(sock)

    async def open(self, make: Callable[[], P], timeout_s: float | None) -> P:
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._accept_forever())
        try:
            async with asyncio.timeout(timeout_s):
                sock = await self._arrivals.get()
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"nobody came back within {timeout_s or 0:.0f} s") from None
        _, proto = await asyncio.get_running_loop().connect_accepted_socket(make, sock)
        return proto

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        while not self._arrivals.empty():
            self._arrivals.get_nowait().close()
        with contextlib.suppress(OSError):
            self.listener.close()
