"""Sender state machine: windowed chunks, ACK/NACK handling, timeout resends."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from rtransfer.errors import IntegrityError
from rtransfer.protocol.errors import ProtocolError
from rtransfer.protocol.events import (
    Accepted,
    ChunksAcked,
    Event,
    FileVerified,
    IntegrityFailure,
    Retransmitted,
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
from rtransfer.protocol.timing import RetransmitTimer

# A chunk the receiver rejects this many times is not being hit by chance: the path
# damages it every time (or someone tampers with it). Exit 4 beats resending forever;
# a path flipping a bit in 1 of 3 reads fails 16 in a row once in ~40 million chunks.
MAX_CHUNK_FAILURES = 16


@dataclass
class _InFlight:
    frame: Data
    sent_at: float
    wire: Buffer  # what went to the transport: the payload, or its ciphertext
    retransmitted: bool = False
    failures: int = 0


class SenderMachine(Peer):
    """Sends the manifest once keys are agreed; data may flow after the receiver's ACCEPT.

    The window is a span of sequence numbers starting at the oldest unacknowledged
    chunk, so the receiver never has to hold more than ``window`` chunks out of order.
    """

    role = Role.SENDER

    def __init__(
        self,
        manifest: Manifest,
        now: float,
        timeout_s: float,
        code: bytes,
        encrypt: bool = True,
        timer: RetransmitTimer | None = None,
        buffers: Buffers = FRESH_BUFFERS,
    ) -> None:
        self.manifest = manifest
        super().__init__(now, timeout_s, code, encrypt, buffers)
        self.accepted = False
        self.complete = False
        self._timer = timer or RetransmitTimer()
        self._next_seq = 0
        self._unacked: OrderedDict[int, _InFlight] = OrderedDict()
        self._timer_armed_at = now
        self._files = {i for i, e in enumerate(manifest.entries) if e.kind == "file"}
        self._ended: set[int] = set()
        self._verified: set[int] = set()
        self._done_sent = False

    def _on_keys(self) -> None:
        self._send(self.manifest)

    @property
    def handshake_complete(self) -> bool:
        return self.accepted

    @property
    def in_flight(self) -> int:
        return len(self._unacked)

    @property
    def rto_s(self) -> float:
        return self._timer.rto_s

    def _window_base(self) -> int:
        return next(iter(self._unacked)) if self._unacked else self._next_seq

    def can_send(self) -> bool:
        return self.accepted and not self.closed and self._next_seq < self._window_base() + self.manifest.window

    def send_chunk(self, file_index: int, offset: int, payload: Buffer, now: float) -> int:
        if not self.can_send():
            raise RuntimeError("send_chunk called while the window is closed")
        self._now = now
        seq = self._next_seq
        self._next_seq += 1
        frame = Data(seq, file_index, offset, payload)
        if not self._unacked:
            self._timer_armed_at = now
        self._unacked[seq] = _InFlight(frame, now, self._send(frame)[-1])
        return seq

    def take_written(self) -> list[Buffer]:
        """Ciphertext buffers nobody needs once the transport has written everything handed to it.

        The driver calls this when the transport's buffer is empty, so a chunk's
        ciphertext can be reused before its ACK (a resend seals the payload again);
        that halves the buffers held for a window of sealed chunks."""
        taken = []
        for item in self._unacked.values():
            if item.wire is not item.frame.payload:
                if not item.retransmitted:
                    taken.append(item.wire)
                item.wire = item.frame.payload
        return taken

    def held_buffers(self) -> list[Buffer]:
        """Every chunk buffer this machine still holds (for the driver to recycle once the
        connection is gone and nothing will send them again)."""
        return [b for item in self._unacked.values() for b in (item.frame.payload, item.wire)] + super().held_buffers()

    def end_file(self, file_index: int, size: int, digest: bytes, now: float) -> None:
        self._now = now
        self._ended.add(file_index)
        self._send(FileEnd(file_index, size, digest))

    def finish(self, now: float) -> None:
        """Every file has been ended; tell the receiver nothing else is coming."""
        self._now = now
        if self._ended != self._files:
            raise RuntimeError("finish called before every file was ended")
        self._done_sent = True
        self._send(Done())

    def _handle(self, frame: Frame | CorruptData, events: list[Event]) -> None:
        if isinstance(frame, Ack):
            self._on_ack(frame, events)
        elif isinstance(frame, Nack):
            if frame.seq >= self._next_seq:
                raise ProtocolError(f"NACK for sequence number {frame.seq}, which was never sent")
            events.append(IntegrityFailure(frame.seq))
            if frame.seq in self._unacked:
                item = self._unacked[frame.seq]
                item.failures += 1
                if item.failures >= MAX_CHUNK_FAILURES:
                    path = self.manifest.entries[item.frame.file_index].path
                    raise IntegrityError(
                        f"{path}: the chunk at offset {item.frame.offset} failed its check {item.failures} times "
                        "in a row; the path keeps damaging it"
                    )
                self._resend(frame.seq, "nack", events)
        elif isinstance(frame, Accept) and not self.accepted:
            if not set(frame.done) <= self._files:
                raise ProtocolError("ACCEPT marks as done an entry that is not a file")
            self.accepted = True
            self._ended |= set(frame.done)
            self._verified |= set(frame.done)
            events.append(Accepted(dict(frame.start_offsets), tuple(frame.done)))
        elif isinstance(frame, FileResult):
            if frame.file_index not in self._ended or frame.file_index in self._verified:
                raise ProtocolError(f"unexpected FILE_RESULT for file {frame.file_index}")
            if not frame.ok:
                path = self.manifest.entries[frame.file_index].path
                raise IntegrityError(f"{path}: whole-file BLAKE3 digest mismatch at the receiver")
            self._verified.add(frame.file_index)
            events.append(FileVerified(frame.file_index, True))
        elif isinstance(frame, Done) and self._done_sent and self._verified == self._files:
            self.complete = True
            self.closed = True
            events.append(TransferComplete())
        else:
            raise self._unexpected(frame)

    def _on_ack(self, ack: Ack, events: list[Event]) -> None:
        if ack.cumulative > self._next_seq or any(s >= self._next_seq for s in ack.selective):
            raise ProtocolError("ACK for a sequence number that was never sent")
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
        events.append(ChunksAcked(len(acked), sum(len(a.frame.payload) for a in acked), released))

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
