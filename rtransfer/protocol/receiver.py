"""Receiver state machine: validates every frame, reorders, ACKs/NACKs, confirms files.

Chunks leave this machine strictly in order, so the writer appends and hashes
sequentially; out-of-order arrivals wait here, bounded by the window.
"""

from __future__ import annotations

from collections import deque

from msgspec import Struct

from rtransfer.protocol.constants import MAX_SIGNATURE_CHUNKS, FrameType, Phase, Role, Track
from rtransfer.protocol.errors import LimitExceeded, LocalProtocolError, RemoteProtocolError
from rtransfer.protocol.events import (
    ChunkArrived,
    ChunkReady,
    ChunkRejected,
    DuplicateChunk,
    EntriesReceived,
    Event,
    FileComplete,
    JoinRequested,
    ManifestReceived,
    PackReady,
    TransferComplete,
)
from rtransfer.protocol.messages import (
    Accept,
    Ack,
    CorruptChunk,
    Data,
    Done,
    FileEnd,
    FileResult,
    Join,
    Joined,
    Nack,
    PackResult,
    copy_ranges,
    file_bytes,
)
from rtransfer.protocol.model import (
    FRESH_BUFFERS,
    Basis,
    Buffer,
    Buffers,
    EntryBatch,
    Manifest,
    Signature,
    reorder_span,
)
from rtransfer.protocol.pack import read_table
from rtransfer.protocol.peer import CAP_DRY_RUN, KeyExchange, Peer, guarded
from rtransfer.protocol.reorder import Reorder


class ReceiveLimits(Struct, frozen=True):
    """What one transfer may declare; guards the receiver's disk and memory."""

    max_entries: int = 1_000_000
    max_total_bytes: int = 1 << 50
    max_streams: int = 16  # connections one transfer may use (each costs a window of chunk buffers)


class _Incoming(Struct):
    """A file accepted and not yet confirmed: what the machine checks its chunks against."""

    size: int | None  # declared; None for a stream
    received: int  # contiguous bytes handed out (from the resume point)
    short_chunk: bool = False  # its last chunk has been seen
    end: FileEnd | None = None
    completed: bool = False
    basis_bytes: int | None = None  # delta: the size of the old copy COPY chunks may take ranges of


class ReceiverMachine(Peer):
    """Receives the manifest, then the file list batch by batch (the driver plans and accepts
    each), then chunks. Per-file state lasts until the file is confirmed, so memory follows
    the files in flight, not the size of the tree.

    A transfer over several connections has one such machine per connection. The first
    connection's machine owns the file list; a further connection's (it sent JOIN instead
    of a manifest) only acknowledges chunks and hands them on (``ChunkArrived``), and the
    driver gives them to the first machine's ``deliver``. There, chunks from every
    connection are put back in the transfer's order (protocol/reorder.py) before they are
    checked against the file list, so files are still written front to back."""

    role = Role.RECEIVER
    track = Track.RECEIVER

    def __init__(
        self,
        now: float,
        timeout_s: float,
        kex: KeyExchange,
        encrypt: bool = True,
        limits: ReceiveLimits | None = None,
        buffers: Buffers = FRESH_BUFFERS,
        running: Manifest | None = None,
        dry_run: bool = False,
    ) -> None:
        """``running``: the transfer this side is receiving, when this connection may be a further
        one of it (JOIN names it); None for its first. ``dry_run``: said in the HELLO."""
        super().__init__(now, timeout_s, kex, encrypt, buffers, CAP_DRY_RUN if dry_run else 0)
        self.limits = limits or ReceiveLimits()
        self.running = running
        self.manifest = Manifest("", 0, 0)  # the sender's, once it arrives (phase PLANNING on)
        self.stream = 0  # a further connection's number, once it has joined
        self._handed_on = 0  # on a further connection: chunks up to here are in the transfer's order
        self._reorder: Reorder[Data] = Reorder(1)
        self._next_seq = 0
        self._pending: dict[int, Data] = {}
        self._ack_due = False
        self._next_entry = 0
        self._listed_all = False
        self._declared_bytes = 0
        self._unplanned: deque[EntryBatch] = deque()  # batches handed out, not yet accepted
        self._files: dict[int, _Incoming] = {}
        self._packs: set[int] = set()  # seqs of packs handed out, not yet written
        self._complete = False  # TransferComplete said: the driver's last steps, then ``finish``
        self._current_file = -1
        self._unended: set[int] = set()  # files with all their bytes, whose FILE_END has not come yet
        self._total_bytes = 0

    @property
    def reorder_buffered(self) -> int:
        return len(self._pending) + self._reorder.waiting

    def held_buffers(self) -> list[Buffer]:
        """Chunks waiting to be reordered and the frame being read (see SenderMachine.held_buffers)."""
        waiting = [*self._pending.values(), *self._reorder.held()]
        return [frame.payload for frame in waiting] + super().held_buffers()

    @property
    def _routed(self) -> bool:
        """Over several connections, every connection hands its chunks to the driver (``ChunkArrived``),
        which gives them to the first connection's ``deliver`` one at a time, in one place, so what
        comes out of the reorder reaches the writer in order; each is acknowledged once handed on."""
        return bool(self.stream) or self.manifest.streams > 1

    @guarded
    def deliver(self, chunk: Data, now: float) -> list[Event]:
        """A chunk of this transfer, from any of its connections (their ``ChunkArrived``)."""
        if self.stream or self.phase not in (Phase.TRANSFERRING, Phase.FINISHING):
            raise LocalProtocolError("deliver called on a further connection's machine, or out of turn")
        self._now = now
        events: list[Event] = []
        self._arrive(chunk, events)
        return events

    @guarded
    def accept(
        self,
        first: int,
        start_offsets: dict[int, int],
        now: float,
        done: tuple[int, ...] = (),
        bases: dict[int, Basis] | None = None,
    ) -> list[Event]:
        """The driver checked the batch starting at ``first`` against the disk; its data may flow now.

        Files in ``done`` are already here whole; the others resume at ``start_offsets``. Files in
        ``bases`` have an old copy here, described by its signature: their data may come as
        COPY chunks, ranges of that copy (the signatures go out first, so the sender has them
        when the ACCEPT arrives)."""
        if not self._unplanned or self._unplanned[0].first != first:
            raise LocalProtocolError(f"accept({first}) out of order")
        self._now = now
        batch = self._unplanned[0]
        bases = bases or {}
        for index, basis in bases.items():
            offset = 0
            for at in range(0, len(basis), MAX_SIGNATURE_CHUNKS):
                chunks = basis[at : at + MAX_SIGNATURE_CHUNKS]
                self._send_as_told(Signature(index, offset, chunks))
                offset += sum(length for length, _ in chunks)
        offsets = {i: o for i, o in start_offsets.items() if o and i not in done}
        self._send_as_told(Accept(first, offsets, done))
        self._unplanned.popleft()
        skip, files, starts = set(done), self._files, start_offsets.get
        for i, entry in enumerate(batch.entries, batch.first):
            if entry.kind == "file" and i not in skip:
                described = bases.get(i) if bases else None
                basis_bytes = sum(length for length, _ in described) if described is not None else None
                files[i] = _Incoming(entry.size, starts(i, 0), basis_bytes=basis_bytes)
        events: list[Event] = []
        self._maybe_finish(events)
        return events

    @guarded
    def announce_bases(self, indices: tuple[int, ...], now: float) -> None:
        """Tell the sender, before describing them, which files of the batch being planned have an
        old copy here (an empty SIGNATURE each): it can fingerprint its own copy meanwhile."""
        if not self._unplanned:
            raise LocalProtocolError("announce_bases with no batch being planned")
        self._now = now
        for index in indices:
            self._send_as_told(Signature(index, 0, ()))

    @guarded
    def file_verified(self, file_index: int, ok: bool, now: float) -> list[Event]:
        """The writer finished a file and compared digests; tell the sender."""
        if file_index not in self._files:
            raise LocalProtocolError(f"file_verified for file {file_index}, which is not being received")
        self._now = now
        self._send_as_told(FileResult(file_index, ok))
        del self._files[file_index]
        events: list[Event] = []
        self._maybe_finish(events)
        return events

    @guarded
    def pack_written(self, order: int, ok: bool, now: float) -> list[Event]:
        """The writer put every file of a pack in place (``ok``), or found one whose digest failed."""
        if order not in self._packs:
            raise LocalProtocolError(f"pack_written for {order}, which is not a pack being written")
        self._now = now
        self._send_as_told(PackResult(order, ok))
        self._packs.remove(order)
        events: list[Event] = []
        self._maybe_finish(events)
        return events

    def _on_manifest(self, frame: Manifest, events: list[Event]) -> None:
        if self.running is not None:
            raise RemoteProtocolError("a second MANIFEST while a transfer runs: a further connection JOINs it")
        if frame.streams > self.limits.max_streams:
            limit = self.limits.max_streams
            raise LimitExceeded(f"transfer asks for {frame.streams} connections; the limit is {limit}")
        self.manifest = frame
        self._reorder = Reorder(reorder_span(frame))
        events.append(ManifestReceived(frame))

    def _on_join(self, frame: Join, events: list[Event]) -> None:
        """A further connection names the running transfer (``running``), and a stream it asked for."""
        running = self.running
        if running is None:
            raise RemoteProtocolError("a further connection arrived before the transfer's first")
        if frame.manifest != running or not 1 <= frame.stream < running.streams:
            raise RemoteProtocolError("a connection tried to join another transfer")
        self.manifest, self.stream = frame.manifest, frame.stream
        self._send(Joined())
        events.append(JoinRequested(frame.manifest, frame.stream))

    def _on_done(self, frame: Done, events: list[Event]) -> None:
        unended = any(f.end is None for f in self._files.values())
        if not self._listed_all or self._unplanned or unended:
            raise RemoteProtocolError("sender finished before listing and ending every file")
        self._maybe_finish(events)

    def _on_entries(self, batch: EntryBatch, events: list[Event]) -> None:
        if self._listed_all:
            raise RemoteProtocolError("ENTRIES after the last batch of the list")
        if batch.first != self._next_entry:
            raise RemoteProtocolError(f"ENTRIES starting at {batch.first}; expected {self._next_entry}")
        self._next_entry += len(batch.entries)
        self._listed_all = batch.last
        if self._next_entry > self.limits.max_entries:
            raise LimitExceeded(
                f"transfer declares at least {self._next_entry} entries; the limit is {self.limits.max_entries}"
            )
        self._declared_bytes += sum(e.size or 0 for e in batch.entries)
        if self._declared_bytes > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"transfer declares {self._declared_bytes} bytes; the limit is {self.limits.max_total_bytes}"
            )
        self._unplanned.append(batch)
        events.append(EntriesReceived(batch))

    def _in_window(self, seq: int) -> bool:
        return self._next_seq <= seq < self._next_seq + self.manifest.window

    def _on_data(self, frame: Data, events: list[Event]) -> None:
        seq = frame.seq
        if seq < self._next_seq or seq in self._pending:
            self._ack_due = True  # the sender resent it: tell it again where we are
            events.append(DuplicateChunk(seq))
            return
        self._ack_due = not self._routed  # routed chunks are acknowledged when handed on
        if not self._in_window(seq):
            raise RemoteProtocolError(f"sequence number {seq} is outside the window starting at {self._next_seq}")
        self._pending[seq] = frame
        while self._next_seq in self._pending:
            frame = self._pending.pop(self._next_seq)
            self._next_seq += 1
            if self._routed:
                events.append(ChunkArrived(frame))
            else:
                self._arrive(frame, events)

    def _arrive(self, frame: Data, events: list[Event]) -> None:
        """Into the transfer's order; what is next in it goes on to be checked against the files."""
        ready, duplicate = self._reorder.add(frame.order, frame)
        if duplicate:
            events.append(DuplicateChunk(frame.seq))
        for chunk in ready:
            if chunk.packed:
                self._release_pack(chunk, events)
            else:
                self._release_chunk(chunk, events)

    def _on_corrupt(self, frame: CorruptChunk, events: list[Event]) -> None:
        events.append(ChunkRejected(frame.seq))
        if self._in_window(frame.seq) and frame.seq not in self._pending:
            self._send(Nack(frame.seq))

    def _incoming(self, index: int) -> _Incoming:
        incoming = self._files.get(index)
        if incoming is None:
            raise RemoteProtocolError(f"DATA for entry {index}, which is not a file this transfer is receiving")
        if index < self._current_file or incoming.completed:
            raise RemoteProtocolError(f"DATA for file {index} after the sender moved past it")
        return incoming

    def _count_bytes(self, size: int) -> None:
        self._total_bytes += size
        if self._total_bytes > self.limits.max_total_bytes:
            raise LimitExceeded(f"transfer exceeds the limit of {self.limits.max_total_bytes} bytes")

    def _file_bytes(self, frame: Data, incoming: _Incoming) -> int:
        """How much of the file a chunk stands for, checked: COPY only where this side sent a
        signature, and only ranges inside that old copy."""
        if frame.kind is FrameType.COPY:
            basis = incoming.basis_bytes
            ranges = copy_ranges(frame.payload)
            if basis is None or any(length == 0 or offset + length > basis for offset, length in ranges):
                raise RemoteProtocolError(f"COPY for file {frame.file_index} outside its old copy here")
        return file_bytes(frame)

    def _release_chunk(self, frame: Data, events: list[Event]) -> None:
        index = frame.file_index
        incoming = self._incoming(index)
        size = self._file_bytes(frame, incoming)
        # A delta's chunks follow the content, not a fixed size; a copy may span many chunks.
        fixed = incoming.basis_bytes is None
        too_big = frame.kind is not FrameType.COPY and size > self.manifest.chunk_bytes
        if (fixed and incoming.short_chunk) or size == 0 or too_big:
            raise RemoteProtocolError(f"DATA of {size} bytes for file {index} breaks chunking")
        expected = incoming.received
        if frame.offset != expected:
            raise RemoteProtocolError(f"DATA for file {index} at offset {frame.offset}; expected {expected}")
        end = expected + size
        if incoming.size is not None and end > incoming.size:
            raise RemoteProtocolError(f"DATA runs past the declared size of file {index}")
        self._count_bytes(size)
        incoming.short_chunk = size < self.manifest.chunk_bytes
        self._move_to(index)
        incoming.received = end
        if end == incoming.size and incoming.end is None:
            self._unended.add(index)
        events.append(ChunkReady(index, frame.offset, frame.payload, frame.kind))
        self._maybe_complete(index, events)

    def _release_pack(self, frame: Data, events: list[Event]) -> None:
        """Every file of a pack must be whole, declared at that size, not yet started, and in order."""
        files = read_table(frame.payload)
        if not files:
            raise RemoteProtocolError("PACK of no files")
        for packed in files:
            incoming = self._incoming(packed.file_index)
            if packed.file_index == self._current_file or incoming.received or incoming.size != packed.size:
                raise RemoteProtocolError(f"PACK holds file {packed.file_index}, which is started or of another size")
            self._move_to(packed.file_index)
            self._count_bytes(packed.size)
            del self._files[packed.file_index]
        self._packs.add(frame.order)
        events.append(PackReady(frame.order, files, frame.payload, self.encrypted))

    def _move_to(self, index: int) -> None:
        """Files come one after the other: a file may start only once the one before has all its
        bytes, and only a few may wait for their FILE_END (it travels on the first connection, and
        may come after the next file's chunks on others). A sender that opened file after file and
        finished none held this side's descriptors and buffers without bound."""
        if index == self._current_file:
            return
        current = self._files.get(self._current_file)
        if current is not None and current.size is not None and current.received != current.size:
            raise RemoteProtocolError(f"file {index} began before file {self._current_file} had all its bytes")
        if len(self._unended) > reorder_span(self.manifest) + 2:
            raise RemoteProtocolError(f"{len(self._unended)} files have all their bytes and no FILE_END")
        self._current_file = index

    def _on_file_end(self, frame: FileEnd, events: list[Event]) -> None:
        index = frame.file_index
        incoming = self._files.get(index)
        if incoming is None or incoming.end is not None:
            raise RemoteProtocolError(f"unexpected FILE_END for entry {index}")
        if incoming.size is not None and frame.size != incoming.size:
            raise RemoteProtocolError(f"file {index} ended at {frame.size} bytes but was declared as {incoming.size}")
        if incoming.received > frame.size:
            raise RemoteProtocolError(f"file {index} ended at {frame.size} bytes after {incoming.received} arrived")
        incoming.end = frame
        self._unended.discard(index)
        self._maybe_complete(index, events)

    def _maybe_complete(self, index: int, events: list[Event]) -> None:
        incoming = self._files[index]
        end = incoming.end
        if end is not None and incoming.received == end.size and not incoming.completed:
            incoming.completed = True
            events.append(FileComplete(index, end.size, end.digest))

    def _maybe_finish(self, events: list[Event]) -> None:
        if self.phase is Phase.FINISHING and not self._files and not self._packs and not self._complete:
            self._complete = True
            events.append(TransferComplete())

    @guarded
    def finish(self, now: float) -> None:
        """The driver has taken the transfer's last steps (links, --delete, directories' times,
        the final renames): DONE tells the sender, which exits with this side's outcome. A step that
        failed is an ERROR instead (``fail``), with its exit code."""
        if not self._complete:
            raise LocalProtocolError("finish called before every file was received")
        self._now = now
        self._send_as_told(Done())

    def _after_batch(self, events: list[Event]) -> None:
        if self._ack_due:
            self._ack_due = False
            if self._routed:
                self._send(Ack(self._handed_on, ()))
            else:
                self._send(Ack(self._next_seq, tuple(sorted(self._pending))))

    @guarded
    def handed_on(self, seq: int, now: float) -> None:
        """The driver gave chunk ``seq`` of this connection to the first connection's machine.

        Only now is it acknowledged: the sender's window counts a chunk as done when it is
        acknowledged, and the receiver's reorder window must hold whatever is not."""
        if not self._routed or seq >= self._next_seq:
            raise LocalProtocolError(f"handed_on({seq}) on a transfer of one connection, or for a chunk not yet here")
        self._now = now
        self._handed_on = max(self._handed_on, seq + 1)
        self._send(Ack(self._handed_on, ()))


ReceiverMachine.HANDLERS = {
    **Peer.HANDLERS,
    Data: ReceiverMachine._on_data,
    CorruptChunk: ReceiverMachine._on_corrupt,
    Manifest: ReceiverMachine._on_manifest,
    Join: ReceiverMachine._on_join,
    EntryBatch: ReceiverMachine._on_entries,
    FileEnd: ReceiverMachine._on_file_end,
    Done: ReceiverMachine._on_done,
}
