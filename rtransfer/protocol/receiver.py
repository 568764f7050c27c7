"""Receiver state machine: validates every frame, reorders, ACKs/NACKs, confirms files.

Chunks leave this machine strictly in order, so the writer appends and hashes
sequentially; out-of-order arrivals wait here, bounded by the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtransfer.crypto import KeyExchange
from rtransfer.errors import LocalIOError
from rtransfer.protocol.errors import ProtocolError
from rtransfer.protocol.events import (
    ChunkReady,
    DuplicateChunk,
    Event,
    FileComplete,
    IntegrityFailure,
    ManifestReceived,
    TransferComplete,
)
from rtransfer.protocol.frames import (
    FRESH_BUFFERS,
    Accept,
    Ack,
    Buffer,
    Buffers,
    CorruptData,
    Data,
    Done,
    FileEnd,
    FileResult,
    Frame,
    Manifest,
    Nack,
    Role,
)
from rtransfer.protocol.peer import Peer


@dataclass(frozen=True)
class ReceiveLimits:
    """What one transfer may declare; guards the receiver's disk and memory."""

    max_entries: int = 1_000_000
    max_total_bytes: int = 1 << 50


class ReceiverMachine(Peer):
    role = Role.RECEIVER

    def __init__(
        self,
        now: float,
        timeout_s: float,
        code: bytes | KeyExchange,
        encrypt: bool = True,
        limits: ReceiveLimits | None = None,
        buffers: Buffers = FRESH_BUFFERS,
    ) -> None:
        super().__init__(now, timeout_s, code, encrypt, buffers)
        self.limits = limits or ReceiveLimits()
        self.manifest: Manifest | None = None
        self.accepted = False
        self.complete = False
        self._next_seq = 0
        self._pending: dict[int, Data] = {}
        self._ack_due = False
        self._received: dict[int, int] = {}  # file index -> contiguous bytes handed out
        self._short_chunk: set[int] = set()  # files whose last chunk has been seen
        self._ended: dict[int, FileEnd] = {}
        self._completed: set[int] = set()
        self._verified: set[int] = set()
        self._current_file = -1
        self._total_bytes = 0
        self._sender_done = False

    @property
    def handshake_complete(self) -> bool:
        return self.manifest is not None

    @property
    def reorder_buffered(self) -> int:
        return len(self._pending)

    def held_buffers(self) -> list[Buffer]:
        """Chunks waiting to be reordered and the frame being read (see SenderMachine.held_buffers)."""
        return [frame.payload for frame in self._pending.values()] + super().held_buffers()

    def accept(self, start_offsets: dict[int, int], now: float, done: tuple[int, ...] = ()) -> list[Event]:
        """The driver checked the manifest against the disk; data may flow now.

        Files in ``done`` are already here whole; the others resume at ``start_offsets``."""
        assert self.manifest is not None
        self._now = now
        self.accepted = True
        files = [i for i, e in enumerate(self.manifest.entries) if e.kind == "file" and i not in done]
        self._received = {i: start_offsets.get(i, 0) for i in files}
        self._send(Accept({i: o for i, o in start_offsets.items() if o and i in self._received}, done))
        return []

    def file_verified(self, file_index: int, ok: bool, now: float) -> list[Event]:
        """The writer finished a file and compared digests; tell the sender."""
        self._now = now
        self._verified.add(file_index)
        self._send(FileResult(file_index, ok))
        events: list[Event] = []
        self._maybe_finish(events)
        return events

    def _handle(self, frame: Frame | CorruptData, events: list[Event]) -> None:
        if isinstance(frame, Data):
            self._on_data(frame, events)
        elif isinstance(frame, CorruptData):
            self._on_corrupt(frame, events)
        elif isinstance(frame, Manifest) and self.manifest is None:
            self._on_manifest(frame, events)
        elif isinstance(frame, FileEnd) and self.accepted:
            self._on_file_end(frame, events)
        elif isinstance(frame, Done) and self.accepted and not self._sender_done:
            if set(self._ended) != set(self._received):
                raise ProtocolError("sender finished before ending every file")
            self._sender_done = True
            self._maybe_finish(events)
        else:
            raise self._unexpected(frame)

    def _on_manifest(self, manifest: Manifest, events: list[Event]) -> None:
        if len(manifest.entries) > self.limits.max_entries:
            raise LocalIOError(
                f"transfer declares {len(manifest.entries)} entries; the limit is {self.limits.max_entries}"
            )
        declared = sum(e.size or 0 for e in manifest.entries)
        if declared > self.limits.max_total_bytes:
            raise LocalIOError(f"transfer declares {declared} bytes; the limit is {self.limits.max_total_bytes}")
        self.manifest = manifest
        events.append(ManifestReceived(manifest))

    def _in_window(self, seq: int) -> bool:
        assert self.manifest is not None
        return self._next_seq <= seq < self._next_seq + self.manifest.window

    def _on_data(self, frame: Data, events: list[Event]) -> None:
        if not self.accepted:
            raise ProtocolError("DATA before the transfer was accepted")
        seq = frame.seq
        self._ack_due = True
        if seq < self._next_seq or seq in self._pending:
            events.append(DuplicateChunk(seq))
            return
        if not self._in_window(seq):
            raise ProtocolError(f"sequence number {seq} is outside the window starting at {self._next_seq}")
        self._pending[seq] = frame
        while self._next_seq in self._pending:
            self._deliver(self._pending.pop(self._next_seq), events)
            self._next_seq += 1

    def _on_corrupt(self, frame: CorruptData, events: list[Event]) -> None:
        events.append(IntegrityFailure(frame.seq))
        if self.accepted and self._in_window(frame.seq) and frame.seq not in self._pending:
            self._send(Nack(frame.seq))

    def _deliver(self, frame: Data, events: list[Event]) -> None:
        assert self.manifest is not None
        index, size = frame.file_index, len(frame.payload)
        if index not in self._received:
            raise ProtocolError(f"DATA for entry {index}, which is not a file of this transfer")
        if index < self._current_file or index in self._completed:
            raise ProtocolError(f"DATA for file {index} after the sender moved past it")
        if index in self._short_chunk or size == 0 or size > self.manifest.chunk_bytes:
            raise ProtocolError(f"DATA of {size} bytes for file {index} breaks chunking")
        expected = self._received[index]
        if frame.offset != expected:
            raise ProtocolError(f"DATA for file {index} at offset {frame.offset}; expected {expected}")
        declared = self.manifest.entries[index].size
        end = expected + size
        if declared is not None and end > declared:
            raise ProtocolError(f"DATA runs past the declared size of file {index}")
        self._total_bytes += size
        if self._total_bytes > self.limits.max_total_bytes:
            raise LocalIOError(f"transfer exceeds the limit of {self.limits.max_total_bytes} bytes")
        if size < self.manifest.chunk_bytes:
            self._short_chunk.add(index)
        self._current_file = index
        self._received[index] = end
        events.append(ChunkReady(index, frame.offset, frame.payload))
        self._maybe_complete(index, events)

    def _on_file_end(self, frame: FileEnd, events: list[Event]) -> None:
        assert self.manifest is not None
        index = frame.file_index
        if index not in self._received or index in self._ended:
            raise ProtocolError(f"unexpected FILE_END for entry {index}")
        declared = self.manifest.entries[index].size
        if declared is not None and frame.size != declared:
            raise ProtocolError(f"file {index} ended at {frame.size} bytes but was declared as {declared}")
        if self._received[index] > frame.size:
            raise ProtocolError(f"file {index} ended at {frame.size} bytes after {self._received[index]} arrived")
        self._ended[index] = frame
        self._maybe_complete(index, events)

    def _maybe_complete(self, index: int, events: list[Event]) -> None:
        end = self._ended.get(index)
        if end is not None and self._received[index] == end.size and index not in self._completed:
            self._completed.add(index)
            events.append(FileComplete(index, end.size, end.digest))

    def _maybe_finish(self, events: list[Event]) -> None:
        if self._sender_done and not self.complete and self._verified == set(self._received):
            self.complete = True
            self.closed = True
            self._send(Done())
            events.append(TransferComplete())

    def _after_batch(self, events: list[Event]) -> None:
        if self._ack_due:
            self._ack_due = False
            self._send(Ack(self._next_seq, tuple(sorted(self._pending))))
