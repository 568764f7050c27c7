"""Sending: one transfer across as many connections as it takes, one attempt per connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections import deque
from collections.abc import Iterator

from rtransfer.buffers import QUEUE_CHUNKS, BufferPool
from rtransfer.compress import Compressor
from rtransfer.crypto import KeyExchange
from rtransfer.delta import Fingerprint
from rtransfer.errors import ProtocolViolation, RemoteError, RtransferError
from rtransfer.filters import parse_specs
from rtransfer.protocol.constants import FrameType
from rtransfer.protocol.events import (
    Accepted,
    ChunkRejected,
    ChunksAcked,
    FilesVerified,
    HintsReceived,
    Ponged,
    PunchNow,
    Retransmitted,
    SignatureReceived,
    TransferComplete,
)
from rtransfer.protocol.messages import Data
from rtransfer.protocol.model import Manifest
from rtransfer.protocol.peer import CAP_DRY_RUN
from rtransfer.protocol.sender import SenderMachine
from rtransfer.report import Reporter
from rtransfer.sending.head_start import HeadStart, budget_bytes, hashed_ahead
from rtransfer.sending.ratelimit import TokenBucket
from rtransfer.sending.reader import (
    AcceptedBatch,
    EndOfFile,
    OldCopy,
    Packed,
    Reading,
    SendItem,
    fingerprint_listed,
    read_sources,
)
from rtransfer.sending.walk import Source, collect_sources, listing, next_batch, with_content_digests
from rtransfer.session.attempt import Attempt, keep_reporting
from rtransfer.session.config import SendConfig
from rtransfer.session.connection import Connection, cancel_all, collect_dead_connection, now
from rtransfer.session.going_direct import DirectOptions, GoingDirect
from rtransfer.session.outcome import named_for, worth_reconnecting
from rtransfer.session.streams import Dealer, FurtherStream, StreamContext
from rtransfer.stats import TransferStats
from rtransfer.transport.reconnect import Outage, keep_connected
from rtransfer.transport.retry import Backoff
from rtransfer.workers import in_cpu, in_slices, in_worker

# Batches of the file list sent ahead of the reader: enough that the receiver plans the next
# while the current one's data flows, few enough that memory does not follow the tree's size.
LIST_AHEAD_BATCHES = 3
HEDGE_CHECK_S = 0.05  # how often a blocked send loop looks for a chunk stuck behind a slow connection


def send_budget(window: int, streams: int = 1) -> int:
    """The sender's chunk buffers: each connection's window of payloads awaiting their ACK and the
    ciphertexts on their way to the kernel, one chunk queued, one being read and one kept for a
    resend. One connection waits for its transport to drain after each chunk, so one ciphertext
    at a time is on its way; several never wait for one another (Dealer.deal), so each may have
    its whole window's ciphertexts queued."""
    in_transport = 1 if streams == 1 else window
    return streams * (window + in_transport) + QUEUE_CHUNKS + 2


async def run_send(config: SendConfig, reporter: Reporter) -> TransferStats:
    return await SendTransfer(config, reporter).run()


class SendTransfer:
    """What outlives a connection: the sources, the counters, the buffer pool and the backoff.
    A broken connection is followed by another; the receiver says where to resume."""

    def __init__(self, config: SendConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.sources = collect_sources(config.sources, config.stdin_name)  # first: a missing one opens nothing
        self.keys = config.keys
        self.way = config.way
        self.manifest = Manifest(
            secrets.token_hex(16),
            config.chunk_bytes,
            config.window,
            config.streams,
            delta=not config.whole_file,
            filters=config.filters,
            delete=config.delete,
            delete_excluded=config.delete_excluded,
            dry_run=config.dry_run,
            one_file=len(self.sources) == 1 and self.sources[0].entry.kind == "file",
        )
        self.stats = TransferStats("send", dry_run=config.dry_run)
        self.pool = BufferPool(send_budget(config.window, config.streams))
        self.outage = Outage(Backoff(config.connect_policy), reporter.warning, "the receiver")
        self.resumable = all(s.local is not None for s in self.sources)  # standard input cannot be read again
        rate = config.limit_rate_bps
        self.bucket = TokenBucket(rate, now()) if rate else None  # one for the transfer, across reconnects
        self.compressor = Compressor() if config.compress else None
        reads_first = config.dry_run or config.checksum  # reads no file, or reads every file whole before sending
        self.head_start = HeadStart([] if reads_first else hashed_ahead(self.sources), budget_bytes())

    async def run(self) -> TransferStats:
        reporting = asyncio.ensure_future(keep_reporting(self.reporter, self.stats))
        try:
            await keep_connected(
                self.way,
                self.connection,
                self._serve,
                self.outage,
                self._worth_another,
                self.config.timeout_s,
            )
        except RemoteError as exc:
            raise (named_for(exc, self.way.where) if self.way.names_remote_errors else exc) from None
        finally:
            self.head_start.stop()
            await cancel_all([reporting])
            self.way.close()
        if self.compressor is not None:
            self.stats.compression = self.compressor.ratio
        return self.stats

    async def _serve(self, conn: Connection) -> None:
        await SendAttempt(self, conn).run()

    def _worth_another(self, exc: RtransferError) -> bool:
        started = self.stats.accepted > 0
        waits = not self.way.dials
        if not worth_reconnecting(exc, started=started, resumable=self.resumable, waits_for_peer=waits):
            return False
        self.stats.broke()
        collect_dead_connection()
        return True

    def connection(self, stream: int = 0) -> Connection:
        """A connection of this transfer, with its own key exchange: the first (``stream`` 0), or a
        further one; keyed by the code only until a connection has proved it (crypto.TransferKeys),
        and on a direct path found through a relay, by that session."""
        secret = self.way.secret
        kex = self.keys.exchange(True) if secret is None else KeyExchange(secret, True, session=True)
        c = self.config
        machine = SenderMachine(self.manifest, now(), c.timeout_s, kex, c.encrypt, buffers=self.pool, stream=stream)
        keys = None if self.way.authenticated else self.keys
        return Connection(machine, stats=self.stats, route=self.way.route, keys=keys)


class SendAttempt(Attempt):
    """One connection's worth of sending, as three tasks beside the connection's own: the lister
    walks the sources and lists them a batch at a time, at most LIST_AHEAD_BATCHES ahead of the
    reader; the reader reads each batch's files once the receiver has accepted it; the send loop
    hands chunks to the machine. Each connection walks afresh and the receiver skips what it
    already has whole."""

    def __init__(self, transfer: SendTransfer, conn: Connection) -> None:
        super().__init__(conn, transfer.stats, transfer.reporter, transfer.pool)
        assert isinstance(conn.machine, SenderMachine)
        self.machine = conn.machine
        self.transfer = transfer
        self.queue: asyncio.Queue[SendItem] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self.listed: deque[tuple[int, list[Source]]] = deque()  # sent, awaiting the receiver's ACCEPT
        self.accepted: asyncio.Queue[AcceptedBatch | None] = asyncio.Queue()  # for the reader, in order
        self.ahead = asyncio.Semaphore(LIST_AHEAD_BATCHES)
        self.listing_done = False
        self.window_open = asyncio.Event()
        self.unconfirmed: dict[int, tuple[str, int, str]] = {}  # index -> path, size, digest, until confirmed
        self.skipped, self.first_skipped = 0, ""  # files the receiver already has whole, said once
        self.bases: dict[int, OldCopy] = {}  # the receiver's old copies, described ahead of their ACCEPT
        self.early: list[asyncio.Future[Fingerprint]] = []  # new files fingerprinted while they are described
        self.fingerprinting = asyncio.Semaphore(1)
        self.dealer = Dealer(self.machine, self.pool, self.stats, self.window_open)
        self.further: list[asyncio.Task[None]] = []
        config = transfer.config
        first = self.stats.reconnects == 0 or not transfer.resumable  # later, the data can move when a path is found
        trying = DirectOptions(config.try_direct, config.stun, transfer.resumable, config.streams, hold=first)
        self.direct = GoingDirect(transfer.way, conn, trying, transfer.reporter)
        self.on_route(transfer.way)
        self.handlers = {
            HintsReceived: self.direct.on_hints,
            PunchNow: self.direct.on_punch,
            Ponged: self.direct.on_pong,
            ChunksAcked: functools.partial(self.on_stream_acked, 0),
            Retransmitted: self.on_retransmitted,
            ChunkRejected: self.on_chunk_rejected,
            FilesVerified: self.on_files_verified,
            Accepted: self.on_accepted,
            SignatureReceived: self.on_signature,
            TransferComplete: self.on_complete,
        }

    async def run(self) -> None:
        self.stats.start_listing()
        t = self.transfer
        reading = Reading(t.config.chunk_bytes, self.queue, self.stats, self.pool, t.compressor, t.head_start)
        reader = read_sources(self.accepted, reading, self.ahead.release)
        try:
            await self.drive(self.list_entries(), reader, self.send_chunks(), self.direct.run())
        finally:
            self.direct.close()
            await cancel_all(self.further)
            await self.dealer.close()
            await cancel_all(self.early)

    def refresh(self) -> None:
        self.stats.in_flight = self.machine.in_flight
        if len(self.dealer.links) > 1:
            self.stats.streams = self.dealer.rates()

    # --- events ---------------------------------------------------------------
    async def on_stream_acked(self, stream: int, event: ChunksAcked) -> None:
        self.stats.transferred(self.dealer.first_acks(event))
        self.transfer.outage.progress += 1
        self.pool.recycle(event.released)
        self.machine.delivered(event.orders)  # the transfer's window, whichever connection acknowledged
        self.dealer.acked(stream, event)
        self.window_open.set()

    async def on_retransmitted(self, event: Retransmitted) -> None:
        self.stats.retransmits += 1
        self.reporter.retransmit(event.seq, event.reason)

    async def on_chunk_rejected(self, event: ChunkRejected) -> None:
        self.stats.integrity_failures += 1

    async def on_files_verified(self, event: FilesVerified) -> None:
        self.stats.files_done += len(event.file_indices)
        pop, done = self.unconfirmed.pop, self.reporter.file_done
        for index in event.file_indices:
            done(*pop(index))

    async def on_accepted(self, event: Accepted) -> None:
        first, batch = self.listed.popleft()
        self.stats.bytes_done += sum(event.start_offsets.values())
        self.stats.skipped(len(event.done), sum(batch[i - first].entry.size or 0 for i in event.done))
        if event.done and not self.skipped:
            self.first_skipped = batch[event.done[0] - first].entry.path
        self.skipped += len(event.done)
        if self.machine.peer_capabilities & CAP_DRY_RUN:
            files = sum(1 for source in batch if source.entry.kind == "file")
            if len(event.done) != files or event.start_offsets:  # else "nothing sent" would be a lie
                raise ProtocolViolation("the receiver said it only looks (--dry-run), and asked for data")
            self.stats.dry_run = True
        if first == 0:
            self.stats.accepted += 1
            self.reporter.started(self.stats)
            self.dealer.add(0, self.conn)
            self.open_further()
        mine = [i for i in range(first, first + len(batch)) if i in self.bases]
        self.accepted.put_nowait(AcceptedBatch(first, batch, event, {i: self.bases.pop(i) for i in mine}))
        self.window_open.set()  # the first ACCEPT opens the window
        if self.listing_done and not self.listed:
            self.all_accepted()

    def open_further(self) -> None:
        """Open the further connections, all at once, once the transfer has started on the first:
        the first byte never waits for them."""
        t, config = self.transfer, self.transfer.config
        links = StreamContext(
            way=t.way,
            make=t.connection,
            done=self.done,
            on_acked=self.on_stream_acked,
            on_event=self.handle,
            reporter=t.reporter,
            policy=config.connect_policy,
            timeout_s=config.timeout_s,
        )
        for stream in range(1, self.machine.manifest.streams):
            self.further.append(asyncio.ensure_future(FurtherStream(self.dealer, links, stream).run()))

    async def on_signature(self, event: SignatureReceived) -> None:
        """The receiver has an old copy of a file: it says so first, then describes it. Meanwhile the
        new file is fingerprinted, so both sides read their copy at once."""
        signature = event.signature
        old = self.bases.get(signature.file_index)
        if old is None:
            old = self.bases[signature.file_index] = OldCopy()
            source = self.source_of(signature.file_index)
            if source.local is not None:
                old.early = asyncio.ensure_future(self.fingerprint_early(source))
                self.early.append(old.early)
        old.matcher.add(signature.chunks)

    async def fingerprint_early(self, source: Source) -> Fingerprint:
        """One at a time, in the order announced: several at once would hold every CPU thread, and
        the reader, hashing the files before them, would wait for them."""
        async with self.fingerprinting:
            return await in_cpu(fingerprint_listed, source)

    def source_of(self, index: int) -> Source:
        first, batch = next((first, batch) for first, batch in self.listed if first <= index < first + len(batch))
        return batch[index - first]

    async def on_complete(self, event: TransferComplete) -> None:
        self.done.set()

    def all_accepted(self) -> None:
        """Every batch is listed and accepted: the reader's queue ends, and what was skipped is said once."""
        self.accepted.put_nowait(None)
        if self.stats.dry_run:
            return  # every file counts as there; the receiver says what it would do
        same = "same content" if self.transfer.config.checksum else "same size and mtime"
        why = f"the receiver has it ({same}) or keeps its own"  # a kept one ends the run with exit 6
        if self.skipped == 1:
            self.reporter.warning(f"{self.first_skipped}: not sent: {why}")
        elif self.skipped:
            self.reporter.warning(f"{self.skipped} files not sent: {why}")

    # --- tasks ----------------------------------------------------------------
    async def list_entries(self) -> None:
        warnings: list[str] = []  # reported between batches, not from inside the walk
        config = self.transfer.config
        await self.direct.first_byte()
        rules = parse_specs(config.filters)
        entries = listing(self.transfer.sources, config.safe_links, warnings.append, filters=rules)
        upcoming: list[Source] | None = await self.next_listed(entries) or []  # none: one empty batch, of nothing
        while upcoming is not None:
            await self.ahead.acquire()
            batch, upcoming = upcoming, await self.next_listed(entries)
            for message in warnings:
                self.reporter.warning(message)
            warnings.clear()
            first = self.machine.send_entries(tuple(s.entry for s in batch), upcoming is None, now())
            self.listed.append((first, batch))
            self.stats.listed([s.entry for s in batch], last=upcoming is None)
            self.conn.flush()
        self.listing_done = True

    async def next_listed(self, entries: Iterator[Source | None]) -> list[Source] | None:
        """The next batch, walked on the loop's thread in slices; with --checksum, each file then
        read whole in a worker thread. None once the walk is over."""
        batch = await in_slices(next_batch(entries))
        if batch and self.transfer.config.checksum:
            batch = await in_worker(with_content_digests, batch)
        return batch or None

    async def send_chunks(self) -> None:
        while True:
            # Wait for room in the window before taking a chunk: one waiting here would
            # hold a buffer the reader then replaces (a chunk's worth of memory).
            while not (self.machine.can_claim() and self.dealer.can_take()):
                await self.wait_for_room()
            if (item := await self.queue.get()) is None:
                break
            await self.send_item(item)
        # Over several connections DONE could overtake the last chunks or packs on another one,
        # and the receiver would see the transfer end with files it has not had: DONE waits for
        # every chunk to be acknowledged (one connection keeps its frames in order by itself).
        while self.machine.manifest.streams > 1 and self.machine.undelivered:
            await self.wait_for_room()
        self.machine.finish(now())
        self.conn.flush()

    async def wait_for_room(self) -> None:
        """Until an ACK opens a window; over several connections, also look in now and then for a
        chunk the transfer waits for that is stuck behind a slow one (Dealer.hedge)."""
        self.window_open.clear()
        if len(self.dealer.links) < 2:
            await self.window_open.wait()
            return
        # asyncio.timeout, not wait_for: on 3.11 a cancel that lands as wait_for times out is
        # swallowed, and this loop then outlived its cancelled connection (a hang, seen under resets).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEDGE_CHECK_S):
                await self.window_open.wait()
        await self.dealer.hedge()

    async def send_item(self, item: SendItem) -> None:
        machine = self.machine
        if isinstance(item, EndOfFile):
            self.unconfirmed[item.file_index] = (item.path, item.size, item.digest.hex())
            machine.end_file(item.file_index, item.size, item.digest, now())
            return
        if self.transfer.bucket is not None and item is not None:
            await asyncio.sleep(self.transfer.bucket.delay_s(now()))
            self.transfer.bucket.take(len(item.payload), now())
        if isinstance(item, Packed):
            for packed, path in zip(item.files, item.paths, strict=True):
                self.unconfirmed[packed.file_index] = (path, packed.size, packed.digest.hex())
            files = tuple(f.file_index for f in item.files)
            chunk = Data(0, files[0], 0, item.payload, FrameType.PACK, machine.claim_pack(files))
        elif item is not None:
            order = machine.claim_chunk(item.file_index)
            chunk = Data(0, item.file_index, item.offset, item.payload, item.kind, order)
        await self.dealer.deal(chunk)
        self.stats.chunks += 1
