"""Wire format: typed, length-prefixed, checksummed frames.

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

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import xxhash
import zstandard

from rtransfer.protocol.constants import (
    MAX_ACCEPT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_COPY_RANGES,
    MAX_ENTRIES_BYTES,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_CHUNKS,
    MAX_STREAMS,
    MAX_WINDOW,
    MIN_CHUNK_BYTES,
    SIGNATURE_DIGEST_BYTES,
    Cause,
    FrameType,
    Role,
)
from rtransfer.protocol.errors import (
    CorruptFrame,
    FrameAuthenticationError,
    HandshakeRefused,
    LocalProtocolError,
    RemoteProtocolError,
)
from rtransfer.protocol.model import (
    CONTENT_DIGEST_BYTES,
    FRESH_BUFFERS,
    MAX_BATCH_ENTRIES,
    Buffer,
    Buffers,
    Entry,
    EntryBatch,
    Manifest,
    Signature,
    WritableBuffer,
)
from rtransfer.protocol.pack import table_bytes_of

MAGIC = b"RTXF"
PROTOCOL_VERSION = 6  # 3: batched file list, packs; 4: ERROR says a Cause; 5: streams (JOIN, chunk order);
# 6: delta (SIGNATURE, COPY), compressed chunks (ZDATA), the file list and ACCEPT compressed

HEADER = struct.Struct("!BIQ")
_PREFIX = struct.Struct("!BI")
DATA_HEADER = struct.Struct("!QIQQ")  # seq (this connection), file_index, offset, order (the transfer)
_HELLO = struct.Struct("!4sHIB")  # magic, version, capabilities, role
_ACK = struct.Struct("!QH")  # cumulative, count of selective seqs
_U64 = struct.Struct("!Q")
_FILE_END = struct.Struct("!IQ32s")
_FILE_RESULT = struct.Struct("!I?")
_PACK_RESULT = struct.Struct("!Q?")
_ERROR = struct.Struct("!B")
_SIGNATURE = struct.Struct("!IQ")  # file index, offset in the receiver's copy of the first chunk
_SIGNATURE_CHUNK = struct.Struct(f"!I{SIGNATURE_DIGEST_BYTES}s")  # length, digest
COPY_RANGE = struct.Struct("!QI")  # offset in the receiver's old copy, length
ZDATA_SIZE = struct.Struct("!I")  # a compressed chunk's length before compression, ahead of the zstd frame


MAX_BODY_BYTES: dict[FrameType, int] = {
    FrameType.HELLO: 4096,
    FrameType.MANIFEST: MAX_MANIFEST_BYTES,
    FrameType.ACCEPT: MAX_ACCEPT_BYTES,
    FrameType.ENTRIES: MAX_ENTRIES_BYTES,
    FrameType.DATA: DATA_HEADER.size + MAX_CHUNK_BYTES,
    FrameType.PACK: DATA_HEADER.size + MAX_CHUNK_BYTES,
    FrameType.PACK_RESULT: _PACK_RESULT.size,
    FrameType.ACK: _ACK.size + 8 * MAX_WINDOW,
    FrameType.NACK: _U64.size,
    FrameType.FILE_END: _FILE_END.size,
    FrameType.FILE_RESULT: _FILE_RESULT.size,
    FrameType.DONE: 0,
    FrameType.PING: _U64.size,
    FrameType.PONG: _U64.size,
    FrameType.ERROR: _ERROR.size + MAX_ERROR_MESSAGE_BYTES,
    FrameType.CONFIRM: 64,
    FrameType.JOIN: MAX_MANIFEST_BYTES,
    FrameType.JOINED: 0,
    FrameType.COPY: DATA_HEADER.size + COPY_RANGE.size * MAX_COPY_RANGES,
    FrameType.ZDATA: DATA_HEADER.size + ZDATA_SIZE.size + MAX_CHUNK_BYTES,
    FrameType.SIGNATURE: _SIGNATURE.size + _SIGNATURE_CHUNK.size * MAX_SIGNATURE_CHUNKS,
}
TAG_BYTES = 16  # AEAD tag on sealed frames; limits above are for the plaintext


@dataclass(frozen=True)
class Hello:
    role: Role
    version: int = PROTOCOL_VERSION
    capabilities: int = 0
    auth: bytes = b""


@dataclass(frozen=True)
class Accept:
    """Receiver's go-ahead for the batch starting at ``first``: ``start_offsets`` maps file
    index to bytes it already has of that version of the file; files in ``done`` it already
    has whole."""

    first: int = 0
    start_offsets: dict[int, int] = field(default_factory=dict)
    done: tuple[int, ...] = ()


@dataclass(frozen=True)
class Data:
    """A chunk of file ``file_index`` from ``offset`` on. ``kind`` says what ``payload`` holds:
    DATA, the bytes; ZDATA, the bytes compressed (``ZDATA_SIZE``, then a zstd frame); COPY, the
    ranges of the receiver's old copy that come next (``COPY_RANGE`` rows); PACK, whole small
    files (protocol/pack.py; ``file_index`` is then the first of them and ``offset`` 0).

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
    return len(chunk.payload)


def zdata_size(payload: Buffer) -> int:
    """A compressed chunk's length once decompressed, as its sender declares it."""
    if len(payload) <= ZDATA_SIZE.size:
        raise RemoteProtocolError("ZDATA payload too short")
    return int(ZDATA_SIZE.unpack_from(payload)[0])


@dataclass(frozen=True)
class Join:
    """Sender side, on a further connection: it belongs to the transfer ``manifest`` describes,
    as stream number ``stream``. The receiver checks the manifest against the running one."""

    manifest: Manifest
    stream: int


@dataclass(frozen=True)
class Joined:
    pass


@dataclass(frozen=True)
class CorruptData:
    """A DATA frame whose checksum or tag failed; ``seq`` is as read, so may itself be wrong."""

    seq: int


@dataclass(frozen=True)
class Ack:
    cumulative: int  # every seq below this has arrived
    selective: tuple[int, ...] = ()  # seqs above ``cumulative`` that arrived too


@dataclass(frozen=True)
class Nack:
    seq: int


@dataclass(frozen=True)
class FileEnd:
    file_index: int
    size: int
    digest: bytes


@dataclass(frozen=True)
class FileResult:
    file_index: int
    ok: bool


@dataclass(frozen=True)
class PackResult:
    """Receiver side: every file of the pack sent as ``order`` is in place (or one failed its digest)."""

    order: int
    ok: bool


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Ping:
    token: int


@dataclass(frozen=True)
class Pong:
    token: int


@dataclass(frozen=True)
class ErrorFrame:
    cause: Cause
    message: str


@dataclass(frozen=True)
class Confirm:
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
)
_CHUNKS = (FrameType.DATA, FrameType.PACK, FrameType.COPY, FrameType.ZDATA)


def _checked_by_tag(ftype: FrameType, sealed: bool) -> bool:
    """Sealed DATA and PACK frames carry check 0: their GCM tag covers every byte (see above)."""
    return sealed and ftype in _CHUNKS


def _check(prefix: Buffer, *parts: Buffer) -> int:
    h = xxhash.xxh3_64(prefix)
    for part in parts:
        h.update(part)
    return h.intdigest()


def _frame(
    ftype: FrameType,
    clear: bytes,
    secret: Buffer,
    sealer: Sealer | None,
    allocate: Callable[[int], WritableBuffer] | None = None,
) -> list[Buffer]:
    """Header + body. Sealed, ``secret`` is encrypted (into ``allocate``'d memory when
    given) and ``clear`` (DATA's seq, file, offset, which a NACK must be able to read)
    is authenticated but stays readable."""
    if sealer is None:
        prefix = _PREFIX.pack(ftype, len(clear) + len(secret))
        parts: list[Buffer] = [clear, secret] if clear else [secret]
    else:
        prefix = _PREFIX.pack(ftype, len(clear) + len(secret) + TAG_BYTES)
        out = allocate(len(secret) + TAG_BYTES) if allocate is not None else None
        parts = [clear, sealer.seal(prefix + clear, secret, out)]
    check = 0 if _checked_by_tag(ftype, sealer is not None) else _check(prefix, *parts)
    return [prefix + _U64.pack(check), *parts]


def encode(
    frame: Frame, sealer: Sealer | None = None, allocate: Callable[[int], WritableBuffer] | None = None
) -> list[Buffer]:
    """Encode a frame as buffers to write in order; large payloads are not copied.

    The last buffer of a DATA frame is its payload, or its ciphertext when sealed."""
    match frame:
        case Data(seq, file_index, offset, payload, kind, order):
            return _frame(kind, DATA_HEADER.pack(seq, file_index, offset, order), payload, sealer, allocate)
        case Signature(file_index, offset, chunks):
            rows = b"".join(_SIGNATURE_CHUNK.pack(length, digest) for length, digest in chunks)
            return _frame(FrameType.SIGNATURE, b"", _SIGNATURE.pack(file_index, offset) + rows, sealer)
        case Ack(cumulative, selective):
            body = _ACK.pack(cumulative, len(selective)) + b"".join(_U64.pack(s) for s in selective)
            return _frame(FrameType.ACK, b"", body, sealer)
        case Nack(seq):
            return _frame(FrameType.NACK, b"", _U64.pack(seq), sealer)
        case Hello(role, version, capabilities, auth):
            return _frame(FrameType.HELLO, b"", _HELLO.pack(MAGIC, version, capabilities, role) + auth, sealer)
        case Manifest():
            return _frame(FrameType.MANIFEST, b"", _json(_manifest_to_json(frame)), sealer)
        case Join(manifest, stream):
            return _frame(FrameType.JOIN, b"", _json({**_manifest_to_json(manifest), "stream": stream}), sealer)
        case Joined():
            return _frame(FrameType.JOINED, b"", b"", sealer)
        case EntryBatch(first, entries, last):
            listing = {"first": first, "last": last, "entries": [_entry_to_json(e) for e in entries]}
            return _frame(FrameType.ENTRIES, b"", _squeezed(listing), sealer)
        case Accept(first, start_offsets, done):
            offsets = {str(k): v for k, v in start_offsets.items()}
            plan = {"first": first, "start_offsets": offsets, "done": list(done)}
            return _frame(FrameType.ACCEPT, b"", _squeezed(plan), sealer)
        case PackResult(order, ok):
            return _frame(FrameType.PACK_RESULT, b"", _PACK_RESULT.pack(order, ok), sealer)
        case FileEnd(file_index, size, digest):
            return _frame(FrameType.FILE_END, b"", _FILE_END.pack(file_index, size, digest), sealer)
        case FileResult(file_index, ok):
            return _frame(FrameType.FILE_RESULT, b"", _FILE_RESULT.pack(file_index, ok), sealer)
        case Done():
            return _frame(FrameType.DONE, b"", b"", sealer)
        case Ping(token):
            return _frame(FrameType.PING, b"", _U64.pack(token), sealer)
        case Pong(token):
            return _frame(FrameType.PONG, b"", _U64.pack(token), sealer)
        case ErrorFrame(cause, message):
            text = message.encode("utf-8")[:MAX_ERROR_MESSAGE_BYTES].decode("utf-8", "ignore")
            return _frame(FrameType.ERROR, b"", _ERROR.pack(cause) + text.encode("utf-8"), sealer)
        case Confirm():
            return _frame(FrameType.CONFIRM, b"", CONFIRM_BODY, sealer)
    raise LocalProtocolError(f"not a frame: {frame!r}")


_TYPES: dict[type, FrameType] = {
    Hello: FrameType.HELLO,
    Manifest: FrameType.MANIFEST,
    EntryBatch: FrameType.ENTRIES,
    Accept: FrameType.ACCEPT,
    CorruptData: FrameType.DATA,
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
}


def frame_type(frame: Frame | CorruptData) -> FrameType:
    """The wire type of a decoded frame (a damaged chunk counts as DATA)."""
    if isinstance(frame, Data):
        return frame.kind
    return _TYPES[type(frame)]


def encode_bytes(frame: Frame) -> bytes:
    return b"".join(bytes(p) for p in encode(frame))


def _manifest_to_json(m: Manifest) -> dict[str, Any]:
    return {
        "transfer_id": m.transfer_id,
        "chunk_bytes": m.chunk_bytes,
        "window": m.window,
        "streams": m.streams,
        "delta": m.delta,
    }


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# The file list and ACCEPT are most of what a second run of an unchanged tree puts on the wire:
# paths share their directories and sizes repeat, and zstd shrinks them about elevenfold (bench/README.md).
_LIST_COMPRESSOR = zstandard.ZstdCompressor(level=3)
_LIST_DECOMPRESSOR = zstandard.ZstdDecompressor()


def _squeezed(obj: object) -> bytes:
    return _LIST_COMPRESSOR.compress(_json(obj))


def _entry_to_json(e: Entry) -> dict[str, Any]:
    """Fields at their default are left out: most of a tree is plain files, and the list is
    most of the bytes a tree of small files puts on the wire besides their contents."""
    obj: dict[str, Any] = {"path": e.path}
    if e.kind != "file":
        obj["kind"] = e.kind
    for key in ("size", "mode", "mtime", "target", "identity", "digest"):
        value = getattr(e, key)
        if value is not None:
            obj[key] = value
    return obj


class FrameDecoder:
    """Turns bytes into frames; raises RemoteProtocolError on bad input.

    It owns the receive buffers: ``get_buffer`` says where the next bytes go
    (the rest of a 13-byte header, or the rest of the current frame's body) and
    ``buffer_updated`` says how many arrived. A socket can read straight into a
    frame's body, so a chunk is copied once, by the kernel. Memory is bounded by
    one header plus one body, and a body is allocated only after its length has
    been checked against the limit for its frame type. ``buffers`` lets the
    caller recycle body buffers (the receiver's writer returns them to a pool).
    """

    def __init__(
        self,
        buffers: Buffers = FRESH_BUFFERS,
    ) -> None:
        self._buffers = buffers
        self.opener: Opener | None = None  # set by the machine once keys are agreed
        self._head = bytearray(HEADER.size)
        self._head_n = 0
        self._body: WritableBuffer | None = None
        self._body_n = 0
        self._ftype = FrameType.DONE
        self._check = 0
        self._ready: list[Frame | CorruptData] = []

    def get_buffer(self) -> memoryview:
        if self._body is None:
            return memoryview(self._head)[self._head_n :]
        return memoryview(self._body)[self._body_n :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is None:
            self._head_n += nbytes
            if self._head_n == HEADER.size:
                self._start_body()
        else:
            self._body_n += nbytes
            if self._body_n == len(self._body):
                self._finish_frame()

    def feed(self, data: Buffer) -> None:
        """Copy bytes in (tests, fuzzers and callers without a socket)."""
        view = memoryview(data).cast("B")
        while view:
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def held_buffers(self) -> list[WritableBuffer]:
        """The body buffer of a frame still being read, if any."""
        return [] if self._body is None else [self._body]

    def frames(self) -> Iterator[Frame | CorruptData]:
        ready, self._ready = self._ready, []
        yield from ready

    def _start_body(self) -> None:
        raw_type, length, self._check = HEADER.unpack(self._head)
        try:
            self._ftype = FrameType(raw_type)
        except ValueError:
            raise RemoteProtocolError(f"unknown frame type 0x{raw_type:02x}") from None
        limit = MAX_BODY_BYTES[self._ftype] + (TAG_BYTES if self.opener else 0)
        if length > limit:
            raise RemoteProtocolError(f"{self._ftype.name} frame of {length} bytes exceeds the limit of {limit}")
        self._body = self._buffers.get(length)
        self._body_n = 0
        if length == 0:
            self._finish_frame()

    def _finish_frame(self) -> None:
        body, ftype = self._body, self._ftype
        assert body is not None
        self._body = None
        self._head_n = 0
        prefix = bytes(self._head[: _PREFIX.size])
        data = ftype in _CHUNKS
        tag_only = _checked_by_tag(ftype, self.opener is not None)
        if not tag_only and _check(prefix, body) != self._check:
            if self.opener is not None:
                self.opener.skip()
            if data and len(body) >= DATA_HEADER.size:
                self._corrupt_data(body)
                return
            raise CorruptFrame(f"corrupt {ftype.name} frame (checksum mismatch)")
        if self.opener is not None:
            try:
                body = self._open(prefix, body, DATA_HEADER.size if data else 0)
            except FrameAuthenticationError:
                if not tag_only:
                    raise
                self._corrupt_data(body)
                return
        self._ready.append(_decode_body(ftype, body))

    def _corrupt_data(self, body: WritableBuffer) -> None:
        """A damaged chunk is not fatal: the receiver NACKs it and the sender resends."""
        self._ready.append(CorruptData(_U64.unpack_from(body)[0]))
        self._buffers.put(body)

    def _open(self, prefix: bytes, sealed: WritableBuffer, clear: int) -> WritableBuffer:
        """Decrypt into a fresh (pooled) buffer; the sealed buffer goes back to the pool
        (on success; on failure the caller still owns it)."""
        assert self.opener is not None
        if len(sealed) < clear + TAG_BYTES:
            raise RemoteProtocolError("sealed frame too short")
        plain = self._buffers.get(len(sealed) - TAG_BYTES)
        plain[:clear] = sealed[:clear]
        try:
            with memoryview(sealed) as s_view, memoryview(plain) as p_view:
                self.opener.open_into(prefix + bytes(sealed[:clear]), s_view[clear:], p_view[clear:])
        except BaseException:
            self._buffers.put(plain)
            raise
        self._buffers.put(sealed)
        return plain


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise RemoteProtocolError(what)


def _decode_body(ftype: FrameType, body: WritableBuffer) -> Frame:
    n = len(body)
    if ftype in _CHUNKS:
        _need(n >= DATA_HEADER.size, f"{ftype.name} frame too short")
        seq, file_index, offset, order = DATA_HEADER.unpack_from(body)
        payload = memoryview(body)[DATA_HEADER.size :]
        return Data(seq, file_index, offset, payload, ftype, order)
    if ftype is FrameType.SIGNATURE:
        _need(n >= _SIGNATURE.size and (n - _SIGNATURE.size) % _SIGNATURE_CHUNK.size == 0, "SIGNATURE malformed")
        file_index, offset = _SIGNATURE.unpack_from(body)
        chunks = tuple(_SIGNATURE_CHUNK.iter_unpack(memoryview(body)[_SIGNATURE.size :]))
        _need(all(length > 0 for length, _ in chunks), "SIGNATURE has an empty chunk")
        return Signature(file_index, offset, chunks)
    if ftype is FrameType.ACK:
        _need(n >= _ACK.size, "ACK frame too short")
        cumulative, count = _ACK.unpack_from(body)
        _need(n == _ACK.size + 8 * count, "ACK frame length does not match its count")
        selective = struct.unpack_from(f"!{count}Q", body, _ACK.size)
        return Ack(cumulative, tuple(selective))
    if ftype is FrameType.HELLO:
        _need(n >= _HELLO.size, "HELLO frame too short")
        magic, version, caps, role = _HELLO.unpack_from(body)
        if magic != MAGIC:
            raise HandshakeRefused("peer is not speaking the rtransfer protocol")
        try:
            peer_role = Role(role)
        except ValueError:
            raise HandshakeRefused(f"peer announced an unknown role {role}") from None
        return Hello(peer_role, version, caps, bytes(body[_HELLO.size :]))
    if ftype is FrameType.MANIFEST:
        return _decode_manifest(_load_json(body, "MANIFEST"))
    if ftype is FrameType.JOIN:
        obj = _load_json(body, "JOIN")
        _need(isinstance(obj, dict) and _is_uint(obj.get("stream")) and obj["stream"] >= 1, "JOIN stream malformed")
        return Join(_decode_manifest(obj), obj["stream"])
    if ftype is FrameType.JOINED:
        return Joined()
    if ftype is FrameType.ENTRIES:
        return _decode_entries(_unsqueezed(body, MAX_ENTRIES_BYTES, "ENTRIES"))
    if ftype is FrameType.PACK_RESULT:
        _need(n == _PACK_RESULT.size, "PACK_RESULT frame has the wrong length")
        return PackResult(*_PACK_RESULT.unpack(body))
    if ftype is FrameType.ACCEPT:
        obj = _load_json(_unsqueezed(body, MAX_ACCEPT_BYTES, "ACCEPT"), "ACCEPT")
        _need(isinstance(obj, dict), "ACCEPT is not an object")
        first, offsets, done = obj.get("first"), obj.get("start_offsets"), obj.get("done", [])
        _need(_is_uint(first) and isinstance(offsets, dict) and isinstance(done, list), "ACCEPT malformed")
        result: dict[int, int] = {}
        for key, value in offsets.items():
            _need(key.isdigit() and _is_uint(value), "ACCEPT start_offsets malformed")
            result[int(key)] = value
        _need(all(_is_uint(i) for i in done), "ACCEPT done malformed")
        return Accept(first, result, tuple(done))
    if ftype in (FrameType.NACK, FrameType.PING, FrameType.PONG):
        _need(n == _U64.size, f"{ftype.name} frame has the wrong length")
        (value,) = _U64.unpack(body)
        if ftype is FrameType.NACK:
            return Nack(value)
        return Ping(value) if ftype is FrameType.PING else Pong(value)
    if ftype is FrameType.FILE_END:
        _need(n == _FILE_END.size, "FILE_END frame has the wrong length")
        return FileEnd(*_FILE_END.unpack(body))
    if ftype is FrameType.FILE_RESULT:
        _need(n == _FILE_RESULT.size, "FILE_RESULT frame has the wrong length")
        return FileResult(*_FILE_RESULT.unpack(body))
    if ftype is FrameType.DONE:
        return Done()
    if ftype is FrameType.CONFIRM:
        _need(bytes(body) == CONFIRM_BODY, "CONFIRM frame malformed")
        return Confirm()
    # ERROR
    _need(n >= _ERROR.size, "ERROR frame too short")
    (code,) = _ERROR.unpack_from(body)
    cause = Cause(code) if code in Cause._value2member_map_ else Cause.OTHER
    return ErrorFrame(cause, bytes(body[_ERROR.size :]).decode("utf-8", "replace"))


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unsqueezed(body: Buffer, limit: int, what: str) -> bytes:
    """A compressed list, never inflated past ``limit``: a small frame must not become a huge one."""
    try:
        # decompress() trusts a size the frame declares over max_output_size: check it first
        _need(zstandard.frame_content_size(body) <= limit, f"{what} frame inflates past {limit} bytes")
        return _LIST_DECOMPRESSOR.decompress(body, max_output_size=limit)
    except zstandard.ZstdError:
        raise RemoteProtocolError(f"{what} frame is not valid zstd, or inflates past {limit} bytes") from None


def _load_json(body: Buffer, what: str) -> Any:
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} frame is not valid UTF-8") from None
    except ValueError:
        raise RemoteProtocolError(f"{what} frame is not valid JSON") from None


def _decode_manifest(obj: Any) -> Manifest:
    _need(isinstance(obj, dict), "MANIFEST is not an object")
    tid, chunk, window, streams = (obj.get(k) for k in ("transfer_id", "chunk_bytes", "window", "streams"))
    delta = obj.get("delta", True)
    _need(isinstance(delta, bool), "MANIFEST delta malformed")
    _need(isinstance(tid, str) and 0 < len(tid) <= 64, "MANIFEST transfer_id malformed")
    _need(_is_uint(chunk) and MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES, "MANIFEST chunk_bytes out of range")
    _need(_is_uint(window) and 1 <= window <= MAX_WINDOW, "MANIFEST window out of range")
    _need(_is_uint(streams) and 1 <= streams <= MAX_STREAMS, "MANIFEST streams out of range")
    assert isinstance(tid, str) and isinstance(chunk, int) and isinstance(window, int) and isinstance(streams, int)
    return Manifest(tid, chunk, window, streams, delta)


def _decode_entries(body: Buffer) -> EntryBatch:
    obj = _load_json(body, "ENTRIES")
    _need(isinstance(obj, dict), "ENTRIES is not an object")
    first, last, entries = (obj.get(k) for k in ("first", "last", "entries"))
    _need(_is_uint(first) and isinstance(last, bool), "ENTRIES first or last malformed")
    _need(isinstance(entries, list) and len(entries) <= MAX_BATCH_ENTRIES, "ENTRIES entries malformed")
    assert isinstance(first, int) and isinstance(entries, list) and isinstance(last, bool)
    return EntryBatch(first, tuple(_decode_entry(e) for e in entries), last)


_KINDS = frozenset(("file", "dir", "symlink"))


def _decode_entry(obj: object) -> Entry:
    """One entry, every field checked (a tree lists thousands: the checks stay cheap)."""
    if not isinstance(obj, dict):
        raise RemoteProtocolError("ENTRIES entry is not an object")
    get = obj.get
    path, kind, size, mode, mtime = get("path"), get("kind", "file"), get("size"), get("mode", 0o644), get("mtime")
    target, identity, digest = get("target"), get("identity"), get("digest")
    if not isinstance(path, str) or not path:
        raise RemoteProtocolError("ENTRIES entry path malformed")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise RemoteProtocolError("ENTRIES entry path is not valid UTF-8") from None
    if kind not in _KINDS:
        raise RemoteProtocolError(f"ENTRIES entry kind {kind!r} unknown")
    if (kind == "symlink") != isinstance(target, str):
        raise RemoteProtocolError("ENTRIES symlink entry needs a target, others none")
    if target is not None and not (0 < len(target) <= 4096 and "\x00" not in target):
        raise RemoteProtocolError("ENTRIES symlink target malformed")
    if size is not None and (kind != "file" or not _is_uint(size)):
        raise RemoteProtocolError("ENTRIES entry size malformed (or given for what is not a file)")
    if not _is_uint(mode) or mode > 0o7777:
        raise RemoteProtocolError("ENTRIES entry mode malformed")
    if mtime is not None:
        if not isinstance(mtime, int | float) or isinstance(mtime, bool) or not math.isfinite(mtime):
            raise RemoteProtocolError("ENTRIES entry mtime malformed")
        mtime = float(mtime)
    if identity is not None and not (isinstance(identity, str) and len(identity) <= 128):
        raise RemoteProtocolError("ENTRIES identity malformed")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 2 * CONTENT_DIGEST_BYTES):
        raise RemoteProtocolError("ENTRIES digest malformed")
    return Entry(path, kind, size, mode, mtime, target, identity, digest)
