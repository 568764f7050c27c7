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
from typing import TYPE_CHECKING

from rtransfer.errors import RtransferError
from rtransfer.pipeline import SENDER_ROOM
from rtransfer.protocol.events import ChunksAcked, Event, IntegrityFailure, Retransmitted, StreamJoined
from rtransfer.protocol.frames import Data
from rtransfer.protocol.scheduler import Scheduler
from rtransfer.protocol.sender import SenderMachine
from rtransfer.retry import Backoff
from rtransfer.session.connection import Connection, connect, now
from rtransfer.session.outcome import worth_reconnecting

if TYPE_CHECKING:
    from rtransfer.session.send import SendAttempt


def sender(conn: Connection) -> SenderMachine:
    assert isinstance(conn.machine, SenderMachine)
    return conn.machine


class Dealer:
    """The connections of one attempt at a transfer, and which of them each numbered chunk goes on."""

    def __init__(self, attempt: SendAttempt) -> None:
        self.attempt = attempt
        manifest = attempt.machine.manifest
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
        self.attempt.window_open.set()

    def _writable_again(self, conn: Connection) -> None:
        self.attempt.pool.recycle(sender(conn).take_written(conn.queued_bytes))
        self.attempt.window_open.set()

    def open_further(self) -> None:
        """Open the further connections, all at once, once the transfer has started on the first."""
        for stream in range(1, self.attempt.machine.manifest.streams):
            self.tasks.append(asyncio.ensure_future(FurtherStream(self, stream).run()))

    def can_take(self) -> bool:
        return self._pick(1) is not None

    async def deal(self, chunk: Data) -> None:
        """Send ``chunk`` on the connection that would deliver it soonest, once one can take it."""
        nbytes = len(chunk.payload)
        if self.attempt.machine.encrypted:
            await self.attempt.pool.room(SENDER_ROOM)  # for its ciphertext
        while (stream := self._pick(nbytes)) is None:
            self.attempt.window_open.clear()
            await self.attempt.window_open.wait()
        conn = self.links[stream]  # nothing awaited since the pick: it still has room
        sender(conn).send_data(chunk, now())
        self.scheduler.sent(stream, chunk.order, nbytes, now())
        conn.flush()
        if len(self.links) == 1:
            await conn.drain()  # the only connection: wait here, holding one ciphertext, not a window of them
        self.attempt.pool.recycle(sender(conn).take_written(conn.queued_bytes))

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
        oldest = self.attempt.machine.oldest_undelivered
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
        copy = self.attempt.pool.get(len(original.payload))
        copy[:] = original.payload
        self.attempt.stats.retransmits += 1
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
        undelivered = self.attempt.machine.undelivered
        chunks = [c for c in sender(conn).unacked_chunks() if c.order in undelivered]
        taken = {id(c.payload) for c in chunks}
        self.attempt.pool.recycle(b for b in conn.leftover_buffers() if id(b) not in taken)
        chunks.sort(key=operator.attrgetter("order"))
        self.attempt.stats.retransmits += len(chunks)  # sent again, on another connection
        self.tasks.append(asyncio.ensure_future(self._deal_again(chunks)))

    async def _deal_again(self, chunks: list[Data]) -> None:
        for chunk in chunks:
            await self.deal(chunk)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def rates(self) -> list[dict[str, object]]:
        """Per connection, for the progress events: measured rate, bytes in flight, bytes queued in its
        transport (not yet taken by the kernel), and whether it is fed: not while stalled, nor while
        its queue is above the transport's high-water mark."""
        return [
            {
                "stream": stream,
                "rate_bps": round(self.scheduler.rate_bps(stream) or 0.0),
                "in_flight_bytes": self.scheduler.bytes_in_flight(stream),
                "queued_bytes": conn.queued_bytes,
                "stalled": self.scheduler.is_stalled(stream),
                "paused": not conn.writable,
            }
            for stream, conn in sorted(self.links.items())
        ]


class FurtherStream:
    """One further connection of a transfer, reconnected under the transfer's retry policy."""

    def __init__(self, dealer: Dealer, stream: int) -> None:
        self.dealer = dealer
        self.stream = stream
        self.attempt = dealer.attempt
        self.config = dealer.attempt.transfer.config

    async def run(self) -> None:
        backoff = Backoff(self.config.connect_policy)
        while not self.attempt.done.is_set():
            try:
                conn = await connect(
                    self.config.host,
                    self.config.port,
                    self.config.timeout_s,
                    backoff,
                    self.attempt.reporter,
                    functools.partial(self.attempt.transfer.connection, self.stream),
                )
            except RtransferError as exc:
                self.attempt.reporter.warning(f"stream {self.stream}: {exc.message}; going on without it")
                return
            if not await self._carry(conn, backoff):
                return

    async def _carry(self, conn: Connection, backoff: Backoff) -> bool:
        """Run one connection of this stream; whether to try another after it."""
        try:
            await conn.run(self.attempt.done, functools.partial(self.handle, conn))
            return False
        except RtransferError as exc:
            self.dealer.lost(self.stream, conn)
            self.attempt.stats.reconnects += 1
            if not worth_reconnecting(exc, started=True, resumable=True, waits_for_peer=False):
                self.attempt.reporter.warning(f"stream {self.stream}: {exc.message}; going on without it")
                return False
            delay = backoff.next_delay()
            if delay is None:
                return False
            self.attempt.reporter.warning(f"stream {self.stream}: {exc.message}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)
            return True

    async def handle(self, conn: Connection, event: Event) -> None:
        if isinstance(event, StreamJoined):
            self.dealer.add(self.stream, conn)
        elif isinstance(event, ChunksAcked):
            await self.attempt.on_stream_acked(self.stream, event)
        elif isinstance(event, Retransmitted | IntegrityFailure):
            await self.attempt.handle(event)
