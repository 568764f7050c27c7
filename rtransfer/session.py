"""The asyncio driver: connect or listen, move bytes between socket and machine, fire timers.

All protocol decisions are made by the machines in ``rtransfer.protocol``; this
module only feeds them bytes and time and carries out what they ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtransfer.crypto import KeyExchange
from rtransfer.errors import IntegrityError, NetworkError, RtransferError, UnknownHost, reason
from rtransfer.files import Source, collect_sources, list_batches
from rtransfer.listen import new_code, normalise_code, open_listener
from rtransfer.pipeline import (
    QUEUE_CHUNKS,
    SENDER_ROOM,
    BufferPool,
    Chunk,
    EndOfFile,
    Listed,
    Packed,
    RecvItem,
    SendItem,
    read_sources,
    write_chunks,
)
from rtransfer.protocol.errors import CorruptFrame, HandshakeRefused, ProtocolError, WrongCode
from rtransfer.protocol.events import (
    Accepted,
    ChunkReady,
    ChunksAcked,
    DuplicateChunk,
    EntriesReceived,
    Event,
    FileComplete,
    FileVerified,
    IntegrityFailure,
    ManifestReceived,
    PackReady,
    Retransmitted,
    TransferComplete,
)
from rtransfer.protocol.frames import Buffer, Manifest
from rtransfer.protocol.peer import Peer
from rtransfer.protocol.receiver import ReceiveLimits, ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from rtransfer.report import Reporter
from rtransfer.retry import Backoff, RetryPolicy, retry_call
from rtransfer.sink import DirectorySink, Sink, StdoutSink
from rtransfer.stats import TransferStats
from rtransfer.workers import in_worker

INBOX_PAUSE_EVENTS = 2  # with QUEUE_CHUNKS, what keeps 8 MiB chunks under 100 MiB per side
CLOSE_GRACE_S = 2.0  # for the peer to read our ERROR frame before the connection is cut
TIMER_TICK_S = 0.2  # longest sleep between timer checks; deadlines move as frames flow
FRAME_BUFFERS = 2  # a DATA frame being read: its body, and the plaintext it is opened into
# Batches of the file list sent ahead of the reader: enough that the receiver plans the next
# while the current one's data flows, few enough that memory does not follow the tree's size.
LIST_AHEAD_BATCHES = 3

now = time.monotonic


@dataclass(frozen=True)
class SendConfig:
    sources: list[str]
    host: str
    port: int
    stdin_name: str | None = None
    chunk_bytes: int = 8 * 1024 * 1024
    window: int = 2
    timeout_s: float = 30.0
    connect_policy: RetryPolicy = field(default_factory=RetryPolicy)
    code: str = ""
    encrypt: bool = True
    safe_links: bool = False  # skip links that point outside the transfer, instead of sending them as they are


@dataclass(frozen=True)
class RecvConfig:
    dest: str
    host: str
    port: int
    timeout_s: float = 30.0
    overwrite: bool = False
    limits: ReceiveLimits = field(default_factory=ReceiveLimits)
    code: str | None = None  # None: make one up and show it
    encrypt: bool = True
    wait_s: float = 60.0  # how long a broken transfer waits for its sender to come back
    direct_io: bool = True  # large files bypass the page cache (see direct_io.py)
    safe_links: bool = False  # refuse links that point outside DEST, instead of making them as they are
    # Opened, and announced with the code, by the caller before it imported this module (see listen.py).
    listener: socket.socket | None = None


Handler = Callable[[Event], Awaitable[None]]


class Link(asyncio.BufferedProtocol):
    """One TCP connection driven by one protocol machine.

    The transport reads straight into the machine's buffers. Resulting events
    wait in a small inbox that ``pump`` hands to the session; while the inbox is
    full, reading pauses, which is how a slow disk pushes back on the peer.
    """

    def __init__(
        self, machine: Peer, on_connected: Callable[[Link], bool] | None = None, pool: BufferPool | None = None
    ) -> None:
        """With a ``pool``, reading also pauses while a frame's buffers would not fit its budget."""
        self.machine = machine
        self._on_connected = on_connected
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

    # --- asyncio.BufferedProtocol --------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._on_connected is not None and not self._on_connected(self):
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._pool is not None:
            self._pool.listen(self._pace_reading)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.machine.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._error is not None:
            return
        try:
            events = self.machine.buffer_updated(nbytes, now())
        except RtransferError as exc:
            self._stop(exc)
            return
        self.flush()
        if events:
            self._inbox.extend(events)
            self._wakeup.set()
        self._pace_reading()

    def _pace_reading(self) -> None:
        """Pause reading while the inbox is full or the pool has no room for another frame
        (its body, and the plaintext it opens into); resume once the inbox has emptied and
        there is room."""
        if self.transport is None or self.transport.is_closing():
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
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = NetworkError(f"connection lost: {reason(exc)}")
        self._eof = True
        self._wakeup.set()
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

    # --- used by the session -------------------------------------------------
    def _stop(self, error: RtransferError) -> None:
        self._error = error
        self._wakeup.set()

    def flush(self) -> None:
        pieces = self.machine.data_to_send()
        if pieces and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(pieces)

    def all_written(self) -> bool:
        """The kernel has taken every byte handed to the transport: none of those buffers is read again."""
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable
        if self._lost.done():
            raise self._error or NetworkError("connection closed by the peer before the transfer finished")

    async def pump(self, handle: Handler) -> None:
        """Hand received events to the session in order; end at EOF or on error."""
        while True:
            while self._inbox:
                event = self._inbox.popleft()
                self._pace_reading()
                await handle(event)
            if self._error is not None:
                raise self._error
            if self._eof:
                if self.machine.closed:
                    return
                raise NetworkError("connection closed by the peer before the transfer finished")
            self._wakeup.clear()
            await self._wakeup.wait()

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
                await self.drain()

    async def close(self, error: RtransferError | None) -> None:
        """Close (after telling the peer why, if we failed); once this returns the transport
        holds none of the machine's buffers, so they can be recycled."""
        if error is not None:
            self.machine.fail(error)
            self.flush()
        if self.transport is not None:
            self.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_GRACE_S)
            if not self._lost.done():
                self.transport.abort()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_GRACE_S)

    def leftover_buffers(self) -> list[Buffer]:
        """After ``close``: what the dead connection's machine and inbox still hold. Recycled
        rather than dropped, the next connection maps no fresh memory (a reset used to cost
        each side tens of MiB)."""
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


async def progress_ticker(reporter: Reporter, stats: TransferStats, refresh: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(reporter.progress_interval_s)
        refresh()
        reporter.progress(stats)


_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def _connect(
    host: str, port: int, timeout_s: float, backoff: Backoff, reporter: Reporter, make: Callable[[], Link]
) -> Link:
    """Each attempt gets ``timeout_s``: a host that drops our SYNs would otherwise hold one for ~2 minutes."""
    loop = asyncio.get_running_loop()

    def failed(exc: BaseException) -> str:
        return f"could not connect to {host}:{port}: {reason(exc)}"

    async def attempt() -> Link:
        try:
            async with asyncio.timeout(timeout_s):
                _, link = await loop.create_connection(make, host, port)
        except TimeoutError:
            raise TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout_s:g} s") from None
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                raise UnknownHost(failed(exc)) from None
            raise
        return link

    def on_retry(attempt_no: int, exc: BaseException, delay_s: float) -> None:
        reporter.warning(f"connect to {host}:{port} failed ({reason(exc)}); retry {attempt_no} in {delay_s:.1f} s")

    try:
        return await retry_call(attempt, backoff, (OSError,), on_retry)
    except OSError as exc:
        raise NetworkError(failed(exc)) from None


def _worth_reconnecting(exc: RtransferError, started: bool) -> bool:
    """A broken, silent or garbled connection is worth another; a local problem or a wrong code never is.

    Any other failed handshake is final only before the transfer has started: after
    that, the peer has proved itself and a garbled handshake means a corrupting link.
    """
    if isinstance(exc, WrongCode | UnknownHost):
        return False
    if isinstance(exc, HandshakeRefused):
        return started
    return isinstance(exc, NetworkError | ProtocolError)


def _recv_budget(window: int) -> int:
    """The receiver's budget of chunk buffers: every one that can be in use at once (window, queue,
    inbox, one being read or written), so steady state never waits for one nor maps fresh memory
    (a dropped chunk's region costs a page fault and zeroing per 4 KiB when mapped again)."""
    return window + QUEUE_CHUNKS + INBOX_PAUSE_EVENTS + 2


def _send_budget(window: int) -> int:
    """The sender's chunk buffers: the window's payloads awaiting their ACK, one chunk queued, one
    being read, one ciphertext on its way to the kernel and one kept for a resend. Seven (the
    receiver's count) measured 103 MiB peak with resends under load: the interpreter alone is ~45 MiB."""
    return window + QUEUE_CHUNKS + 3


async def run_send(config: SendConfig, reporter: Reporter) -> TransferStats:
    """Send, reconnecting with backoff when a connection breaks; the receiver says where to resume."""
    sources = collect_sources(config.sources, config.stdin_name)
    manifest = Manifest(uuid.uuid4().hex, config.chunk_bytes, config.window)
    stats = TransferStats("send")
    pool = BufferPool(_send_budget(config.window))
    resumable = all(s.local is not None for s in sources)  # standard input cannot be read again
    backoff = Backoff(config.connect_policy)
    while True:
        progress_before = stats.bytes_done
        try:
            await _send_once(config, reporter, manifest, sources, stats, pool, backoff)
            return stats
        except RtransferError as exc:
            if not (resumable and _worth_reconnecting(exc, started=stats.accepted > 0)):
                raise
            if stats.bytes_done > progress_before:
                backoff.reset()
            delay = backoff.next_delay()
            if delay is None:
                raise
            stats.reconnects += 1
            _collect_dead_connection()
            reporter.warning(f"{exc.message}; reconnecting in {delay:.1f} s (attempt {backoff.attempt})")
            await asyncio.sleep(delay)


def _collect_dead_connection() -> None:
    """A failed connection's tasks die with its error, whose traceback holds their frames (and the
    chunk buffers in them) in a reference cycle. The pool counts those buffers against its budget
    until they are freed, and an idle process may not run the collector for a long time: a reconnect
    then waited for room forever (seen after a receiver was killed mid-tree). Collect now."""
    gc.collect()


async def _send_once(
    config: SendConfig,
    reporter: Reporter,
    manifest: Manifest,
    sources: list[Source],
    stats: TransferStats,
    pool: BufferPool,
    backoff: Backoff,
) -> None:
    """One connection's worth of the transfer; connect retries spend the caller's backoff, as reconnects do.

    Three tasks: the lister walks the sources and sends the file list a batch at a time,
    at most LIST_AHEAD_BATCHES ahead of the reader; the reader reads each batch's files
    once the receiver has accepted it; the send loop hands chunks to the machine. Each
    connection walks afresh and the receiver skips what it already has whole."""
    link = await _connect(
        config.host,
        config.port,
        config.timeout_s,
        backoff,
        reporter,
        lambda: Link(
            SenderMachine(manifest, now(), config.timeout_s, normalise_code(config.code), config.encrypt, buffers=pool)
        ),
    )
    machine = link.machine
    assert isinstance(machine, SenderMachine)
    queue: asyncio.Queue[SendItem] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    listed: deque[tuple[int, list[Source]]] = deque()  # sent, awaiting the receiver's ACCEPT
    accepted: asyncio.Queue[Listed | None] = asyncio.Queue()  # for the reader, in order
    ahead = asyncio.Semaphore(LIST_AHEAD_BATCHES)
    listing_done = False
    window_open = asyncio.Event()
    done = asyncio.Event()
    unconfirmed: dict[int, tuple[str, int, str]] = {}  # file index -> path, size, digest, until the receiver confirms
    skipped, first_skipped = 0, ""  # files the receiver already has whole, said once all are accepted
    stats.start_listing()

    async def handle(event: Event) -> None:
        nonlocal skipped, first_skipped
        if isinstance(event, ChunksAcked):
            stats.bytes_done += event.bytes
            pool.recycle(event.released)
            window_open.set()
        elif isinstance(event, Retransmitted):
            stats.retransmits += 1
            reporter.retransmit(event.seq, event.reason)
        elif isinstance(event, IntegrityFailure):
            stats.integrity_failures += 1
        elif isinstance(event, FileVerified):
            stats.files_done += 1
            reporter.file_done(*unconfirmed.pop(event.file_index))
        elif isinstance(event, Accepted):
            first, batch = listed.popleft()
            entries = {i: s.entry for i, s in enumerate(batch, first) if s.entry.kind == "file"}
            stats.files_done += len(event.done)
            stats.bytes_done += sum(event.start_offsets.values()) + sum(entries[i].size or 0 for i in event.done)
            if event.done and not skipped:
                first_skipped = entries[event.done[0]].path
            skipped += len(event.done)
            if first == 0:
                stats.accepted += 1
                reporter.started(stats)
            accepted.put_nowait(Listed(first, batch, event))
            window_open.set()  # the first ACCEPT opens the window
            if listing_done and not listed:
                all_accepted()
        elif isinstance(event, TransferComplete):
            done.set()

    def all_accepted() -> None:
        """Every batch is listed and accepted: the reader's queue ends, and what was skipped is said once."""
        accepted.put_nowait(None)
        if skipped == 1:
            reporter.warning(f"{first_skipped}: already at the receiver (same size and mtime); skipped")
        elif skipped:
            reporter.warning(f"{skipped} files already at the receiver (same size and mtime); skipped")

    async def list_entries() -> None:
        nonlocal listing_done
        warnings: list[str] = []  # the walk runs in a worker thread; warnings are reported from here
        batches = list_batches(sources, config.safe_links, warnings.append)
        upcoming = await in_worker(next, batches, None)
        while upcoming is not None:
            await ahead.acquire()
            batch, upcoming = upcoming, await in_worker(next, batches, None)
            for message in warnings:
                reporter.warning(message)
            warnings.clear()
            first = machine.send_entries(tuple(s.entry for s in batch), upcoming is None, now())
            listed.append((first, batch))
            stats.listed([s.entry for s in batch], last=upcoming is None)
            link.flush()
        listing_done = True
        if not listed:
            all_accepted()

    async def send_chunks() -> None:
        while True:
            # Wait for room in the window before taking a chunk: one waiting here would
            # hold a buffer the reader then replaces (a chunk's worth of RSS, measured).
            while not machine.can_send():
                window_open.clear()
                await window_open.wait()
            if (item := await queue.get()) is None:
                break
            if isinstance(item, EndOfFile):
                unconfirmed[item.file_index] = (item.path, item.size, item.digest.hex())
                machine.end_file(item.file_index, item.size, item.digest, now())
                continue
            if machine.encrypted:
                await pool.room(SENDER_ROOM)  # for its ciphertext
            if isinstance(item, Packed):
                for packed, path in zip(item.files, item.paths, strict=True):
                    unconfirmed[packed.file_index] = (path, packed.size, packed.digest.hex())
                machine.send_pack(tuple(f.file_index for f in item.files), item.payload, now())
            else:
                machine.send_chunk(item.file_index, item.offset, item.payload, now())
            stats.chunks += 1
            link.flush()
            await link.drain()
            if link.all_written():
                pool.recycle(machine.take_written())
        machine.finish(now())
        link.flush()

    def refresh() -> None:
        stats.in_flight = machine.in_flight

    try:
        reader = read_sources(accepted, config.chunk_bytes, queue, stats, pool, ahead.release)
        await _run_link(link, stats, reporter, done, refresh, handle, list_entries(), reader, send_chunks())
    finally:
        _recycle_connection(pool, link, queue)


async def _run_link(
    link: Link,
    stats: TransferStats,
    reporter: Reporter,
    done: asyncio.Event,
    refresh: Callable[[], None],
    handle: Handler,
    *work: Coroutine[Any, Any, None],
) -> None:
    """Drive one connection to completion, telling the peer why if we fail."""
    error: RtransferError | None = None
    try:
        await supervise(done, link.pump(handle), link.tick(handle), progress_ticker(reporter, stats, refresh), *work)
    except RtransferError as exc:
        error = exc
        raise
    except asyncio.CancelledError:
        error = RtransferError("peer was interrupted")
        raise
    finally:
        await link.close(error)
    refresh()


async def run_recv(config: RecvConfig, reporter: Reporter) -> TransferStats:
    """Listen and receive one transfer; if its connection breaks, wait for the sender to come back.

    Each connection is planned afresh from what is on disk, so a reconnect, a
    restarted sender and a restarted receiver all resume the same way.
    """
    sink: Sink = (
        StdoutSink()
        if config.dest == "-"
        else DirectorySink(Path(config.dest), config.overwrite, config.direct_io, config.safe_links)
    )
    sink.check()
    loop = asyncio.get_running_loop()
    arrivals: asyncio.Queue[Link] = asyncio.Queue()
    busy = False

    def on_connected(link: Link) -> bool:
        """One connection at a time; others are turned away (a sender retries)."""
        nonlocal busy
        if busy:
            return False
        busy = True
        arrivals.put_nowait(link)
        return True

    pool = BufferPool(_recv_budget(window=0))  # grown once the manifest tells the window
    code = config.code if config.code is not None else new_code()
    secret = normalise_code(code)
    started_kex = [KeyExchange(secret, is_sender=False)]  # for the first connection, ready before it comes

    def new_machine() -> ReceiverMachine:
        kex = started_kex.pop() if started_kex else secret
        return ReceiverMachine(now(), config.timeout_s, kex, config.encrypt, config.limits, pool)

    listener = config.listener or open_listener(config.host, config.port)
    server = await loop.create_server(lambda: Link(new_machine(), on_connected, pool), sock=listener)
    stats = TransferStats("recv")
    started = False  # some connection delivered its manifest: the sender may come back
    async with server:
        if config.listener is None:
            host, port = listener.getsockname()[:2]
            reporter.listening(host, port, None if config.code is not None else code)
        while True:
            link = await arrivals.get()
            try:
                await _receive_once(link, sink, stats, reporter, pool)
                return stats
            except RtransferError as exc:
                await sink.suspend()
                started = started or link.machine.handshake_complete
                if not (_worth_reconnecting(exc, started) and (started or isinstance(exc, CorruptFrame))):
                    raise
                if not isinstance(sink, DirectorySink):
                    raise
                stats.reconnects += 1
                _collect_dead_connection()
                wait_s = config.wait_s
                reporter.warning(f"{exc.message}; waiting up to {wait_s:.0f} s for the sender to come back")
                busy = False
                try:
                    await asyncio.wait_for(_peek(arrivals), wait_s)
                except TimeoutError:
                    raise NetworkError(f"{exc.message}; the sender did not come back within {wait_s:.0f} s") from None


async def _peek(arrivals: asyncio.Queue[Link]) -> None:
    """Wait for the next connection without taking it."""
    link = await arrivals.get()
    arrivals.put_nowait(link)


async def _receive_once(link: Link, sink: Sink, stats: TransferStats, reporter: Reporter, pool: BufferPool) -> None:
    machine = link.machine
    assert isinstance(machine, ReceiverMachine)
    queue: asyncio.Queue[RecvItem] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    done = asyncio.Event()
    start_offsets: dict[int, int] = {}

    async def handle(event: Event) -> None:
        if isinstance(event, ChunkReady | FileComplete | PackReady):
            if isinstance(event, ChunkReady | PackReady):
                stats.chunks += 1
            await queue.put(event)
            stats.observe_queue(queue.qsize())
        elif isinstance(event, IntegrityFailure):
            stats.integrity_failures += 1
        elif isinstance(event, DuplicateChunk):
            stats.duplicates += 1
        elif isinstance(event, ManifestReceived):
            pool.budget_buffers = _recv_budget(event.manifest.window)
            sink.begin(event.manifest)
            stats.start_listing()
        elif isinstance(event, EntriesReceived):
            batch = event.batch
            plan = sink.plan(batch)
            start_offsets.update(plan.start_offsets)
            stats.listed(list(batch.entries), batch.last)
            stats.files_done += len(plan.done)
            entries = batch.entries
            stats.bytes_done += sum(plan.start_offsets.values())
            stats.bytes_done += sum(entries[i - batch.first].size or 0 for i in plan.done)
            events = machine.accept(batch.first, plan.start_offsets, now(), plan.done)
            link.flush()
            if batch.first == 0:
                reporter.started(stats)
            for follow in events:
                await handle(follow)
        elif isinstance(event, TransferComplete):
            await sink.complete()
            done.set()

    async def verified(done_file: FileComplete, ok: bool, digest_hex: str, path: str) -> None:
        events = machine.file_verified(done_file.file_index, ok, now())
        link.flush()
        if not ok:
            raise IntegrityError(f"{path}: whole-file BLAKE3 digest mismatch")
        stats.files_done += 1
        reporter.file_done(path, done_file.size, digest_hex)
        for event in events:
            await handle(event)

    async def pack_written(pack: PackReady, results: list[tuple[str, int, str | None]]) -> None:
        ok = all(digest_hex is not None for _, _, digest_hex in results)
        events = machine.pack_written(pack.seq, ok, now())
        link.flush()
        for path, size, digest_hex in results:
            if digest_hex is None:
                stats.integrity_failures += 1
                raise IntegrityError(f"{path}: whole-file BLAKE3 digest mismatch")
            stats.files_done += 1
            stats.bytes_done += size
            reporter.file_done(path, size, digest_hex)
        for event in events:
            await handle(event)

    def refresh() -> None:
        stats.in_flight = machine.reorder_buffered

    writer = write_chunks(queue, sink, stats, verified, pack_written, start_offsets, pool)
    try:
        await _run_link(link, stats, reporter, done, refresh, handle, writer)
    finally:
        _recycle_connection(pool, link, queue)


def _recycle_connection(pool: BufferPool, link: Link, queue: asyncio.Queue[Any]) -> None:
    """A connection has ended and its tasks with it: the chunk buffers its machine, inbox and
    queue still hold go back to the pool for the next connection."""
    pool.recycle(link.leftover_buffers())
    while not queue.empty():
        item = queue.get_nowait()
        if isinstance(item, Chunk | ChunkReady | Packed | PackReady):
            pool.put(item.payload)
