"""Going direct while relayed: a transfer that met its peer at a relay tries to reach it
without the relay, as magic-wormhole's transit does.

Inside the relayed session (sealed HINTS frames) each side says where it listens, on an
ephemeral port opened for the try, and dials where the other listens; where a STUN server told
both sides how their NATs map the ports they punch from, both also punch (punch.py), at the
moment the receiver names (PUNCH), half a round trip apart. Every connection
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
from enum import Enum

from msgspec import Struct

from rtransfer.protocol.messages import Hints
from rtransfer.transport.punch import PUNCH_WINDOW_S, PunchPort, punch, syn_wait
from rtransfer.transport.source import Dial, Listen, P, WaitedOut, Way, connect_socket, driven, recv_exact

NONCE_BYTES = 16
PROOF_BYTES = 32
PROVE_TIMEOUT_S = 5.0  # a connection that has not proved the key by then (from its accept) is dropped
MAX_UNPROVED = 4  # connections proving the key at once; another arriving meanwhile is closed at once


def _derive(session_key: bytes, label: bytes) -> bytes:
    return hmac.new(session_key, b"rtransfer direct v1 " + label, hashlib.sha256).digest()


def direct_secret(session_key: bytes) -> bytes:
    """What the direct connections' key exchange runs on instead of the code."""
    return _derive(session_key, b"handshake").hex().encode()


def proof(key: bytes, is_sender: bool, nonces: bytes) -> bytes:
    """One side's answer, bound to its role and both nonces. The roles come from sender and
    receiver, not from who dialed: in a simultaneous open (punch.py) both sides dialed."""
    return hmac.new(key, (b"sender" if is_sender else b"receiver") + nonces, hashlib.sha256).digest()


class Refused(ConnectionError):
    """The other end of a direct connection did not prove the session's key."""


async def prove(sock: socket.socket, key: bytes, is_sender: bool) -> bytes:
    """Both ends prove the key; returns the connection's id (both nonces), the same at both ends.
    A connection that fails (or says nothing in time) is closed."""
    try:
        async with asyncio.timeout(PROVE_TIMEOUT_S):
            return await _prove(sock, key, is_sender)
    except BaseException:
        sock.close()
        raise


async def _prove(sock: socket.socket, key: bytes, is_sender: bool) -> bytes:
    """The receiver speaks first (its nonce), the sender answers (its nonce and proof), the
    receiver proves last."""
    loop = asyncio.get_running_loop()
    if is_sender:
        nonces = await recv_exact(sock, NONCE_BYTES) + secrets.token_bytes(NONCE_BYTES)
        await loop.sock_sendall(sock, nonces[NONCE_BYTES:] + proof(key, True, nonces))
        if not hmac.compare_digest(await recv_exact(sock, PROOF_BYTES), proof(key, False, nonces)):
            raise Refused("the receiver did not prove the session's key")
        return nonces
    mine = secrets.token_bytes(NONCE_BYTES)
    await loop.sock_sendall(sock, mine)
    answer = await recv_exact(sock, NONCE_BYTES + PROOF_BYTES)
    nonces = mine + answer[:NONCE_BYTES]
    if not hmac.compare_digest(answer[NONCE_BYTES:], proof(key, True, nonces)):
        raise Refused("a connection did not prove the session's key")
    await loop.sock_sendall(sock, proof(key, False, nonces))
    return nonces


class How(Enum):
    """How a direct connection was made: the ``how`` of the moved event."""

    LISTENED = "listened"  # one side dialed where the other listens
    PUNCHED = "punched"  # both dialed at once, through their NATs


class Found(Struct):
    sock: socket.socket
    how: How
    dialed: tuple[str, int] | None  # where this side dialed it (LISTENED), for further connections


class DirectTry:
    """One side's try at a direct path, beside one relayed connection: its listener (``hints``
    says where), the connections it makes to the peer's hints and those it accepts, and, with
    ``ports`` (one per connection of the transfer, their mappings learnt), the punched ones.
    Each is kept once it has proved the key: one that may carry the transfer by id
    (``proved``), a further punched one by its number (``streams``). ``close`` ends the try;
    the chosen connection is taken out first (``take``)."""

    def __init__(self, session_key: bytes, is_sender: bool, local_host: str, ports: list[PunchPort]) -> None:
        self.key = _derive(session_key, b"proof")
        self.secret = direct_secret(session_key)
        self.is_sender = is_sender
        self.listener: socket.socket | None = socket.create_server((local_host, 0))
        self.listener.setblocking(False)
        self.ports = ports
        self.proved: dict[bytes, Found] = {}
        loop = asyncio.get_running_loop()
        self.streams: list[asyncio.Future[socket.socket]] = [loop.create_future() for _ in ports[1:]]
        self.changed = asyncio.Event()  # a connection proved the key, a dial ended, or the peer gave up
        self.dials: list[asyncio.Task[None]] = []  # to the peer's addresses, and the punches
        self.peer_gave_up = False  # the peer's dials all failed (it said so)
        self.unproved = 0  # accepted connections still proving the key
        self.tasks: list[asyncio.Task[None]] = [asyncio.ensure_future(self._accept_forever(self.listener, None))]
        # What makes the punched connections, handed on with the further ones (``take``).
        self.punching = [asyncio.ensure_future(self._accept_forever(p.listener, n)) for n, p in enumerate(ports)]

    def hints(self) -> Hints:
        assert self.listener is not None
        host, port = self.listener.getsockname()[:2]
        return Hints(((host, port),), tuple(p.mapped for p in self.ports if p.mapped is not None))

    def dial(self, addresses: tuple[tuple[str, int], ...]) -> None:
        """Dial the peer's addresses: once per try (a peer that repeats its HINTS gets no more dials)."""
        if self.dials:
            return
        self.dials += [asyncio.ensure_future(self._dial(address)) for address in addresses]
        self.tasks += self.dials

    def punch(self, remotes: tuple[tuple[str, int], ...], delay_s: float, rtt_s: float | None) -> None:
        """After ``delay_s``, dial each punched address from the port of the same number (``rtt_s``:
        the relayed round trip, if known, which says how long a SYN is worth waiting for)."""
        deadline = asyncio.get_running_loop().time() + delay_s + PUNCH_WINDOW_S
        wait_s = syn_wait(rtt_s)
        for n, (port, remote) in enumerate(zip(self.ports, remotes, strict=False)):
            task = asyncio.ensure_future(self._punch(n, port.local, remote, delay_s, deadline, wait_s))
            self.punching.append(task)
            if n == 0:
                self.dials.append(task)

    def hold(self, task: asyncio.Task[None]) -> None:
        """A task that will dial (a punch waiting for its moment): until it ends, the dials are not all over."""
        self.dials.append(task)
        self.tasks.append(task)

    async def dials_failed(self) -> bool:
        """Once every dial of ours has ended: whether none of them made a proved connection."""
        await asyncio.gather(*self.dials, return_exceptions=True)
        return not self.proved

    def gave_up(self) -> None:
        """The peer says its dials all failed: only ours can still succeed."""
        self.peer_gave_up = True
        self.changed.set()

    async def _accept_forever(self, listener: socket.socket | None, stream: int | None) -> None:
        loop = asyncio.get_running_loop()
        how = How.LISTENED if stream is None else How.PUNCHED
        while listener is not None:
            sock, _ = await loop.sock_accept(listener)
            if self.unproved >= MAX_UNPROVED:
                sock.close()  # whoever found the port holds no more of our descriptors, however many it opens
                continue
            sock.setblocking(False)
            self.unproved += 1
            self.tasks.append(asyncio.ensure_future(self._keep(Found(sock, how, None), stream, accepted=True)))

    async def _dial(self, address: tuple[str, int]) -> None:
        try:
            await self._keep(Found(await connect_socket(*address, PROVE_TIMEOUT_S), How.LISTENED, address), None)
        except OSError:
            pass
        finally:
            self.changed.set()

    async def _punch(
        self, n: int, local: tuple[str, int], remote: tuple[str, int], delay: float, end: float, wait_s: float
    ) -> None:
        try:
            await asyncio.sleep(delay)
            if not self._punched(n):
                await self._keep(Found(await punch(local, remote, end, wait_s), How.PUNCHED, None), n)
        except OSError:
            pass
        finally:
            self.changed.set()

    def _punched(self, n: int) -> bool:
        if n == 0:
            return any(found.how is How.PUNCHED for found in self.proved.values())
        return self.streams[n - 1].done()

    async def _keep(self, found: Found, stream: int | None, accepted: bool = False) -> None:
        """``stream``: the number of the punching port it came through (None: not punched)."""
        try:
            ident = await prove(found.sock, self.key, self.is_sender)
        except (OSError, TimeoutError):
            return
        finally:
            self.unproved -= accepted
        if stream is not None and self._punched(stream):
            found.sock.close()  # a second connection for the same pair of ports: the first stays
        elif stream:
            self.streams[stream - 1].set_result(found.sock)
        else:
            self.proved[ident] = found
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
        """The chosen connection, and where further ones come from: the other punched connections,
        or, for one made through a listener, dialed where it was, each proving the key as it did,
        or (the peer dialed it) accepted on our listener, which stays open."""
        found = self.proved.pop(ident)
        vet = functools.partial(prove, key=self.key, is_sender=self.is_sender)
        rest: Way
        if found.how is How.PUNCHED:
            rest = Punched(self.streams, self.punching, self.ports)
            self.streams, self.punching, self.ports = [], [], []
        elif found.dialed is not None:
            rest = Dial(*found.dialed, vet=vet)
        else:
            assert self.listener is not None
            listener, self.listener = self.listener, None
            rest = Listen(listener, vet=vet)
        return DirectPath(found.sock, self.secret, rest, found.how)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for found in self.proved.values():
            found.sock.close()
        self.proved.clear()
        _drop_punched(self.streams, self.punching, self.ports)
        if self.listener is not None:
            self.listener.close()


def _drop_punched(
    streams: list[asyncio.Future[socket.socket]], tasks: list[asyncio.Task[None]], ports: list[PunchPort]
) -> None:
    for task in tasks:
        task.cancel()
    for stream in streams:
        if stream.done() and not stream.cancelled():
            stream.result().close()
        stream.cancel()
    for port in ports:
        port.close()


class Punched(Way):
    """The further connections of a punched path, each punched in the same try as the first, from
    a port of its own. A stream that did not get through, or breaks, can't be punched again
    alone: the transfer goes on without it (the next try, after a move, punches them all)."""

    dials = False
    where = "a punched connection"

    def __init__(
        self, streams: list[asyncio.Future[socket.socket]], tasks: list[asyncio.Task[None]], ports: list[PunchPort]
    ) -> None:
        self.streams = streams
        self.tasks = tasks
        self.ports = ports
        self.taken: set[int] = set()  # handed to a connection, which owns the socket from then on

    def further(self, stream: int) -> Way:
        return _PunchedStream(self, stream)

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        raise WaitedOut(errno.ENOTCONN, "a punched path's first connection is opened once")

    async def take(self, stream: int) -> socket.socket:
        """Further connection ``stream``'s socket, once: when its punch has proved the key."""
        if stream in self.taken or not 0 < stream <= len(self.streams):
            raise WaitedOut(errno.ENOTCONN, "it was not punched")
        self.taken.add(stream)
        try:
            async with asyncio.timeout(PUNCH_WINDOW_S + PROVE_TIMEOUT_S):
                return await asyncio.shield(self.streams[stream - 1])
        except TimeoutError:
            raise WaitedOut(errno.ETIMEDOUT, "it was not punched in time") from None

    def close(self) -> None:
        untaken = [s for n, s in enumerate(self.streams, 1) if n not in self.taken]
        _drop_punched(untaken, self.tasks, self.ports)
        self.streams, self.tasks, self.ports = [], [], []


class _PunchedStream(Way):
    dials = False

    def __init__(self, punched: Punched, stream: int) -> None:
        self.punched = punched
        self.stream = stream
        self.where = f"punched connection {stream}"

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        return await driven(make, await self.punched.take(self.stream))


class DirectPath(Way):
    """The source of a transfer's connections once it has gone direct: the chosen connection
    first, then the further ones from ``rest`` (``DirectTry.take``), keyed by ``secret``."""

    def __init__(self, sock: socket.socket, secret: bytes, rest: Way, how: How) -> None:
        self._secret = secret
        self.rest = rest
        self.how = how.value
        self.dials = rest.dials
        host, port = sock.getpeername()[:2]
        self.where = f"{host}:{port}"
        self._first: socket.socket | None = sock

    @property
    def secret(self) -> bytes | None:
        return self._secret

    def further(self, stream: int) -> Way:
        return self.rest.further(stream)

    async def open(self, make: Callable[[], P], timeout_s: float | None, wait_s: float | None) -> P:
        if self._first is not None:
            sock, self._first = self._first, None
            return await driven(make, sock)
        return await self.rest.open(make, timeout_s, wait_s)

    def close(self) -> None:
        if self._first is not None:
            self._first.close()
        self.rest.close()
