"""Sending one transfer over several connections: which connection carries each chunk, and
the further connections themselves.

The first connection's machine numbers every chunk (it owns the file list); the dealer
hands each numbered chunk to the connection the scheduler picks (protocol/scheduler.py:
weighted by each connection's measured delivery rate and what it already carries).
Further connections join after the receiver has accepted the first batch, so the first
byte never waits for them. A further connection that breaks gives its unacknowledged
chunks back to be dealt to the others, and comes back under the transfer's retry policy;
the transfer goes on while any connection is left.
"""

from __future__ import annotations

import asyncio
import functools
import operator
from collections.abc import Awaitable, Callable

from msgspec import Struct

from rtransfer.buffers import SENDER_ROOM, BufferPool
from rtransfer.errors import RtransferError
from rtransfer.protocol.events import ChunkRejected, ChunksAcked, Event, Retransmitted, StreamJoined
from rtransfer.protocol.messages import Data
from rtransfer.protocol.sender import SenderMachine
from rtransfer.report import Reporter
from rtransfer.session.connection import Connection, cancel_all, now
from rtransfer.session.outcome import worth_reconnecting
from rtransfer.session.scheduler import Scheduler
from rtransfer.stats import TransferStats
from rtransfer.transport.reconnect import Outage, keep_connected
from rtransfer.transport.retry import Backoff, RetryPolicy
from rtransfer.transport.source import Way


def sender(conn: Connection) -> SenderMachine:
    assert isinstance(conn.machine, SenderMachine)
    return conn.machine


class Dealer:
    """The connections of one attempt at a transfer, and which of them each numbered chunk goes on.

    ``machine`` is the first connection's (it numbers the chunks); ``wake`` is set whenever a
    connection may take more (an ACK, a drained transport, a new connection)."""

    def __init__(self, machine: SenderMachine, pool: BufferPool, stats: TransferStats, wake: asyncio.Event) -> None:
        self.machine = machine
        self.pool = pool
        self.stats = stats
        self.wake = wake
        manifest = machine.manifest
        self.scheduler = Scheduler(max_in_flight_bytes=manifest.window * manifest.chunk_bytes)
        self.links: dict[int, Connection] = {}
        self.tasks: list[asyncio.Task[None]] = []
        # Orders sent a second time because the transfer waited for them, and whether a copy has been
        # acknowledged yet: the second acknowledgement is not progress.
        self.hedged: dict[int, bool] = {}

    def add(self, stream: int, conn: Connection) -> None:
        self.links[stream] = conn
        conn.on_writable = functools.partial(self._writable_again, conn)
        self.scheduler.add(stream, now())
        self.wake.set()

    def _writable_again(self, conn: Connection) -> None:
        self.pool.recycle(sender(conn).take_written(conn.queued_bytes))
        self.wake.set()

    def can_take(self) -> bool:
        return self._pick(1) is not None

    async def deal(self, chunk: Data) -> None:
        """Send ``chunk`` on the connection that would deliver it soonest, once one can take it."""
        nbytes = len(chunk.payload)
        if self.machine.encrypted:
            await self.pool.room(SENDER_ROOM)  # for its ciphertext
        while (stream := self._pick(nbytes)) is None:
            self.wake.clear()
            await self.wake.wait()
        conn = self.links[stream]  # nothing awaited since the pick: it still has room
        sender(conn).send_data(chunk, now())
        self.scheduler.sent(stream, chunk.order, nbytes, now())
        conn.flush()
        if len(self.links) == 1:
            await conn.drain()  # the only connection: wait here, holding one ciphertext, not a window of them
        self.pool.recycle(sender(conn).take_written(conn.queued_bytes))

    def _pick(self, nbytes: int) -> int | None:
        """The scheduler's choice among the connections whose transport takes more now, once its
        window has room (else wait: see Scheduler.pick). Waiting for one connection's transport to
        drain would hold every other back: on a long path a fresh connection's first chunk sits in
        its buffer for many round trips of slow start."""
        for number, conn in self.links.items():
            self.scheduler.pause(number, not conn.writable)
        stream = self.scheduler.pick(nbytes)
        return stream if stream is not None and sender(self.links[stream]).can_send() else None

    async def hedge(self) -> None:
        """While the transfer's window is full, the chunk it waits for may be stuck behind a slow
        connection: once it is late, send a copy on a faster one (the receiver keeps whichever
        comes first). A copy, so the two connections never share a buffer one of them may recycle.
        A connection that has stopped acknowledging altogether is marked stalled first, so it gets
        no new chunks; its own come back this way, one by one, as the transfer waits for each."""
        self.scheduler.check(now())
        oldest = self.machine.oldest_undelivered
        if oldest is None or oldest in self.hedged:
            return
        stream = self.scheduler.late(oldest, now())
        if stream is None or not sender(self.links[stream]).can_send():
            return
        original = next(
            (c for conn in self.links.values() for c in sender(conn).unacked_chunks() if c.order == oldest), None
        )
        if original is None:
            return
        self.hedged[oldest] = False
        copy = self.pool.get(len(original.payload))
        copy[:] = original.payload
        self.stats.retransmits += 1
        chunk = Data(0, original.file_index, original.offset, memoryview(copy), original.kind, original.order)
        sender(self.links[stream]).send_data(chunk, now())
        self.scheduler.sent(stream, oldest, len(copy), now())
        self.links[stream].flush()

    def first_acks(self, event: ChunksAcked) -> int:
        """The file bytes ``event`` acknowledges for the first time (not a hedged chunk's second copy)."""
        total = 0
        for order, size in zip(event.orders, event.sizes, strict=True):
            if self.hedged.get(order) is True:
                continue
            if order in self.hedged:
                self.hedged[order] = True
            total += size
        return total

    def acked(self, stream: int, event: ChunksAcked) -> None:
        self.scheduler.acked(stream, event.orders, now())

    def lost(self, stream: int, conn: Connection) -> None:
        """A further connection is gone: what it never saw acknowledged is dealt to the others."""
        if self.links.get(stream) is conn:
            del self.links[stream]
            self.scheduler.remove(stream)
        undelivered = self.machine.undelivered
        chunks = [c for c in sender(conn).unacked_chunks() if c.order in undelivered]
        taken = {id(c.payload) for c in chunks}
        self.pool.recycle(b for b in conn.leftover_buffers() if id(b) not in taken)
        chunks.sort(key=operator.attrgetter("order"))
        self.stats.retransmits += len(chunks)  # sent again, on another connection
        self.tasks.append(asyncio.ensure_future(self._deal_again(chunks)))

    async def _deal_again(self, chunks: list[Data]) -> None:
        for chunk in chunks:
            await self.deal(chunk)

    async def close(self) -> None:
        await cancel_all(self.tasks)

    def rates(self) -> list[dict[str, object]]:
        """Per connection, for the progress events: measured rate, bytes in flight, bytes queued in its
        transport (not yet taken by the kernel), and whether it is fed: not while stalled, nor while
        its queue is above the transport's high-water mark."""
        return [
            {
                "stream": stream,
                "path": conn.route.value,
                "rate_bps": round(self.scheduler.rate_bps(stream) or 0.0),
                "in_flight_bytes": self.scheduler.bytes_in_flight(stream),
                "queued_bytes": conn.queued_bytes,
                "stalled": self.scheduler.is_stalled(stream),
                "paused": not conn.writable,
            }
            for stream, conn in sorted(self.links.items())
        ]


class StreamContext(Struct, frozen=True):
    """What a further connection needs from its transfer: where connections come from and how
    one is made for a stream, when the transfer is done, where its events go, and the policy."""

    way: Way
    make: Callable[[int], Connection]
    done: asyncio.Event
    on_acked: Callable[[int, ChunksAcked], Awaitable[None]]
    on_event: Callable[[Event], Awaitable[None]]
    reporter: Reporter
    policy: RetryPolicy
    timeout_s: float


class FurtherStream:
    """One further connection of a transfer, reconnected under the transfer's retry policy."""

    def __init__(self, dealer: Dealer, links: StreamContext, stream: int) -> None:
        self.dealer = dealer
        self.links = links
        self.stream = stream
        self.outage = Outage(Backoff(links.policy), self._say)

    async def run(self) -> None:
        links = self.links
        try:
            await keep_connected(
                links.way.further(self.stream),
                functools.partial(links.make, self.stream),
                self._carry,
                self.outage,
                self._worth_another,
                links.timeout_s,
            )
        except RtransferError as exc:
            self._say(f"{exc.message}; going on without it")

    @staticmethod
    def _worth_another(error: RtransferError) -> bool:
        return worth_reconnecting(error, started=True, resumable=True, waits_for_peer=False)

    def _say(self, message: str) -> None:
        self.links.reporter.warning(f"stream {self.stream}: {message}")

    async def _carry(self, conn: Connection) -> None:
        """Run one connection of this stream; if it breaks, its chunks go to the others."""
        try:
            await conn.run(self.links.done, functools.partial(self.handle, conn))
        except RtransferError:
            self.dealer.lost(self.stream, conn)
            self.dealer.stats.reconnects += 1
            raise

    async def handle(self, conn: Connection, event: Event) -> None:
        if isinstance(event, StreamJoined):
            self.dealer.add(self.stream, conn)
        elif isinstance(event, ChunksAcked):
            self.outage.progress += 1
            await self.links.on_acked(self.stream, event)
        elif isinstance(event, Retransmitted | ChunkRejected):
            await self.links.on_event(event)
