"""Going direct while relayed: a transfer that met its peer at a relay tries to reach it
without the relay, as magic-wormhole's transit does.

Inside the relayed session (sealed HINTS frames) each side says where it listens, on an
ephemeral port opened for the try, and dials where the other listens. Every connection
made either way must first prove the session's key (a challenge and answer each way, bound
to both nonces and to the prover's role), so a stranger who finds the port gets nothing,
and no proof can be replayed or reflected. The sender picks the first proved connection and
names it inside the relayed session (GO_DIRECT, by its nonces), so both sides move at the
same point of that ordered stream. The protocol's own handshake then runs over the direct
connection, keyed by a secret both sides derive from the relayed session, not from the code.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import hmac
import secrets
import socket
from collections.abc import Callable

from rtransfer.transport.source import Dial, Listen, P, Way, connect_socket, driven

NONCE_BYTES = 16
PROOF_BYTES = 32
PROVE_TIMEOUT_S = 5.0  # a connection that has not proved the key by then (from its accept) is dropped
MAX_UNPROVED = 4  # connections proving the key at once; another arriving meanwhile is closed at once


def _derive(session_key: bytes, label: bytes) -> bytes:
    return hmac.new(session_key, b"rtransfer direct v1 " + label, hashlib.sha256).digest()


def direct_secret(session_key: bytes) -> bytes:
    """What the direct connections' key exchange runs on instead of the code."""
    return _derive(session_key, b"handshake").hex().encode()


def proof(key: bytes, dialer: bool, is_sender: bool, nonces: bytes) -> bytes:
    """One side's answer: bound to which end of the TCP connection it is, its role, both nonces."""
    label = (b"dial " if dialer else b"accept ") + (b"sender" if is_sender else b"receiver")
    return hmac.new(key, label + nonces, hashlib.sha256).digest()


class Refused(ConnectionError):
    """The other end of a direct connection did not prove the session's key."""


async def _exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < n:
        more = await loop.sock_recv(sock, n - len(got))
        if not more:
            raise ConnectionResetError(errno.ECONNRESET, "closed while proving the key")
        got += more
    return got


async def prove(sock: socket.socket, key: bytes, dialer: bool, is_sender: bool) -> bytes:
    """Both ends prove the key; returns the connection's id (both nonces), the same at both ends.
    A connection that fails (or says nothing in time) is closed."""
    try:
        async with asyncio.timeout(PROVE_TIMEOUT_S):
            return await _prove(sock, key, dialer, is_sender)
    except BaseException:
        sock.close()
        raise


async def _prove(sock: socket.socket, key: bytes, dialer: bool, is_sender: bool) -> bytes:
    loop = asyncio.get_running_loop()
    if dialer:
        nonces = await _exact(sock, NONCE_BYTES) + secrets.token_bytes(NONCE_BYTES)
        await loop.sock_sendall(sock, nonces[NONCE_BYTES:] + proof(key, True, is_sender, nonces))
        if not hmac.compare_digest(await _exact(sock, PROOF_BYTES), proof(key, False, not is_sender, nonces)):
            raise Refused("the listener did not prove the session's key")
        return nonces
    mine = secrets.token_bytes(NONCE_BYTES)
    await loop.sock_sendall(sock, mine)
    answer = await _exact(sock, NONCE_BYTES + PROOF_BYTES)
    nonces = mine + answer[:NONCE_BYTES]
    if not hmac.compare_digest(answer[NONCE_BYTES:], proof(key, True, not is_sender, nonces)):
        raise Refused("a connection did not prove the session's key")
    await loop.sock_sendall(sock, proof(key, False, is_sender, nonces))
    return nonces


class DirectTry:
    """One side's try at a direct path, beside one relayed connection: its listener (``hints``
    says where), the connections it makes to the peer's hints and those it accepts, each kept
    once it has proved the key, by id. ``close`` ends the try; the chosen connection is taken
    out first (``take``)."""

    def __init__(self, session_key: bytes, is_sender: bool, local_host: str) -> None:
        self.key = _derive(session_key, b"proof")
        self.secret = direct_secret(session_key)
        self.is_sender = is_sender
        self.listener: socket.socket | None = socket.create_server((local_host, 0))
        self.listener.setblocking(False)
        self.proved: dict[bytes, tuple[socket.socket, tuple[str, int] | None]] = {}  # id -> (socket, where dialed)
        self.changed = asyncio.Event()  # a connection proved the key, a dial ended, or the peer gave up
        self.dials: list[asyncio.Task[None]] = []
        self.peer_gave_up = False  # the peer's dials all failed (it said so)
        self.unproved = 0  # accepted connections still proving the key
        self.tasks: list[asyncio.Task[None]] = [asyncio.ensure_future(self._accept_forever())]

    def hints(self) -> tuple[tuple[str, int], ...]:
        assert self.listener is not None
        host, port = self.listener.getsockname()[:2]
        return ((host, port),)

    def dial(self, addresses: tuple[tuple[str, int], ...]) -> None:
        """Dial the peer's addresses: once per try (a peer that repeats its HINTS gets no more dials)."""
        if self.dials:
            return
        self.dials += [asyncio.ensure_future(self._dial(address)) for address in addresses]
        self.tasks += self.dials

    async def dials_failed(self) -> bool:
        """Once every dial of ours has ended: whether none of them made a proved connection."""
        await asyncio.gather(*self.dials, return_exceptions=True)
        return not any(dialed is not None for _, dialed in self.proved.values())

    def gave_up(self) -> None:
        """The peer says its dials all failed: only ours can still succeed."""
        self.peer_gave_up = True
        self.changed.set()

    async def _accept_forever(self) -> None:
        loop, listener = asyncio.get_running_loop(), self.listener
        assert listener is not None
        while True:
            sock, _ = await loop.sock_accept(listener)
            if self.unproved >= MAX_UNPROVED:
                sock.close()  # whoever found the port holds no more of our descriptors, however many it opens
                continue
            sock.setblocking(False)
            self.unproved += 1
            self.tasks.append(asyncio.ensure_future(self._keep(sock, None)))

    async def _dial(self, address: tuple[str, int]) -> None:
        try:
            await self._keep(await connect_socket(*address, PROVE_TIMEOUT_S), address)
        except OSError:
            pass
        finally:
            self.changed.set()

    async def _keep(self, sock: socket.socket, dialed: tuple[str, int] | None) -> None:
        try:
            ident = await prove(sock, self.key, dialed is not None, self.is_sender)
        except (OSError, TimeoutError):
            return
        finally:
            self.unproved -= dialed is None
        self.proved[ident] = (sock, dialed)
        self.changed.set()

    async def first(self) -> bytes | None:
        """The sender's pick: the first connection to prove the key, by id; None once neither
        side's dials can make one any more."""
        while not self.proved:
            if self.peer_gave_up and all(task.done() for task in self.dials):
                return None
            self.changed.clear()
            await self.changed.wait()
        return next(iter(self.proved))

    async def named(self, ident: bytes) -> None:
        """The receiver: until the connection the sender named has proved the key here too."""
        while ident not in self.proved:
            self.changed.clear()
            await self.changed.wait()

    def take(self, ident: bytes) -> DirectPath:
        """The chosen connection, and where further ones come from: dialed where it was, each
        proving the key as it did; or (the peer dialed it) from our listener, which stays open."""
        sock, dialed = self.proved.pop(ident)
        vet = functools.partial(prove, key=self.key, dialer=dialed is not None, is_sender=self.is_sender)
        if dialed is not None:
            return DirectPath(sock, self.secret, Dial(*dialed, vet=vet))
        assert self.listener is not None
        listener, self.listener = self.listener, None
        return DirectPath(sock, self.secret, Listen(listener, vet=vet))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock, _ in self.proved.values():
            sock.close()
        self.proved.clear()
        if self.listener is not None:
            self.listener.close()


class DirectPath(Way):
    """The source of a transfer's connections once it has gone direct: the chosen connection
    first, then the further ones from ``rest`` (``DirectTry.take``), keyed by ``secret``."""

    def __init__(self, sock: socket.socket, secret: bytes, rest: Dial | Listen) -> None:
        self._secret = secret
        self.rest = rest
        self.dials = rest.dials
        self.where = rest.where
        self._first: socket.socket | None = sock

    @property
    def secret(self) -> bytes | None:
        return self._secret

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        if self._first is not None:
            sock, self._first = self._first, None
            return await driven(make, sock)
        return await self.rest.open(make, timeout_s, wait_s)

    def close(self) -> None:
        if self._first is not None:
            self._first.close()
        self.rest.close()
