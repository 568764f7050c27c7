"""Receiving: listen, and take one transfer across as many connections as it takes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from pathlib import Path

from rtransfer.buffers import QUEUE_CHUNKS, BufferPool
from rtransfer.crypto import KeyExchange, TransportExchange
from rtransfer.errors import (
    HandshakeError,
    IntegrityError,
    LocalIOError,
    RemoteError,
    RtransferError,
    WrongCode,
)
from rtransfer.protocol.constants import Phase
from rtransfer.protocol.events import (
    ChunkArrived,
    ChunkReady,
    ChunkRejected,
    DirectChosen,
    DuplicateChunk,
    EntriesReceived,
    Event,
    FileComplete,
    HintsReceived,
    JoinRequested,
    ManifestReceived,
    PackReady,
    Ponged,
    TransferComplete,
)
from rtransfer.protocol.messages import Data
from rtransfer.protocol.model import Manifest, reorder_span
from rtransfer.protocol.receiver import ReceiverMachine
from rtransfer.receiving.sink import DirectorySink, Sink
from rtransfer.receiving.stdout import StdoutSink
from rtransfer.receiving.writer import RecvItem, write_chunks
from rtransfer.report import Reporter
from rtransfer.session.attempt import Attempt, keep_reporting
from rtransfer.session.config import RecvConfig
from rtransfer.session.connection import (
    FRAME_BUFFERS,
    INBOX_PAUSE_EVENTS,
    Connection,
    cancel_all,
    collect_dead_connection,
    now,
)
from rtransfer.session.going_direct import DirectOptions, GoingDirect
from rtransfer.session.outcome import named_for, worth_reconnecting
from rtransfer.stats import TransferStats
from rtransfer.transport.reconnect import Outage, keep_connected
from rtransfer.transport.retry import Backoff


def recv_budget(span: int, streams: int = 1) -> int:
    """The receiver's budget of chunk buffers: every one that can be in use at once (the chunks the
    transfer may hold out of order, ``reorder_span``; the queue, the inbox, one being read or written,
    and a frame being read on each further connection), so steady state never waits for one nor maps
    fresh memory."""
    return span + QUEUE_CHUNKS + INBOX_PAUSE_EVENTS + 2 + FRAME_BUFFERS * (streams - 1)


async def run_recv(config: RecvConfig, reporter: Reporter) -> TransferStats:
    return await ReceiveTransfer(config, reporter).run()


class ReceiveTransfer:
    """What outlives a connection: the sink, the counters and the buffer pool. If a connection
    breaks, wait for the sender to come back; each connection is planned afresh from what is on
    disk, so a reconnect, a restarted sender and a restarted receiver all resume the same way."""

    def __init__(self, config: RecvConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.sink: Sink = StdoutSink() if config.dest == "-" else DirectorySink(Path(config.dest), config.policy)
        self.sink.check()
        self.stats = TransferStats("recv")
        self.pool = BufferPool(recv_budget(span=0))  # grown once the manifest tells the window
        self.keys = config.keys
        # For the first connection, started before it comes so a sender does not wait for it.
        self.next_kex = self.keys.exchange(False)
        self.way = config.way
        self.outage = Outage(Backoff(config.connect_policy), reporter.warning, "the sender")
        self.started = False  # some connection got as far as data: the sender may come back
        self.stream_failed: asyncio.Future[RtransferError] = asyncio.get_running_loop().create_future()
        self.running: Manifest | None = None  # while a first connection carries the transfer: further ones JOIN it
        self.completed = False  # our DONE went out: every file is in and the last steps are taken

    async def run(self) -> TransferStats:
        reporting = asyncio.ensure_future(keep_reporting(self.reporter, self.stats))
        try:
            await keep_connected(
                self.way, self._connection, self._serve, self.outage, self._worth_another, self.config.timeout_s
            )
        except RtransferError as exc:
            if not self.completed:
                if isinstance(exc, RemoteError) and self.way.names_remote_errors:
                    raise named_for(exc, self.way.where) from None
                raise
            # Everything is here; only the sender's hearing of it is in doubt, and it did not come back
            # to ask (or whoever came instead failed): said, and the run is a success.
            self.reporter.warning(f"the sender did not confirm the end of the transfer: {exc.message}")
        finally:
            await cancel_all([reporting])
            self.way.close()
        return self.stats

    def _worth_another(self, exc: RtransferError) -> bool:
        resumable = isinstance(self.sink, DirectorySink)  # standard output cannot be rewound
        waits = not self.way.dials
        if not worth_reconnecting(exc, started=self.started, resumable=resumable, waits_for_peer=waits):
            return False
        self.stats.broke()
        collect_dead_connection()
        return True

    def _connection(self) -> Connection:
        """Keyed by the code (the exchange started ahead, see __init__) until a connection has proved
        it, then by that session (crypto.TransferKeys); on a direct path found through a relay, by
        that relayed session."""
        kex: KeyExchange | TransportExchange
        if self.way.secret is not None:
            kex = KeyExchange(self.way.secret, False, session=True)
        elif self.keys.resume is not None or self.keys.by_transport:
            kex = self.keys.exchange(False)
        else:
            kex, self.next_kex = self.next_kex, self.keys.exchange(False)
        c = self.config
        dry = c.policy.dry_run
        machine = ReceiverMachine(now(), c.timeout_s, kex, c.encrypt, c.limits, self.pool, self.running, dry)
        keys = None if self.way.authenticated else self.keys
        return Connection(machine, self.pool, self.stats, self.way.route, keys)

    async def _serve(self, conn: Connection) -> None:
        """The transfer's first connection; while it runs, further ones may join it."""
        control = ReceiveAttempt(self, conn)
        streams = asyncio.ensure_future(self._further_streams(control))
        try:
            await control.run()
        except RtransferError:
            await self.sink.suspend()
            raise
        finally:
            self.running = None
            await cancel_all([streams])

    async def _further_streams(self, control: ReceiveAttempt) -> None:
        """The further connections the manifest asks for, each kept by the one reconnect loop: dialed
        or taken as they arrive, whichever the way of this side's further connections does."""
        await control.manifest_known.wait()
        streams = control.machine.manifest.streams
        await asyncio.gather(*(self._keep_stream(control, stream) for stream in range(1, streams)))

    async def _keep_stream(self, control: ReceiveAttempt, stream: int) -> None:
        """One further connection, opened again under the retry policy while the transfer runs."""
        say = functools.partial(_say_for_stream, self.reporter, stream)
        outage = Outage(Backoff(self.config.connect_policy), say, "the sender")
        serve = functools.partial(self._serve_stream, control, outage)
        try:
            await keep_connected(
                self.way.further(stream),
                self._connection,
                serve,
                outage,
                _stream_worth_another,
                self.config.timeout_s,
            )
        except RtransferError as exc:
            say(f"{exc.message}; going on without it")

    async def _serve_stream(self, control: ReceiveAttempt, outage: Outage, conn: Connection) -> None:
        await ReceivingStream(self, control, conn, outage).run()

    def fail_from_stream(self, error: RtransferError) -> None:
        """A further connection failed in a way that ends the transfer (a wrong code: one guess per run)."""
        if not self.stream_failed.done():
            self.stream_failed.set_result(error)

    async def watch_streams(self) -> None:
        raise await asyncio.shield(self.stream_failed)


def _say_for_stream(reporter: Reporter, stream: int, message: str) -> None:
    reporter.warning(f"stream {stream}: {message}")


def _stream_worth_another(error: RtransferError) -> bool:
    return worth_reconnecting(error, started=True, resumable=True, waits_for_peer=False)


class ReceiveAttempt(Attempt):
    """One connection's worth of receiving: the connection's events feed the writer's queue, and
    the writer reports each file it has checked back to the machine."""

    def __init__(self, transfer: ReceiveTransfer, conn: Connection) -> None:
        super().__init__(conn, transfer.stats, transfer.reporter, transfer.pool)
        assert isinstance(conn.machine, ReceiverMachine)
        self.machine = conn.machine
        self.transfer = transfer
        self.sink = transfer.sink
        self.queue: asyncio.Queue[RecvItem] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self.in_order: deque[RecvItem] = deque()  # what the reorder released, for the writer, in that order
        self.in_order_lock = asyncio.Lock()
        self.start_offsets: dict[int, int] = {}
        self.manifest_known = asyncio.Event()
        self.finished = asyncio.Event()  # our DONE is out
        config = transfer.config
        trying = DirectOptions(config.try_direct, config.stun, movable=isinstance(self.sink, DirectorySink))
        self.direct = GoingDirect(transfer.way, conn, trying, transfer.reporter)
        self.on_route(transfer.way)
        self.handlers = {
            HintsReceived: self.direct.on_hints,
            DirectChosen: self.direct.on_chosen,
            Ponged: self.direct.on_pong,
            ChunkReady: self.to_writer,
            FileComplete: self.to_writer,
            PackReady: self.to_writer,
            ChunkRejected: self.on_chunk_rejected,
            DuplicateChunk: self.on_duplicate,
            ManifestReceived: self.on_manifest,
            EntriesReceived: self.on_entries,
            TransferComplete: self.on_complete,
            ChunkArrived: self.on_chunk_arrived,
        }

    async def run(self) -> None:
        writer = write_chunks(
            self.queue, self.sink, self.stats, self.verified, self.pack_written, self.start_offsets, self.pool
        )
        try:
            await self.drive(writer, self.transfer.watch_streams(), self.direct.run(), self.ending())
        finally:
            self.direct.close()

    async def ending(self) -> None:
        """After our DONE, this connection ends once the sender has closed its end: it has read
        DONE. One that breaks first leaves the sender in doubt: it comes back to hear it again
        (every file is planned as here), so this side waits for it as for any break. A sender
        that neither closes nor breaks within --timeout (alive, yet it keeps the connection) is
        not waited for longer: everything is here."""
        await self.finished.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.transfer.config.timeout_s):
                await self.conn.peer_closed()
        self.done.set()

    def refresh(self) -> None:
        self.stats.in_flight = self.machine.reorder_buffered

    # --- events ---------------------------------------------------------------
    async def to_writer(self, event: RecvItem) -> None:
        self.in_order.append(event)
        await self.drain_in_order()

    async def drain_in_order(self) -> None:
        """Everything for the writer goes through ``in_order``, appended the moment the machine says
        it, and out under one lock: a FILE_END's check (from this connection's events) must not
        overtake the file's last chunks (released by another connection's handler)."""
        async with self.in_order_lock:
            while self.in_order:
                event = self.in_order.popleft()
                if not isinstance(event, FileComplete):
                    self.stats.chunks += 1
                    self.transfer.outage.progress += 1
                await self.queue.put(event)
                self.stats.observe_queue(self.queue.qsize())

    async def on_chunk_rejected(self, event: ChunkRejected) -> None:
        self.stats.integrity_failures += 1

    async def on_duplicate(self, event: DuplicateChunk) -> None:
        self.stats.duplicates += 1

    async def on_manifest(self, event: ManifestReceived) -> None:
        self.pool.budget_buffers = recv_budget(reorder_span(event.manifest), event.manifest.streams)
        self.sink.begin(event.manifest)
        self.transfer.running = event.manifest
        self.stats.start_listing()
        self.manifest_known.set()
        self.direct.offer(event.manifest.streams)

    async def on_entries(self, event: EntriesReceived) -> None:
        """Plan the batch against the disk and accept it: what is here whole is skipped, what is
        here in part resumes."""
        batch = event.batch
        plan = self.sink.plan(batch)
        self.tell_items()
        announced = tuple(i for i in plan.old_copies if i not in plan.compare)  # those surely sent as a delta
        if announced:
            self.machine.announce_bases(announced, now())
            self.conn.flush()
        plan = await self.sink.examine(plan)
        self.tell_items()
        self.start_offsets.update(plan.start_offsets)
        self.stats.listed(list(batch.entries), batch.last)
        self.stats.bytes_done += sum(plan.start_offsets.values())
        self.stats.skipped(len(plan.done), sum(batch.entries[i - batch.first].size or 0 for i in plan.done))
        events = self.machine.accept(batch.first, plan.start_offsets, now(), plan.done, plan.bases)
        self.conn.flush()
        self.transfer.started = True
        if batch.first == 0:
            self.reporter.started(self.stats)
        for follow in events:
            await self.handle(follow)

    async def on_complete(self, event: TransferComplete) -> None:
        """Every file is in: the last steps, then DONE, so that the sender ends with this side's
        outcome (a step that fails tells it instead, as an ERROR with the step's exit code)."""
        for warning in await self.sink.complete():
            self.reporter.warning(warning)
        self.tell_items()
        if self.sink.conflicts:
            kept = "1 file was" if self.sink.conflicts == 1 else f"{self.sink.conflicts} files were"
            dry = " (DRY RUN: nothing changed)" if self.sink.dry else ""
            raise LocalIOError(f"{kept} already here and different, and kept (use --overwrite to replace){dry}")
        self.machine.finish(now())
        self.conn.flush()
        self.transfer.completed = True
        self.finished.set()

    def tell_items(self) -> None:
        dry_run = self.stats.dry_run = self.sink.dry
        for action, path in self.sink.items:
            self.reporter.item(action, path, dry_run)
            if dry_run:
                self.stats.would[action] = self.stats.would.get(action, 0) + 1
            if action == "skip":
                self.stats.devices_skipped += 1
        self.sink.items.clear()

    async def on_chunk_arrived(self, event: ChunkArrived) -> None:
        await self.take_chunk(self.conn, event.chunk)

    async def take_chunk(self, conn: Connection, chunk: Data) -> None:
        """A chunk from any connection of the transfer: into the transfer's order, then acknowledged.
        What the reorder releases is queued for the writer under one lock, so two connections'
        handlers never put it out of order."""
        events = self.machine.deliver(chunk, now())
        self.in_order.extend(
            e for e in events if isinstance(e, ChunkReady | FileComplete | PackReady)
        )  # before any await
        self.conn.flush()
        routed = conn.machine
        assert isinstance(routed, ReceiverMachine)
        routed.handed_on(chunk.seq, now())
        conn.flush()
        for event in events:
            if not isinstance(event, ChunkReady | FileComplete | PackReady):
                await self.handle(event)
        await self.drain_in_order()

    # --- the writer's reports ---------------------------------------------------
    async def verified(self, done_file: FileComplete, ok: bool, digest_hex: str, path: str) -> None:
        events = self.machine.file_verified(done_file.file_index, ok, now())
        self.conn.flush()
        if not ok:
            raise IntegrityError(f"{path}: whole-file BLAKE3 digest mismatch")
        self.stats.files_done += 1
        self.reporter.file_done(path, done_file.size, digest_hex)
        for event in events:
            await self.handle(event)

    async def pack_written(self, pack: PackReady, results: list[tuple[str, int, str | None]]) -> None:
        ok = all(digest_hex is not None for _, _, digest_hex in results)
        events = self.machine.pack_written(pack.order, ok, now())
        self.conn.flush()
        for path, size, digest_hex in results:
            if digest_hex is None:
                self.stats.integrity_failures += 1
                raise IntegrityError(f"{path}: whole-file BLAKE3 digest mismatch")
            self.stats.files_done += 1
            self.stats.transferred(size)
            self.reporter.file_done(path, size, digest_hex)
        for event in events:
            await self.handle(event)


class ReceivingStream:
    """A further connection of the running transfer: its chunks go to the first connection's machine,
    which puts them in the transfer's order; what that yields goes to the same writer. One that
    breaks is raised for its reconnect loop (``outage``) to open again."""

    def __init__(self, transfer: ReceiveTransfer, control: ReceiveAttempt, conn: Connection, outage: Outage) -> None:
        self.transfer = transfer
        self.control = control
        self.conn = conn
        self.outage = outage

    async def run(self) -> None:
        try:
            await self.conn.run(self.control.done, self.handle)
        except (WrongCode, HandshakeError) as exc:
            self.transfer.fail_from_stream(exc)
        except RtransferError:
            if self.control.machine.phase is Phase.CLOSED:  # after the transfer, a closed stream is news to no one
                return
            raise
        finally:
            self.control.pool.recycle(self.conn.leftover_buffers())

    async def handle(self, event: Event) -> None:
        """Its chunks go into the transfer's order; anything else the first connection handles (the
        phase table lets a joined connection carry nothing but chunks)."""
        if isinstance(event, ChunkArrived):
            self.outage.progress += 1
            await self.control.take_chunk(self.conn, event.chunk)
        elif not isinstance(event, JoinRequested):
            await self.control.handle(event)
