"""One TCP connection driven by one protocol machine: read loop, writes, timers.

This is the only place bytes move between a socket and a machine. It decides
nothing about the transfer: the attempt that owns it (send.py, recv.py) handles
the events it hands up, and outcome.py says what a failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from rtransfer.buffers import BufferPool
from rtransfer.crypto import TransferKeys
from rtransfer.errors import EXIT_AUTH, HandshakeError, NetworkError, RtransferError, WrongCode, reason
from rtransfer.protocol.constants import Phase
from rtransfer.protocol.errors import PeerFailed, PeerSilent, ProtocolError
from rtransfer.protocol.events import ChunkReady, Event, PackReady
from rtransfer.protocol.model import Buffer
from rtransfer.protocol.peer import Peer
from rtransfer.session.outcome import cause_of, to_error
from rtransfer.stats import TransferStats
from rtransfer.transport.reconnect import Moved
from rtransfer.transport.source import Route

INBOX_PAUSE_EVENTS = 2  # with QUEUE_CHUNKS, what keeps the largest chunks in the memory budget
CLOSE_GRACE_S = 2.0  # for the peer to read our ERROR frame before the connection is cut
TIMER_TICK_S = 0.2  # longest sleep between timer checks; deadlines move as frames flow
DISCARD_BYTES = 256 * 1024  # what a closing connection reads the peer's last bytes into
FRAME_BUFFERS = 2  # a DATA frame being read: its body, and the plaintext it is opened into

now = time.monotonic
Handler = Callable[[Event], Awaitable[None]]


class Connection(asyncio.BufferedProtocol):
    """The transport reads straight into the machine's buffers. Resulting events wait in a
    small inbox that ``pump`` hands to the attempt; while the inbox is full, reading pauses,
    which is how a slow disk pushes back on the peer."""

    def __init__(
        self,
        machine: Peer,
        pool: BufferPool | None = None,
        stats: TransferStats | None = None,
        route: Route = Route.DIRECT,
        keys: TransferKeys | None = None,
    ) -> None:
        """With a ``pool``, reading also pauses while a frame's buffers would not fit its budget;
        ``stats`` counts the bytes on the wire (and apart, those through a relay: ``route``).
        ``keys``: the transfer's, if this connection's exchange ran on its code (not over ssh,
        whose code is no secret): the first to open the peer's CONFIRM re-keys the transfer, and
        this one, if it ends having spent a guess, ends the transfer as a wrong code would."""
        self.machine = machine
        self._keys = keys
        self._one_guess = keys is not None and keys.resume is None
        self.stats = stats or TransferStats("")
        self.route = route
        self.relayed = route.relayed
        self.on_writable: Callable[[], None] | None = None  # the transport takes more again
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._inbox: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._error: RtransferError | None = None
        self._eof = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._closed_by_peer: asyncio.Future[None] = self._loop.create_future()  # EOF, or the connection lost
        self._peer_failed = False  # the peer's ERROR frame arrived: it closes, we need not wait for it
        self._peer_silent = False  # it heard nothing of ours for --timeout: nothing more will reach it
        # A relay may hold a small frame until the last one is ACKed (Nagle: the transit relay
        # doesn't set TCP_NODELAY), and Linux delays that ACK 40 ms: ACKing at once on a relayed
        # connection keeps each small frame of a try (HINTS, PING, PUNCH) from waiting 40 ms.
        self._quickack: socket.socket | None = None
        self._discard: memoryview | None = None  # after our ERROR frame: where the peer's bytes go unread

    # --- asyncio.BufferedProtocol --------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.relayed and hasattr(socket, "TCP_QUICKACK"):
                self._quickack = sock
        if self._pool is not None:
            self._pool.listen(self._pace_reading)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._discard is None and self._error is not None:
            # A failed machine has no buffer for more: asyncio would print a "Fatal error on
            # transport" dump under the one error line. What still comes is read and dropped.
            self._discard = memoryview(bytearray(DISCARD_BYTES))
        if self._discard is not None:
            return self._discard
        return self.machine.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.stats.wire_received += nbytes
        if self.relayed:
            self.stats.relay_bytes += nbytes
            if self._quickack is not None:  # re-armed each time: the kernel falls back to delaying
                self._quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if self._error is not None or self._discard is not None:
            return
        try:
            events = self.machine.buffer_updated(nbytes, now())
        except ProtocolError as exc:
            self._peer_failed = isinstance(exc, PeerFailed)
            self._stop(to_error(exc))
            return
        finally:
            self._note_keys()
        self.flush()
        if events:
            self._inbox.extend(events)
            self._wakeup.set()
        self._pace_reading()

    def _note_keys(self) -> None:
        if self._keys is not None and self._keys.resume is None and self.machine.keys_proved:
            key = self.machine.session_key
            assert key is not None
            self._keys.confirmed(key)

    def _judged(self, error: RtransferError) -> RtransferError:
        """One guess per run: a connection keyed by the code that ends after the peer's HELLO and
        before its CONFIRM opened (``Peer.guess_spent``) is final, as a wrong code is, whatever
        ended it; trying again would give whoever sent that HELLO another guess."""
        if isinstance(error, WrongCode) and self.machine.by_transport:  # no code over ssh to be wrong
            return HandshakeError("the peer's CONFIRM did not open: the stream was not the one ssh carried from it")
        if isinstance(error, WrongCode) and self._keys is not None and not self._one_guess:
            return HandshakeError(
                "whoever answered could not prove this transfer's session: not the peer it began with"
            )
        if not (self._one_guess and self.machine.guess_spent) or error.exit_code == EXIT_AUTH:
            return error
        return WrongCode(f"{error.message} during the key exchange: taken as a wrong code (one guess per run)")

    def _pace_reading(self) -> None:
        """Pause reading while the inbox is full or the pool has no room for another frame
        (its body, and the plaintext it opens into); resume once the inbox has emptied and
        there is room."""
        if self.transport is None or self.transport.is_closing() or self._discard is not None:
            return
        room = self._pool is None or self._pool.has_room(FRAME_BUFFERS)
        if not self._reading_paused and (len(self._inbox) >= INBOX_PAUSE_EVENTS or not room):
            self._reading_paused = True
            self.transport.pause_reading()
        elif self._reading_paused and len(self._inbox) < INBOX_PAUSE_EVENTS // 2 and room:
            self._reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wakeup.set()
        if not self._closed_by_peer.done():
            self._closed_by_peer.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = NetworkError(f"connection lost: {reason(exc)}")
        self._eof = True
        self._wakeup.set()
        if not self._closed_by_peer.done():
            self._closed_by_peer.set_result(None)
        if not self._lost.done():
            self._lost.set_result(None)
            if self._pool is not None:
                self._pool.unlisten(self._pace_reading)
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None
            if self.on_writable is not None:
                self.on_writable()

    @property
    def queued_bytes(self) -> int:
        """Written to the transport, not yet taken by the kernel."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    @property
    def writable(self) -> bool:
        """The transport's buffer is below its high-water mark: what is written now goes out soon."""
        return self._writable is None

    # --- used by the attempt ---------------------------------------------------
    def _stop(self, error: RtransferError) -> None:
        self._error = error
        self._wakeup.set()

    def flush(self) -> None:
        pieces = self.machine.data_to_send()
        if pieces and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(pieces)
            nbytes = sum(memoryview(p).nbytes for p in pieces)
            self.stats.wire_sent += nbytes
            if self.relayed:
                self.stats.relay_bytes += nbytes

    def all_written(self) -> bool:
        """The kernel has taken every byte handed to the transport: none of those buffers is read again."""
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable
        self._check_open()

    def _check_open(self) -> None:
        if self._lost.done():
            raise self._error or NetworkError("connection closed by the peer before the transfer finished")

    async def pump(self, handle: Handler) -> None:
        """Hand received events to the attempt in order; end at EOF or on error."""
        while True:
            while self._inbox:
                event = self._inbox.popleft()
                self._pace_reading()
                await handle(event)
            if self._error is not None:
                raise self._error
            if self._eof:
                if self.machine.phase is Phase.CLOSED:
                    return
                raise NetworkError("connection closed by the peer before the transfer finished")
            self._wakeup.clear()
            await self._wakeup.wait()

    async def peer_closed(self) -> None:
        """Until the peer has closed its end; what broke the connection instead, raised."""
        await asyncio.shield(self._closed_by_peer)
        if self._error is not None:
            raise self._error

    async def tick(self, handle: Handler) -> None:
        """Heartbeats, dead-peer detection and retransmission timeouts."""
        while True:
            await asyncio.sleep(min(TIMER_TICK_S, max(0.0, self.machine.next_deadline() - now())))
            if now() >= self.machine.next_deadline():
                if not self.all_written():
                    self.machine.backlogged(now())
                events = self.machine.on_timer(now())
                self.flush()
                for event in events:
                    await handle(event)
                # Not past the next deadline: a path that went silent with our bytes in its buffer
                # never drains, and only the timer can say the peer is gone.
                if self._writable is not None:  # waited for, never cancelled: every writer shares it
                    await asyncio.wait((self._writable,), timeout=max(0.0, self.machine.next_deadline() - now()))
                self._check_open()

    async def run(self, done: asyncio.Event, handle: Handler, *work: Coroutine[Any, Any, None]) -> None:
        """Drive this connection until ``done``: its read loop and timers beside the attempt's
        ``work``. On failure, tell the peer why, close, and raise what it means to the user."""
        error: RtransferError | None = None
        try:
            await supervise(done, self.pump(handle), self.tick(handle), *work)
        except ProtocolError as exc:
            self._peer_silent = isinstance(exc, PeerSilent)
            error = self._judged(to_error(exc))
            raise error from None
        except RtransferError as exc:
            error = self._judged(exc)
            if error is exc:
                raise
            raise error from None
        except asyncio.CancelledError:
            error = RtransferError("peer was interrupted")
            raise
        finally:
            await self.close(error)

    async def close(self, error: RtransferError | None) -> None:
        """Close (after telling the peer why, if we failed); once this returns the transport
        holds none of the machine's buffers, so they can be recycled."""
        if isinstance(error, Moved):  # the peer moves too, at the same frame: nothing to tell it
            error = None
        told = error is not None and not (self._peer_failed or self._peer_silent)
        if error is not None:
            self.machine.fail(cause_of(error), error.message)
            self.flush()
        if self.transport is not None:
            if told:
                await self._linger()
            if not self._peer_silent:  # a silent path would hold our last bytes for the whole grace
                self.transport.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_GRACE_S)
            if not self._lost.done():
                self.transport.abort()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_GRACE_S)

    async def _linger(self) -> None:
        """After our ERROR frame, read and drop what the peer sends until it closes (or the grace
        period ends). Closing with unread data makes the kernel send a reset, which can destroy
        the ERROR frame before the peer reads it; and a path that cannot half-close (a relay)
        would drop it with the connection. The peer closes once it has read why."""
        assert self.transport is not None
        if self._lost.done() or self._eof:
            return
        self._discard = memoryview(bytearray(DISCARD_BYTES))
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE_S):
                while not (self._eof or self._lost.done()):
                    self._wakeup.clear()
                    await self._wakeup.wait()

    def leftover_buffers(self) -> list[Buffer]:
        """After ``close``: what the dead connection's machine and inbox still hold. Recycled
        rather than dropped, the next connection maps no fresh memory."""
        if self.transport is not None and not self._lost.done():
            return []  # the transport may still be writing from them
        held = self.machine.held_buffers()
        held += [event.payload for event in self._inbox if isinstance(event, ChunkReady | PackReady)]
        self._inbox.clear()
        return held


async def supervise(done: asyncio.Event, *coros: Coroutine[Any, Any, None]) -> None:
    """Run tasks until ``done`` is set; the first task to fail cancels the rest and raises."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    waiter = asyncio.ensure_future(done.wait())
    pending: set[asyncio.Future[Any]] = {waiter, *tasks}
    try:
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if waiter in finished:
                return
            for task in finished:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in (waiter, *tasks):
            task.cancel()
        await asyncio.gather(waiter, *tasks, return_exceptions=True)


async def cancel_all(tasks: list[asyncio.Task[None]] | list[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished (a task still unwinding holds buffers)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def collect_dead_connection() -> None:
    """A failed connection's tasks die with its error, whose traceback holds their frames (and the
    chunk buffers in them) in a reference cycle. The pool counts those buffers against its budget
    until they are freed, and an idle process may not run the collector for a long time: a reconnect
    then waited for room forever (seen after a receiver was killed mid-tree). Collect now."""
    gc.collect()
