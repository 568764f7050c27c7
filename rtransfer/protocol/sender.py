"""Sender state machine: windowed chunks, ACK/NACK handling, timeout resends."""

from __future__ import annotations

from collections import OrderedDict, deque

from msgspec import Struct

from rtransfer.protocol.constants import FrameType, Phase, Role, Track
from rtransfer.protocol.errors import LocalProtocolError, RemoteProtocolError, Unrepairable
from rtransfer.protocol.events import (
    Accepted,
    ChunkRejected,
    ChunksAcked,
    Event,
    FilesVerified,
    Retransmitted,
    SignatureReceived,
    StreamJoined,
    TransferComplete,
)
from rtransfer.protocol.messages import (
    Accept,
    Ack,
    Data,
    Done,
    FileEnd,
    FileResult,
    Join,
    Joined,
    Nack,
    PackResult,
    file_bytes,
)
from rtransfer.protocol.model import (
    FRESH_BUFFERS,
    Buffer,
    Buffers,
    Entry,
    EntryBatch,
    Manifest,
    Signature,
    reorder_span,
)
from rtransfer.protocol.peer import KeyExchange, Peer, guarded
from rtransfer.protocol.phases import after_sent
from rtransfer.protocol.timing import RetransmitTimer

# A chunk the receiver rejects this many times is not being hit by chance: the path
# damages it every time (or someone tampers with it). Exit 4 beats resending forever;
# a path flipping a bit in 1 of 3 reads fails 16 in a row once in ~40 million chunks.
MAX_CHUNK_FAILURES = 16


class _InFlight(Struct):
    frame: Data
    sent_at: float
    wire: Buffer  # what went to the transport: the payload, or its ciphertext
    data_bytes: int  # file bytes it carries (a pack's table is not counted)
    retransmitted: bool = False
    failures: int = 0


class _Listed(Struct, frozen=True):
    """A batch of the file list sent and not yet accepted."""

    first: int
    count: int
    files: frozenset[int]


class SenderMachine(Peer):
    """Sends the manifest once keys are agreed, then the file list in batches; data for a
    batch's files may flow once the receiver has accepted that batch.

    The window is a span of sequence numbers starting at the oldest unacknowledged
    chunk, so the receiver never has to hold more than ``window`` chunks out of order.
    What the machine keeps per file lasts only until the receiver has confirmed it, so
    its memory follows the files in flight, not the size of the tree.

    A transfer over several connections has one such machine per connection. The one
    on the first (``stream`` 0) owns the file list and numbers every chunk of the
    transfer (``claim_chunk``, ``claim_pack``), holding the transfer to ``window`` x
    ``streams`` chunks beyond the oldest one not yet acknowledged on any connection
    (``delivered``), which is what the receiver may hold out of order. A machine on a
    further connection sends JOIN instead of the manifest and carries only chunks.
    """

    role = Role.SENDER

    def __init__(
        self,
        manifest: Manifest,
        now: float,
        timeout_s: float,
        kex: KeyExchange,
        encrypt: bool = True,
        timer: RetransmitTimer | None = None,
        buffers: Buffers = FRESH_BUFFERS,
        entries: tuple[Entry, ...] | None = None,
        stream: int = 0,
    ) -> None:
        """``entries``, when given, is the whole file list, sent as one batch (tests, small transfers)."""
        self.manifest = manifest
        self.stream = stream
        self.track = Track.FURTHER_SENDER if stream else Track.SENDER
        self._early: list[EntryBatch] = []  # batches listed before the keys were agreed
        super().__init__(now, timeout_s, kex, encrypt, buffers)
        self._timer = timer or RetransmitTimer()
        self._next_seq = 0
        self._unacked: OrderedDict[int, _InFlight] = OrderedDict()
        self._timer_armed_at = now
        self._next_entry = 0
        self._listed_all = False
        self._unaccepted: deque[_Listed] = deque()
        self._paths: dict[int, str] = {}  # listed files not yet confirmed by the receiver
        self._sendable: set[int] = set()  # accepted files not yet ended or packed
        self._ended: set[int] = set()  # ended, awaiting FILE_RESULT
        self._packs: dict[int, tuple[int, ...]] = {}  # order -> its files, awaiting PACK_RESULT
        self._next_order = 0
        self._undelivered: OrderedDict[int, None] = OrderedDict()  # orders claimed, not yet acknowledged anywhere
        self._described: dict[int, int] = {}  # files awaiting their ACCEPT: bytes of the old copy described so far
        if entries is not None:
            self.send_entries(entries, True, now)

    def _on_keys(self) -> None:
        if self.stream:
            self._send(Join(self.manifest, self.stream))
            return
        self._send(self.manifest)
        for batch in self._early:
            self._send(batch)
        self._early.clear()

    @property
    def in_flight(self) -> int:
        return len(self._unacked)

    @property
    def batches_unaccepted(self) -> int:
        return len(self._unaccepted)

    @property
    def rto_s(self) -> float:
        return self._timer.rto_s

    @guarded
    def send_entries(self, entries: tuple[Entry, ...], last: bool, now: float) -> int:
        """List the next batch of entries (``last``: the list ends with it); returns the index
        of its first entry. Batches listed before the keys are agreed wait for them."""
        if self._listed_all or self.stream:
            raise LocalProtocolError("send_entries called after the last batch, or on a further connection")
        self.phase = after_sent(self.track, self.phase, FrameType.ENTRIES)
        self._now = now
        first = self._next_entry
        self._next_entry += len(entries)
        self._listed_all = last
        files = frozenset(first + i for i, e in enumerate(entries) if e.kind == "file")
        self._paths.update((i, entries[i - first].path) for i in files)
        self._unaccepted.append(_Listed(first, len(entries), files))
        batch = EntryBatch(first, entries, last)
        if self.phase is Phase.GREETING:
            self._early.append(batch)
        else:
            self._send(batch)
        return first

    def _window_base(self) -> int:
        return next(iter(self._unacked)) if self._unacked else self._next_seq

    def can_send(self) -> bool:
        carries = self.phase in (Phase.TRANSFERRING, Phase.CARRYING)
        return carries and self._next_seq < self._window_base() + self.manifest.window

    def can_claim(self) -> bool:
        """The next chunk's number is within what the receiver may hold out of order."""
        oldest = self.oldest_undelivered
        base = self._next_order if oldest is None else oldest
        return self._next_order < base + reorder_span(self.manifest)

    def _claim(self, files: tuple[int, ...]) -> int:
        if self.stream or self.phase is not Phase.TRANSFERRING or not self.can_claim():
            raise LocalProtocolError(
                "a chunk claimed out of turn (a further connection, or past the transfer's window)"
            )
        if not self._sendable.issuperset(files):
            raise LocalProtocolError(f"data for files {files} before their batch was accepted, or after they ended")
        order = self._next_order
        self._next_order += 1
        self._undelivered[order] = None
        return order

    @guarded
    def claim_chunk(self, file_index: int) -> int:
        """Number the next chunk of ``file_index`` in the transfer (the first connection's machine only)."""
        return self._claim((file_index,))

    @guarded
    def claim_pack(self, files: tuple[int, ...]) -> int:
        """Number a pack of whole small files; they count as sent from now on."""
        order = self._claim(files)
        self._sendable.difference_update(files)
        self._packs[order] = files
        return order

    @guarded
    def delivered(self, orders: tuple[int, ...]) -> None:
        """Chunks acknowledged on any connection: the transfer's window moves on."""
        for order in orders:
            self._undelivered.pop(order, None)

    @guarded
    def send_chunk(self, file_index: int, offset: int, payload: Buffer, now: float) -> int:
        """Claim a chunk and send it on this connection."""
        order = self._claim((file_index,))
        return self.send_data(Data(0, file_index, offset, payload, order=order), now)

    @guarded
    def send_pack(self, files: tuple[int, ...], payload: Buffer, now: float) -> int:
        """Send whole small files packed in one chunk (``payload`` as protocol/pack.py lays it out)."""
        order = self.claim_pack(files)
        return self.send_data(Data(0, files[0], 0, payload, FrameType.PACK, order), now)

    @guarded
    def send_data(self, chunk: Data, now: float) -> int:
        """Send a claimed chunk (``chunk.seq`` is ignored: this connection numbers it); returns its seq."""
        if not self.can_send():
            raise LocalProtocolError("a chunk sent while the window is closed")
        self._now = now
        frame = Data(self._next_seq, chunk.file_index, chunk.offset, chunk.payload, chunk.kind, chunk.order)
        data_bytes = file_bytes(frame)
        self._next_seq += 1
        if not self._unacked:
            self._timer_armed_at = now
        self._unacked[frame.seq] = _InFlight(frame, now, self._send_as_told(frame)[-1], data_bytes)
        return frame.seq

    @property
    def oldest_undelivered(self) -> int | None:
        return next(iter(self._undelivered), None)

    @property
    def undelivered(self) -> frozenset[int]:
        """Orders claimed and not yet acknowledged on any connection (the first connection's machine)."""
        return frozenset(self._undelivered)

    def unacked_chunks(self) -> list[Data]:
        """What this connection sent and never saw acknowledged (to send on another when it dies)."""
        return [item.frame for item in self._unacked.values()]

    def take_written(self, pending: int = 0) -> list[Buffer]:
        """Ciphertext buffers nobody needs any more: those the transport has written to the kernel.

        ``pending`` is what the transport still holds: the last bytes handed to it, so every chunk
        sent before the newest ``pending`` bytes' worth has gone (counting only chunks errs on the
        side of keeping: frames sent between them made those bytes older still). A chunk's
        ciphertext can then be reused before its ACK (a resend seals the payload again), which
        halves the buffers held for a window of sealed chunks."""
        taken = []
        for item in reversed(self._unacked.values()):
            if pending > 0:
                pending -= len(item.wire)
                continue
            if item.wire is not item.frame.payload:
                if not item.retransmitted:
                    taken.append(item.wire)
                item.wire = item.frame.payload
        return taken

    def held_buffers(self) -> list[Buffer]:
        """Every chunk buffer this machine still holds (for the driver to recycle once the
        connection is gone and nothing will send them again)."""
        return [b for item in self._unacked.values() for b in (item.frame.payload, item.wire)] + super().held_buffers()

    @guarded
    def end_file(self, file_index: int, size: int, digest: bytes, now: float) -> None:
        self._now = now
        if file_index not in self._sendable:
            raise LocalProtocolError(f"end_file for file {file_index}, which is not being sent")
        self._send_as_told(FileEnd(file_index, size, digest))
        self._sendable.discard(file_index)
        self._ended.add(file_index)

    @guarded
    def finish(self, now: float) -> None:
        """Every file has been ended or packed (on a further connection: the transfer is done);
        tell the receiver nothing else is coming."""
        self._now = now
        if not self.stream and (not self._listed_all or self._unaccepted or self._sendable):
            raise LocalProtocolError("finish called before every file was listed, accepted and sent")
        self._send_as_told(Done())

    def _path(self, file_index: int) -> str:
        return self._paths.get(file_index, f"file {file_index}")

    def _verified(self, file_indices: tuple[int, ...], events: list[Event]) -> None:
        for index in file_indices:
            del self._paths[index]
        events.append(FilesVerified(file_indices))

    def _on_signature(self, frame: Signature, events: list[Event]) -> None:
        """Part of the receiver's old copy of a file awaiting its ACCEPT, continuing what was described."""
        if not any(frame.file_index in listed.files for listed in self._unaccepted):
            raise RemoteProtocolError(f"SIGNATURE for entry {frame.file_index}, not a file awaiting its ACCEPT")
        described = self._described.get(frame.file_index, 0)
        if frame.offset != described:
            raise RemoteProtocolError(f"SIGNATURE at {frame.offset}; the description so far ends at {described}")
        self._described[frame.file_index] = described + sum(length for length, _ in frame.chunks)
        events.append(SignatureReceived(frame))

    def _on_joined(self, frame: Joined, events: list[Event]) -> None:
        events.append(StreamJoined(self.stream))

    def _on_done(self, frame: Done, events: list[Event]) -> None:
        if self._paths:
            raise RemoteProtocolError(f"receiver finished before confirming {len(self._paths)} files")
        events.append(TransferComplete())

    def _on_nack(self, frame: Nack, events: list[Event]) -> None:
        if frame.seq >= self._next_seq:
            raise RemoteProtocolError(f"NACK for sequence number {frame.seq}, which was never sent")
        events.append(ChunkRejected(frame.seq))
        if frame.seq in self._unacked:
            item = self._unacked[frame.seq]
            item.failures += 1
            if item.failures >= MAX_CHUNK_FAILURES:
                path = self._path(item.frame.file_index)
                raise Unrepairable(
                    f"{path}: the chunk at offset {item.frame.offset} failed its check {item.failures} times "
                    "in a row; the path keeps damaging it"
                )
            self._resend(frame.seq, "nack", events)

    def _on_file_result(self, frame: FileResult, events: list[Event]) -> None:
        if frame.file_index not in self._ended:
            raise RemoteProtocolError(f"FILE_RESULT for file {frame.file_index}, which awaits none")
        if not frame.ok:
            raise Unrepairable(f"{self._path(frame.file_index)}: whole-file BLAKE3 digest mismatch at the receiver")
        self._ended.discard(frame.file_index)
        self._verified((frame.file_index,), events)

    def _on_pack_result(self, frame: PackResult, events: list[Event]) -> None:
        if frame.order not in self._packs:
            raise RemoteProtocolError(f"PACK_RESULT for {frame.order}, which awaits none")
        files = self._packs.pop(frame.order)
        if not frame.ok:
            names = ", ".join(self._path(i) for i in files[:3])
            raise Unrepairable(f"a small file packed with {names}...: BLAKE3 digest mismatch at the receiver")
        self._verified(tuple(files), events)

    def _on_accept(self, frame: Accept, events: list[Event]) -> None:
        if not self._unaccepted:
            raise RemoteProtocolError(f"ACCEPT for the batch at {frame.first}, which was never listed")
        listed = self._unaccepted.popleft()
        for index in listed.files:
            self._described.pop(index, None)
        if frame.first != listed.first:
            raise RemoteProtocolError(f"ACCEPT for the batch at {frame.first}; expected the one at {listed.first}")
        if not listed.files.issuperset(frame.done) or not listed.files.issuperset(frame.start_offsets):
            raise RemoteProtocolError("ACCEPT names an entry that is not a file of its batch")
        if len(set(frame.done)) != len(frame.done) or not set(frame.done).isdisjoint(frame.start_offsets):
            raise RemoteProtocolError("ACCEPT names a file twice")
        self._sendable |= listed.files.difference(frame.done)
        for index in frame.done:
            del self._paths[index]
        events.append(Accepted(frame.first, dict(frame.start_offsets), tuple(frame.done)))

    def _on_ack(self, ack: Ack, events: list[Event]) -> None:
        if ack.cumulative > self._next_seq or any(s >= self._next_seq for s in ack.selective):
            raise RemoteProtocolError("ACK for a sequence number that was never sent")
        acked: list[_InFlight] = []
        while self._unacked and next(iter(self._unacked)) < ack.cumulative:
            acked.append(self._unacked.popitem(last=False)[1])
        for seq in ack.selective:
            item = self._unacked.pop(seq, None)
            if item is not None:
                acked.append(item)
        if not acked:
            return
        fresh = [a for a in acked if not a.retransmitted]
        if fresh:
            self._timer.sample(self._now - max(a.sent_at for a in fresh))
        self._timer.progress()
        self._timer_armed_at = self._now
        released = tuple(
            b
            for a in acked
            if not a.retransmitted
            for b in ((a.frame.payload,) if a.wire is a.frame.payload else (a.frame.payload, a.wire))
        )
        orders = tuple(a.frame.order for a in acked)
        if not self.stream:
            self.delivered(orders)  # the driver passes on other connections' (delivered is idempotent)
        events.append(ChunksAcked(orders, tuple(a.data_bytes for a in acked), released))

    def _resend(self, seq: int, reason: str, events: list[Event]) -> None:
        item = self._unacked[seq]
        item.retransmitted = True
        item.sent_at = self._now
        self._send(item.frame)
        events.append(Retransmitted(seq, reason))

    def backlogged(self, now: float) -> None:
        """The driver's transport still holds bytes it could not write: the oldest chunk in flight
        may not have left yet, and resending it would only queue a second copy (and seal it into a
        fresh buffer) behind the first. The retransmission timer starts again from ``now``."""
        if self._unacked:
            self._timer_armed_at = now

    def _on_timer(self, now: float, events: list[Event]) -> None:
        if self._unacked and now >= self._timer_armed_at + self._timer.rto_s:
            self._resend(next(iter(self._unacked)), "timeout", events)
            self._timer.expired()
            self._timer_armed_at = now

    def next_deadline(self) -> float:
        deadline = super().next_deadline()
        if self._unacked:
            deadline = min(deadline, self._timer_armed_at + self._timer.rto_s)
        return deadline


SenderMachine.HANDLERS = {
    **Peer.HANDLERS,
    Ack: SenderMachine._on_ack,
    Nack: SenderMachine._on_nack,
    Accept: SenderMachine._on_accept,
    Signature: SenderMachine._on_signature,
    Joined: SenderMachine._on_joined,
    FileResult: SenderMachine._on_file_result,
    PackResult: SenderMachine._on_pack_result,
    Done: SenderMachine._on_done,
}
