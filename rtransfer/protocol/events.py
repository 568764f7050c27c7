"""What the protocol machines tell their driver. Plain data, no behaviour."""

from __future__ import annotations

from msgspec import Struct

from rtransfer.protocol.constants import FrameType
from rtransfer.protocol.messages import Data
from rtransfer.protocol.model import Buffer, EntryBatch, Manifest, Signature
from rtransfer.protocol.pack import PackedFile


class Accepted(Struct, frozen=True):
    """Sender side: the receiver agreed to the batch of entries starting at ``first``; it
    already has ``start_offsets`` bytes of some of its files and all of the files in ``done``."""

    first: int
    start_offsets: dict[int, int]
    done: tuple[int, ...] = ()


class ChunksAcked(Struct, frozen=True):
    orders: tuple[int, ...]  # the chunks' numbers in the transfer (for the first connection's window)
    sizes: tuple[int, ...]  # the file bytes each stands for, in the same order
    # Buffers nothing will read again (payload and ciphertext of chunks sent exactly once,
    # so no copy can still be queued in the transport): the driver may reuse them.
    released: tuple[Buffer, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


class StreamJoined(Struct, frozen=True):
    """Sender side: a further connection is part of the transfer; chunks may go on it."""

    stream: int


class JoinRequested(Struct, frozen=True):
    """Receiver side: a further connection says it belongs to ``manifest``'s transfer. The machine
    has answered JOINED; the driver drops the connection if that is not the running transfer."""

    manifest: Manifest
    stream: int


class ChunkArrived(Struct, frozen=True):
    """Receiver side, on a further connection: a chunk, in this connection's order, for the
    first connection's machine to put in the transfer's order (``ReceiverMachine.deliver``)."""

    chunk: Data


class Retransmitted(Struct, frozen=True):
    seq: int
    reason: str  # "nack" or "timeout"


class ChunkRejected(Struct, frozen=True):
    """A chunk failed its checksum (seen by the receiver, or NACKed to the sender)."""

    seq: int


class FilesVerified(Struct, frozen=True):
    """Sender side: the receiver confirmed these files' digests (a large file's, or a pack's
    files at once: one event a pack, not one a file)."""

    file_indices: tuple[int, ...]


class ManifestReceived(Struct, frozen=True):
    manifest: Manifest


class EntriesReceived(Struct, frozen=True):
    """Receiver side: the next batch of the file list; plan it and ``accept`` it."""

    batch: EntryBatch


class PackReady(Struct, frozen=True):
    """Receiver side: a pack of whole small files, in order, its chunk verified; write each
    file, check its digest, then call ``pack_written`` with its ``order``. ``authenticated``: the
    pack was opened under the session's AES-GCM tag, which already proves each file is the bytes
    the sender hashed."""

    order: int
    files: list[PackedFile]
    payload: Buffer
    authenticated: bool = False


class ChunkReady(Struct, frozen=True):
    """Receiver side: the next chunk, in order, checksum verified, ready to write. ``kind`` says
    what ``payload`` holds: the bytes (DATA), the bytes compressed (ZDATA), or ranges of the
    old copy here to take them from (COPY); see messages.Data."""

    file_index: int
    offset: int
    payload: Buffer
    kind: FrameType = FrameType.DATA


class SignatureReceived(Struct, frozen=True):
    """Sender side: part of the receiver's old copy of a file, before the ACCEPT of its batch."""

    signature: Signature


class FileComplete(Struct, frozen=True):
    """Receiver side: every chunk of a file has been handed out; check its digest now."""

    file_index: int
    size: int
    digest: bytes


class DuplicateChunk(Struct, frozen=True):
    seq: int


class TransferComplete(Struct, frozen=True):
    pass


class HintsReceived(Struct, frozen=True):
    """The peer says where it can be reached directly (see protocol/tries.py), or that it stops trying."""

    addresses: tuple[tuple[str, int], ...]
    punch: tuple[tuple[str, int], ...] = ()
    late: bool = False  # see messages.Hints


class PunchNow(Struct, frozen=True):
    """Sender side: the receiver says to dial the punched addresses now."""


class Ponged(Struct, frozen=True):
    """The peer answered the PING with this token (``Peer.ping``): the round trip is measured."""

    token: int


class DirectChosen(Struct, frozen=True):
    """Receiver side: the sender moves the transfer to the direct connection with this id."""

    ident: bytes


Event = (
    Accepted
    | StreamJoined
    | JoinRequested
    | ChunkArrived
    | ChunksAcked
    | Retransmitted
    | ChunkRejected
    | FilesVerified
    | ManifestReceived
    | EntriesReceived
    | PackReady
    | ChunkReady
    | FileComplete
    | DuplicateChunk
    | TransferComplete
    | SignatureReceived
    | HintsReceived
    | PunchNow
    | Ponged
    | DirectChosen
)
