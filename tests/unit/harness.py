"""Two protocol machines joined by an in-memory network that tests can disturb."""

from __future__ import annotations

from dataclasses import dataclass, field

import blake3

from rtransfer.crypto import KeyExchange, TransportExchange
from rtransfer.protocol.constants import Phase
from rtransfer.protocol.events import ChunkReady, EntriesReceived, Event, FileComplete, TransferComplete
from rtransfer.protocol.messages import Frame
from rtransfer.protocol.model import Buffer, Entry, EntryBatch, Manifest
from rtransfer.protocol.peer import Peer
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.receiver import ReceiveLimits, ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from rtransfer.protocol.writing import encode_bytes
from rtransfer.receiving.plan import Plan
from rtransfer.receiving.sink import DirectorySink

CHUNK = 4096
CODE = b"7hk2-m9xq-3wfe"


@dataclass(frozen=True)
class Listing:
    """A transfer's manifest and its whole file list, sent as one batch (none, if it is empty:
    the test lists its own batches)."""

    manifest: Manifest
    entries: tuple[Entry, ...]


def manifest(*sizes: int | None, window: int = 4, chunk: int = CHUNK) -> Listing:
    entries = tuple(Entry(f"f{i}", "file", size, 0o644, 0) for i, size in enumerate(sizes))
    return Listing(Manifest("t" * 32, chunk, window), entries)


def kex(code: bytes | KeyExchange | TransportExchange, is_sender: bool) -> KeyExchange | TransportExchange:
    """The key exchange a machine is handed (the driver makes one per connection)."""
    return KeyExchange(code, is_sender) if isinstance(code, bytes) else code


def new_sender(listing: Listing, code: bytes = CODE, **kwargs: object) -> SenderMachine:
    return SenderMachine(listing.manifest, 0.0, 30.0, kex(code, True), entries=listing.entries, **kwargs)  # type: ignore[arg-type]


def new_receiver(code: bytes | KeyExchange | TransportExchange = CODE, **kwargs: object) -> ReceiverMachine:
    return ReceiverMachine(0.0, 30.0, kex(code, False), **kwargs)  # type: ignore[arg-type]


def frames_of(data: list[Buffer]) -> list[Frame]:
    """Split a machine's output into frames so a test can drop, reorder or corrupt them."""
    decoder = FrameDecoder()
    for piece in data:
        decoder.feed(piece)
    return [f for f in decoder.frames()]  # type: ignore[misc]


@dataclass
class Pair:
    sender: SenderMachine
    receiver: ReceiverMachine
    now: float = 0.0
    sender_events: list[Event] = field(default_factory=list)
    receiver_events: list[Event] = field(default_factory=list)
    verified: set[int] = field(default_factory=set)
    ended: bool = False  # the receiver's driver took the last steps (finish)

    @classmethod
    def handshaken(
        cls,
        m: Listing,
        timeout_s: float = 30.0,
        encrypt: bool = False,
        limits: ReceiveLimits | None = None,
        sender_code: bytes | KeyExchange | TransportExchange = CODE,
        receiver_code: bytes | KeyExchange | TransportExchange = CODE,
    ) -> Pair:
        """HELLOs, CONFIRMs and the manifest exchanged; not yet accepted.

        Machine tests run unencrypted so they can read and forge frames; the
        encrypted path has tests of its own.
        """
        pair = cls(
            SenderMachine(m.manifest, 0.0, timeout_s, kex(sender_code, True), encrypt, entries=m.entries or None),
            ReceiverMachine(0.0, timeout_s, kex(receiver_code, False), encrypt, limits),
        )
        for _ in range(3):
            pair.to_receiver()
            pair.to_sender()
        return pair

    @classmethod
    def accepted(cls, m: Listing, timeout_s: float = 30.0, encrypt: bool = False) -> Pair:
        pair = cls.handshaken(m, timeout_s, encrypt)
        batches = [e.batch for e in pair.receiver_events if isinstance(e, EntriesReceived)]
        assert batches
        for batch in batches:
            pair.receiver.accept(batch.first, {}, pair.now)
        pair.to_sender()
        assert pair.sender.phase is Phase.TRANSFERRING
        return pair

    def to_receiver(self, frames: list[Frame] | None = None) -> list[Event]:
        return self._deliver(self.sender, self.receiver, self.receiver_events, frames)

    def to_sender(self, frames: list[Frame] | None = None) -> list[Event]:
        return self._deliver(self.receiver, self.sender, self.sender_events, frames)

    def _deliver(self, src: Peer, dst: Peer, log: list[Event], frames: list[Frame] | None) -> list[Event]:
        raw = (
            b"".join(bytes(p) for p in src.data_to_send())
            if frames is None
            else b"".join(encode_bytes(f) for f in frames)
        )
        events = dst.receive_data(raw, self.now) if raw else []
        log.extend(events)
        return events

    def written(self) -> dict[int, bytes]:
        """What the receiver handed out, per file, in order."""
        out: dict[int, bytearray] = {}
        for e in self.receiver_events:
            if isinstance(e, ChunkReady):
                buf = out.setdefault(e.file_index, bytearray())
                assert e.offset == len(buf)
                buf += e.payload
        return {k: bytes(v) for k, v in out.items()}

    def verify_completed_files(self) -> None:
        """Play the writer: confirm every completed file whose digest matches; and, once every file
        is in, the driver's last steps (``finish``: the receiver's DONE)."""
        data = self.written()
        for e in list(self.receiver_events):
            if isinstance(e, FileComplete) and e.file_index not in self.verified:
                self.verified.add(e.file_index)
                ok = blake3.blake3(data.get(e.file_index, b"")).digest() == e.digest
                self.receiver_events.extend(self.receiver.file_verified(e.file_index, ok, self.now))
        if not self.ended and any(isinstance(e, TransferComplete) for e in self.receiver_events):
            self.ended = True
            self.receiver.finish(self.now)


def send_file(pair: Pair, index: int, payload: bytes, chunk: int = CHUNK) -> None:
    """Send a whole file, keeping the window full and delivering everything promptly."""
    for offset in range(0, len(payload), chunk):
        while not pair.sender.can_send():
            pair.to_receiver()
            pair.to_sender()
        pair.sender.send_chunk(index, offset, payload[offset : offset + chunk], pair.now)
    pair.sender.end_file(index, len(payload), blake3.blake3(payload).digest(), pair.now)


def plan_alone(sink: DirectorySink, chunk_bytes: int, *entries: Entry) -> Plan:
    """Begin a transfer of just ``entries`` (one batch) at a sink, and plan it."""
    sink.begin(Manifest("t" * 32, chunk_bytes, 1))
    return sink.plan(EntryBatch(0, entries, True))
