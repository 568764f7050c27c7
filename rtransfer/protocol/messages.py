"""The frames: what each message holds, and the wire layouts and bounds both the writer
(writing.py) and the reader (reading.py) follow.

Wire format: typed, length-prefixed, checksummed frames.

Every frame is ``type:u8 | body_length:u32 | check:u64 | body``. ``check`` is
xxh3-64 over type, length and body, so a flipped bit anywhere in a frame is
caught; for DATA frames that is the per-chunk checksum. Once a connection is
encrypted, a DATA frame's check is its AES-GCM tag instead (``check`` is 0): the
tag already covers every byte, header included, and hashing each chunk a second
time cost both sides CPU for nothing. Control frames keep xxh3, which is what
tells a corrupting path from a wrong key during the handshake. Every length is
bounded per frame type *before* anything is buffered for it.
"""

from __future__ import annotations

import struct
from typing import Protocol

import xxhash
from msgspec import Struct, field

from rtransfer.protocol.constants import (
    CHUNK_TYPES,
    MAX_ACCEPT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_COPY_RANGES,
    MAX_ENTRIES_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_HINTS_BYTES,
    MAX_JOIN_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_CHUNKS,
    MAX_WINDOW,
    SIGNATURE_DIGEST_BYTES,
    Cause,
    FrameType,
    Role,
)
from rtransfer.protocol.errors import RemoteProtocolError
from rtransfer.protocol.model import Buffer, EntryBatch, Manifest, Signature, WritableBuffer
from rtransfer.protocol.pack import table_bytes_of

MAGIC = b"RTXF"
# Both sides must speak the same version: HELLO refuses any other, so a frame's layout never has to
# be guessed. Raise it with any change to a frame's layout or meaning (CHANGELOG.md says which).
PROTOCOL_VERSION = 11

HEADER = struct.Struct("!BIQ")
PREFIX = struct.Struct("!BI")
DATA_HEADER = struct.Struct("!QIQQ")  # seq (this connection), file_index, offset, order (the transfer)
HELLO_LAYOUT = struct.Struct("!4sHIB")  # magic, version, capabilities, role
ACK_LAYOUT = struct.Struct("!QH")  # cumulative, count of selective seqs
U64 = struct.Struct("!Q")
FILE_END_LAYOUT = struct.Struct("!IQ32s")
FILE_RESULT_LAYOUT = struct.Struct("!I?")
PACK_RESULT_LAYOUT = struct.Struct("!Q?")
ERROR_LAYOUT = struct.Struct("!B")
SIGNATURE_LAYOUT = struct.Struct("!IQ")  # file index, offset in the receiver's copy of the first chunk
SIGNATURE_CHUNK_LAYOUT = struct.Struct(f"!I{SIGNATURE_DIGEST_BYTES}s")  # length, digest
COPY_RANGE = struct.Struct("!QI")  # offset in the receiver's old copy, length
ZDATA_SIZE = struct.Struct("!I")  # a compressed chunk's length before compression, ahead of the zstd frame
HOLE_SIZE = struct.Struct("!I")  # a HOLE chunk's whole payload: how many zeros it stands for

DIRECT_ID_BYTES = 32  # a direct connection's id: both nonces of its proof (transport/direct.py)


MAX_BODY_BYTES: dict[FrameType, int] = {
    FrameType.HELLO: 4096,
    FrameType.MANIFEST: MAX_MANIFEST_BYTES,
    FrameType.ACCEPT: MAX_ACCEPT_BYTES,
    FrameType.ENTRIES: MAX_ENTRIES_BYTES,
    FrameType.DATA: DATA_HEADER.size + MAX_CHUNK_BYTES,
    FrameType.PACK: DATA_HEADER.size + MAX_CHUNK_BYTES,
    FrameType.PACK_RESULT: PACK_RESULT_LAYOUT.size,
    FrameType.ACK: ACK_LAYOUT.size + 8 * MAX_WINDOW,
    FrameType.NACK: U64.size,
    FrameType.FILE_END: FILE_END_LAYOUT.size,
    FrameType.FILE_RESULT: FILE_RESULT_LAYOUT.size,
    FrameType.DONE: 0,
    FrameType.PING: U64.size,
    FrameType.PONG: U64.size,
    FrameType.ERROR: ERROR_LAYOUT.size + MAX_ERROR_MESSAGE_BYTES,
    FrameType.CONFIRM: 64,
    FrameType.JOIN: MAX_JOIN_BYTES,
    FrameType.JOINED: 0,
    FrameType.COPY: DATA_HEADER.size + COPY_RANGE.size * MAX_COPY_RANGES,
    FrameType.ZDATA: DATA_HEADER.size + ZDATA_SIZE.size + MAX_CHUNK_BYTES,
    FrameType.HOLE: DATA_HEADER.size + HOLE_SIZE.size,
    FrameType.SIGNATURE: SIGNATURE_LAYOUT.size + SIGNATURE_CHUNK_LAYOUT.size * MAX_SIGNATURE_CHUNKS,
    FrameType.HINTS: MAX_HINTS_BYTES,
    FrameType.GO_DIRECT: DIRECT_ID_BYTES,
    FrameType.PUNCH: 0,
}
TAG_BYTES = 16  # AEAD tag on sealed frames; limits above are for the plaintext


class Hello(Struct, frozen=True):
    role: Role
    version: int = PROTOCOL_VERSION
    capabilities: int = 0
    auth: bytes = b""


class Accept(Struct, frozen=True):
    """Receiver's go-ahead for the batch starting at ``first``: ``start_offsets`` maps file
    index to bytes it already has of that version of the file; files in ``done`` it already
    has whole."""

    first: int = 0
    start_offsets: dict[int, int] = field(default_factory=dict)
    done: tuple[int, ...] = ()


class Data(Struct, frozen=True):
    """A chunk of file ``file_index`` from ``offset`` on. ``kind`` says what ``payload`` holds:
    DATA, the bytes; ZDATA, the bytes compressed (``ZDATA_SIZE``, then a zstd frame); COPY, the
    ranges of the receiver's old copy that come next (``COPY_RANGE`` rows); PACK, whole small
    files (protocol/pack.py; ``file_index`` is then the first of them and ``offset`` 0); HOLE, a
    count of zeros (``HOLE_SIZE``).

    ``seq`` numbers it on its connection (ACKs, the window, resends); ``order`` numbers it in
    the transfer, in the order the writer needs it, whichever stream carries it."""

    seq: int
    file_index: int
    offset: int
    payload: Buffer
    kind: FrameType = FrameType.DATA
    order: int = 0

    @property
    def packed(self) -> bool:
        return self.kind is FrameType.PACK


def copy_payload(ranges: list[tuple[int, int]]) -> bytes:
    """A COPY chunk's payload: (offset in the old copy, length) for each range, in order."""
    return b"".join(COPY_RANGE.pack(offset, length) for offset, length in ranges)


def copy_ranges(payload: Buffer) -> list[tuple[int, int]]:
    if not payload or len(payload) % COPY_RANGE.size:
        raise RemoteProtocolError("COPY payload is not a list of ranges")
    return [(offset, length) for offset, length in COPY_RANGE.iter_unpack(payload)]


def file_bytes(chunk: Data) -> int:
    """The bytes of files a chunk stands for (what progress counts), whatever its payload holds."""
    if chunk.kind is FrameType.ZDATA:
        return zdata_size(chunk.payload)
    if chunk.kind is FrameType.COPY:
        return sum(length for _, length in copy_ranges(chunk.payload))
    if chunk.kind is FrameType.PACK:
        return len(chunk.payload) - table_bytes_of(chunk.payload)
    if chunk.kind is FrameType.HOLE:
        return hole_size(chunk.payload)
    return len(chunk.payload)


def hole_payload(size: int) -> bytes:
    return HOLE_SIZE.pack(size)


def hole_size(payload: Buffer) -> int:
    if len(payload) != HOLE_SIZE.size:
        raise RemoteProtocolError("HOLE payload malformed")
    return int(HOLE_SIZE.unpack_from(payload)[0])


def zdata_size(payload: Buffer) -> int:
    """A compressed chunk's length once decompressed, as its sender declares it."""
    if len(payload) <= ZDATA_SIZE.size:
        raise RemoteProtocolError("ZDATA payload too short")
    return int(ZDATA_SIZE.unpack_from(payload)[0])


class Join(Struct, frozen=True):
    """Sender side, on a further connection: it belongs to the transfer ``manifest`` describes,
    as stream number ``stream``. The receiver checks the manifest against the running one."""

    manifest: Manifest
    stream: int


class Joined(Struct, frozen=True):
    pass


class CorruptChunk(Struct, frozen=True):
    """A DATA frame whose checksum or tag failed; ``seq`` is as read, so may itself be wrong."""

    seq: int


class Ack(Struct, frozen=True):
    cumulative: int  # every seq below this has arrived
    selective: tuple[int, ...] = ()  # seqs above ``cumulative`` that arrived too


class Nack(Struct, frozen=True):
    seq: int


class FileEnd(Struct, frozen=True):
    file_index: int
    size: int
    digest: bytes


class FileResult(Struct, frozen=True):
    file_index: int
    ok: bool


class PackResult(Struct, frozen=True):
    """Receiver side: every file of the pack sent as ``order`` is in place (or one failed its digest)."""

    order: int
    ok: bool


class Done(Struct, frozen=True):
    pass


class Ping(Struct, frozen=True):
    token: int


class Pong(Struct, frozen=True):
    token: int


class Hints(Struct, frozen=True):
    """Where the sending side can be reached directly, while it tries (transport/direct.py):
    ``addresses`` where it listens, ``punch`` where its NAT maps the ports it punches from, one
    per connection of the transfer (HOST, PORT each). Neither: it will not try, or gave up.
    ``late``: the receiver's data can still move once it flows (it is not standard output)."""

    addresses: tuple[tuple[str, int], ...]
    punch: tuple[tuple[str, int], ...] = ()
    late: bool = False


class Punch(Struct, frozen=True):
    """Receiver: dial the punched addresses now (the sender at once, the receiver half a round
    trip later, so the two SYNs cross between the NATs)."""


class GoDirect(Struct, frozen=True):
    """The transfer moves to the direct connection with this id (transport/direct.py)."""

    ident: bytes


class ErrorFrame(Struct, frozen=True):
    cause: Cause
    message: str


class Confirm(Struct, frozen=True):
    pass


CONFIRM_BODY = b"rtransfer key confirmation"


class Sealer(Protocol):
    def seal(self, header_prefix: bytes, body: Buffer, out: WritableBuffer | None = None) -> Buffer: ...


class Opener(Protocol):
    def skip(self) -> None: ...
    def open_into(self, header_prefix: bytes, ciphertext: memoryview, out: memoryview) -> None: ...


Frame = (
    Hello
    | Manifest
    | EntryBatch
    | Accept
    | Data
    | Ack
    | Nack
    | FileEnd
    | FileResult
    | PackResult
    | Done
    | Ping
    | Pong
    | ErrorFrame
    | Confirm
    | Join
    | Joined
    | Signature
    | Hints
    | Punch
    | GoDirect
)


def checked_by_tag(ftype: FrameType, sealed: bool) -> bool:
    """Sealed DATA and PACK frames carry check 0: their GCM tag covers every byte (see above)."""
    return sealed and ftype in CHUNK_TYPES


def frame_check(prefix: Buffer, *parts: Buffer) -> int:
    h = xxhash.xxh3_64(prefix)
    for part in parts:
        h.update(part)
    return h.intdigest()


_TYPES: dict[type, FrameType] = {
    Hello: FrameType.HELLO,
    Manifest: FrameType.MANIFEST,
    EntryBatch: FrameType.ENTRIES,
    Accept: FrameType.ACCEPT,
    CorruptChunk: FrameType.DATA,
    Ack: FrameType.ACK,
    Nack: FrameType.NACK,
    FileEnd: FrameType.FILE_END,
    FileResult: FrameType.FILE_RESULT,
    PackResult: FrameType.PACK_RESULT,
    Done: FrameType.DONE,
    Ping: FrameType.PING,
    Pong: FrameType.PONG,
    ErrorFrame: FrameType.ERROR,
    Confirm: FrameType.CONFIRM,
    Join: FrameType.JOIN,
    Joined: FrameType.JOINED,
    Signature: FrameType.SIGNATURE,
    Hints: FrameType.HINTS,
    Punch: FrameType.PUNCH,
    GoDirect: FrameType.GO_DIRECT,
}


def frame_type(frame: Frame | CorruptChunk) -> FrameType:
    """The wire type of a decoded frame (a damaged chunk counts as DATA)."""
    if isinstance(frame, Data):
        return frame.kind
    return _TYPES[type(frame)]
