"""Reaching the peer through a magic-wormhole transit relay, when neither side can accept a
connection. Both sides dial the relay and write one line, ``please relay TOKEN for side
SIDE``; when two connections with the same token (from different sides) are there, the relay
answers ``ok`` to both and copies bytes between them until either closes. From then on the
connection is the same as a direct one: the same handshake and AEAD run over it, so the relay
sees the HELLOs and ciphertext, nothing else.

Tokens: the first connection's comes from the code's nameplate (listen.nameplate), never from
its secret part; a ``--secret`` of the user's own goes through scrypt first, so that whoever
runs the relay can't cheaply test guesses at it. Once a connection has proved the code
(crypto.TransferKeys), every later one, a reconnect or a further stream, pairs under a token
derived from that session instead, which the relay cannot know; and its key exchange runs on
that session too, so a relay that cuts connections, or pairs us with a stranger, never gets a
second guess at the code.

What the relay sees: when each side connects, the tokens (one derived from the code's nameplate,
40 bits of the code it never learns the rest of), the HELLOs, and from then on ciphertext, whose
volume and timing tell how much moves (a single file's size, roughly).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import secrets
import socket
from collections.abc import Callable

from rtransfer.codes import nameplate
from rtransfer.crypto import TransferKeys
from rtransfer.transport.source import P, Route, WaitedOut, Way, connect_socket, driven
from rtransfer.workers import in_cpu

SCRYPT_N = 2**15  # 32 MiB and about 0.1 s per guess
_LINE_MAX = 64


def code_token(code: str) -> str:
    """The token of a transfer's first connection through a relay: 64 hex digits."""
    plate = nameplate(code)
    if plate is not None:
        return hashlib.sha256(b"rtransfer relay nameplate v1:" + plate.encode()).hexdigest()
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    kdf = Scrypt(salt=b"rtransfer relay secret v1", length=32, n=SCRYPT_N, r=8, p=1)
    return kdf.derive(code.strip().lower().encode()).hex()


def stream_token(secret: bytes, stream: int) -> str:
    """Connection number ``stream`` of a transfer whose keys are proved (0: the first, reconnecting)."""
    return hmac.new(secret, b"rtransfer relay stream %d" % stream, hashlib.sha256).hexdigest()


class Relay(Way):
    """Pair with the peer at a relay: under the token of ``code`` until ``keys`` are proved, then
    under one of theirs (connection ``stream`` of the transfer). The first connection waits there
    for the peer up to ``window_s``, or as long as it takes when ``patient`` (the side that made up
    the code, as a listener would); a reconnect waits what is left of the outage."""

    rendezvous = True
    server = True

    def __init__(
        self,
        host: str,
        port: int,
        code: str,
        keys: TransferKeys,
        window_s: float,
        patient: bool = False,
        stream: int = 0,
        side: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.window_s = window_s
        self.first_wait_s = None if patient else window_s
        self.side = side or secrets.token_hex(8)
        self.at = f"relay {host}:{port}"
        self._code = code
        self._keys = keys
        self._stream = stream
        self._code_token: str | None = None  # derived on the first open: scrypt's time is spent off the event loop
        self.direct: Way | None = None  # the path the transfer's connections take, once found
        self._found: Way | None = None  # found by the last relayed connection: the next open takes it

    @property
    def route(self) -> Route:
        return Route.DIRECT if self.direct is not None else Route.RELAY

    @property
    def where(self) -> str:  # type: ignore[override]
        return self.direct.where if self.direct is not None else self.at

    @property
    def how(self) -> str:  # type: ignore[override]
        return self.direct.how if self.direct is not None else "relay"

    @property
    def secret(self) -> bytes | None:
        return self.direct.secret if self.direct is not None else None

    @property
    def relayed(self) -> bool:
        return self.direct is None

    def go_direct(self, path: Way) -> None:
        """A relayed connection found a direct path: the next open takes it, and further
        connections follow it. When it breaks, the open after is at the relay again."""
        self._found = path

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        found, self._found = self._found, None
        self.close()
        if found is not None:
            self.direct = found
            return await found.open(make, timeout_s, wait_s)
        token = await self._token()
        sock = await connect_socket(self.host, self.port, timeout_s)
        wait = wait_s if wait_s is not None else self.first_wait_s
        try:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, f"please relay {token} for side {self.side}\n".encode())
            try:
                async with asyncio.timeout(wait):
                    answer = await _read_line(sock)
            except TimeoutError:
                raise WaitedOut(errno.ETIMEDOUT, f"waited {wait or 0:.0f} s") from None
            if answer != b"ok\n":
                raise ConnectionAbortedError(errno.ECONNABORTED, f"the relay answered {answer!r}")
        except BaseException:
            sock.close()
            raise
        return await driven(make, sock)

    async def _token(self) -> str:
        if self._keys.resume is not None:
            return stream_token(self._keys.resume, self._stream)
        if self._code_token is None:
            self._code_token = await in_cpu(code_token, self._code)
        return self._code_token

    def further(self, stream: int) -> Way:
        if self.direct is not None:
            return self.direct.further(stream)
        return Relay(self.host, self.port, "", self._keys, self.window_s, stream=stream, side=self.side)

    def close(self) -> None:
        for path in (self.direct, self._found):
            if path is not None:
                path.close()
        self.direct = self._found = None


async def _read_line(sock: socket.socket) -> bytes:
    """The relay's answer, a byte at a time: what follows it is the peer's, for the protocol."""
    loop = asyncio.get_running_loop()
    line = b""
    while not line.endswith(b"\n") and len(line) < _LINE_MAX:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise ConnectionResetError(errno.ECONNRESET, "the relay closed the connection")
        line += byte
    return line
