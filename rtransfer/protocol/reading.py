"""Reading frames: bytes in, frames out, every length and field checked before it is
trusted; each message type's decoder in one table."""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import zstandard

from rtransfer.protocol.constants import (
    CHUNK_TYPES,
    MAX_ACCEPT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_ENTRIES_BYTES,
    MAX_FILTER_RULES,
    MAX_HINTS,
    MAX_PUNCH,
    MAX_STREAMS,
    MAX_WINDOW,
    MIN_CHUNK_BYTES,
    Cause,
    FrameType,
    Role,
)
from rtransfer.protocol.entries import decode_entries
from rtransfer.protocol.errors import CorruptFrame, FrameAuthenticationError, HandshakeRefused, RemoteProtocolError
from rtransfer.protocol.messages import (
    ACK_LAYOUT,
    CONFIRM_BODY,
    DATA_HEADER,
    DIRECT_ID_BYTES,
    ERROR_LAYOUT,
    FILE_END_LAYOUT,
    FILE_RESULT_LAYOUT,
    HEADER,
    HELLO_LAYOUT,
    MAGIC,
    MAX_BODY_BYTES,
    PACK_RESULT_LAYOUT,
    PREFIX,
    SIGNATURE_CHUNK_LAYOUT,
    SIGNATURE_LAYOUT,
    TAG_BYTES,
    U64,
    Accept,
    Ack,
    Confirm,
    CorruptChunk,
    Data,
    Done,
    ErrorFrame,
    FileEnd,
    FileResult,
    Frame,
    GoDirect,
    Hello,
    Hints,
    Join,
    Joined,
    Nack,
    Opener,
    PackResult,
    Ping,
    Pong,
    Punch,
    checked_by_tag,
    frame_check,
)
from rtransfer.protocol.model import FRESH_BUFFERS, Buffer, Buffers, Manifest, Signature, WritableBuffer

_LIST_DECOMPRESSOR = zstandard.ZstdDecompressor()


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
        self._ready: list[Frame | CorruptChunk] = []

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

    def frames(self) -> Iterator[Frame | CorruptChunk]:
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
        prefix = bytes(self._head[: PREFIX.size])
        data = ftype in CHUNK_TYPES
        tag_only = checked_by_tag(ftype, self.opener is not None)
        if not tag_only and frame_check(prefix, body) != self._check:
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
        self._ready.append(CorruptChunk(U64.unpack_from(body)[0]))
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
    return _DECODERS[ftype](ftype, body)


def _decode_chunk(ftype: FrameType, body: WritableBuffer) -> Data:
    _need(len(body) >= DATA_HEADER.size, f"{ftype.name} frame too short")
    seq, file_index, offset, order = DATA_HEADER.unpack_from(body)
    return Data(seq, file_index, offset, memoryview(body)[DATA_HEADER.size :], ftype, order)


def _decode_signature(ftype: FrameType, body: WritableBuffer) -> Signature:
    n, head, row = len(body), SIGNATURE_LAYOUT.size, SIGNATURE_CHUNK_LAYOUT.size
    _need(n >= head and (n - head) % row == 0, "SIGNATURE malformed")
    file_index, offset = SIGNATURE_LAYOUT.unpack_from(body)
    chunks = tuple(SIGNATURE_CHUNK_LAYOUT.iter_unpack(memoryview(body)[head:]))
    _need(all(length > 0 for length, _ in chunks), "SIGNATURE has an empty chunk")
    return Signature(file_index, offset, chunks)


def _decode_ack(ftype: FrameType, body: WritableBuffer) -> Ack:
    _need(len(body) >= ACK_LAYOUT.size, "ACK frame too short")
    cumulative, count = ACK_LAYOUT.unpack_from(body)
    _need(len(body) == ACK_LAYOUT.size + 8 * count, "ACK frame length does not match its count")
    return Ack(cumulative, tuple(struct.unpack_from(f"!{count}Q", body, ACK_LAYOUT.size)))


def _decode_hello(ftype: FrameType, body: WritableBuffer) -> Hello:
    _need(len(body) >= HELLO_LAYOUT.size, "HELLO frame too short")
    magic, version, caps, role = HELLO_LAYOUT.unpack_from(body)
    if magic != MAGIC:
        raise HandshakeRefused("peer is not speaking the rtransfer protocol")
    try:
        peer_role = Role(role)
    except ValueError:
        raise HandshakeRefused(f"peer announced an unknown role {role}") from None
    return Hello(peer_role, version, caps, bytes(body[HELLO_LAYOUT.size :]))


def _decode_join(ftype: FrameType, body: WritableBuffer) -> Join:
    obj = _load_json(body, "JOIN")
    _need(isinstance(obj, dict) and _is_uint(obj.get("stream")) and obj["stream"] >= 1, "JOIN stream malformed")
    return Join(_decode_manifest(obj), obj["stream"])


def _sized(body: WritableBuffer, size: int, name: str) -> bytes:
    _need(len(body) == size, f"{name} frame has the wrong length")
    return bytes(body)


def _decode_hints(ftype: FrameType, body: WritableBuffer) -> Hints:
    obj = _load_json(body, "HINTS")
    _need(
        isinstance(obj, dict) and set(obj) == {"at", "punch", "late"} and isinstance(obj["late"], bool),
        "HINTS malformed",
    )
    punch = _addresses(obj["punch"], MAX_PUNCH, ipaddress.IPv4Address)  # the punching ports are IPv4's
    # One NAT, one public address: a peer can't make this side knock at several hosts.
    _need(len({host for host, _ in punch}) <= 1, "HINTS punch addresses name more than one host")
    return Hints(_addresses(obj["at"], MAX_HINTS, ipaddress.ip_address), punch, obj["late"])


def _addresses(obj: object, most: int, literal: Callable[[str], object]) -> tuple[tuple[str, int], ...]:
    """HOST, PORT pairs whose hosts are address literals: a name would have this side ask DNS
    whatever the peer likes, once per dial."""
    items = obj if isinstance(obj, list) else []
    _need(isinstance(obj, list) and len(items) <= most, "HINTS malformed")
    addresses = []
    for item in items:
        _need(isinstance(item, list) and len(item) == 2, "HINTS address malformed")
        host, port = item
        _need(isinstance(host, str) and 0 < len(host) <= 64 and _is_literal(host, literal), "HINTS host malformed")
        _need(_is_uint(port) and 0 < port < 65536, "HINTS port malformed")
        addresses.append((host, port))
    return tuple(addresses)


def _is_literal(host: str, literal: Callable[[str], object]) -> bool:
    try:
        literal(host)
    except ValueError:
        return False
    return True


def _decode_accept(ftype: FrameType, body: WritableBuffer) -> Accept:
    obj = _load_json(_unsqueezed(body, MAX_ACCEPT_BYTES, "ACCEPT"), "ACCEPT")
    _need(isinstance(obj, dict), "ACCEPT is not an object")
    first, offsets, done = obj.get("first"), obj.get("start_offsets"), obj.get("done", [])
    _need(_is_uint(first) and isinstance(offsets, dict) and isinstance(done, list), "ACCEPT malformed")
    result: dict[int, int] = {}
    for key, value in offsets.items():
        _need(key.isascii() and key.isdigit() and _is_uint(value), "ACCEPT start_offsets malformed")  # not "²"
        result[int(key)] = value
    _need(all(_is_uint(i) for i in done), "ACCEPT done malformed")
    return Accept(first, result, tuple(done))


def _fixed(layout: struct.Struct, make: Callable[..., Frame]) -> Callable[[FrameType, WritableBuffer], Frame]:
    """A frame whose body is exactly ``layout``, its fields in ``make``'s order."""

    def decode(ftype: FrameType, body: WritableBuffer) -> Frame:
        _need(len(body) == layout.size, f"{ftype.name} frame has the wrong length")
        return make(*layout.unpack(body))

    return decode


def _decode_confirm(ftype: FrameType, body: WritableBuffer) -> Confirm:
    _need(bytes(body) == CONFIRM_BODY, "CONFIRM frame malformed")
    return Confirm()


def _decode_error(ftype: FrameType, body: WritableBuffer) -> ErrorFrame:
    _need(len(body) >= ERROR_LAYOUT.size, "ERROR frame too short")
    (code,) = ERROR_LAYOUT.unpack_from(body)
    cause = Cause(code) if code in Cause._value2member_map_ else Cause.OTHER
    return ErrorFrame(cause, bytes(body[ERROR_LAYOUT.size :]).decode("utf-8", "replace"))


def _empty(make: Callable[[], Frame]) -> Callable[[FrameType, WritableBuffer], Frame]:
    return lambda ftype, body: make()


_DECODERS: dict[FrameType, Callable[[FrameType, WritableBuffer], Frame]] = {
    **{ftype: _decode_chunk for ftype in CHUNK_TYPES},
    FrameType.SIGNATURE: _decode_signature,
    FrameType.ACK: _decode_ack,
    FrameType.HELLO: _decode_hello,
    FrameType.MANIFEST: lambda ftype, body: _decode_manifest(_load_json(body, "MANIFEST")),
    FrameType.JOIN: _decode_join,
    FrameType.HINTS: _decode_hints,
    FrameType.GO_DIRECT: lambda ftype, body: GoDirect(_sized(body, DIRECT_ID_BYTES, "GO_DIRECT")),
    FrameType.JOINED: _empty(Joined),
    FrameType.ENTRIES: lambda ftype, body: decode_entries(_unsqueezed(body, MAX_ENTRIES_BYTES, "ENTRIES")),
    FrameType.PACK_RESULT: _fixed(PACK_RESULT_LAYOUT, PackResult),
    FrameType.ACCEPT: _decode_accept,
    FrameType.NACK: _fixed(U64, Nack),
    FrameType.PING: _fixed(U64, Ping),
    FrameType.PONG: _fixed(U64, Pong),
    FrameType.FILE_END: _fixed(FILE_END_LAYOUT, FileEnd),
    FrameType.FILE_RESULT: _fixed(FILE_RESULT_LAYOUT, FileResult),
    FrameType.DONE: _empty(Done),
    FrameType.PUNCH: _empty(Punch),
    FrameType.CONFIRM: _decode_confirm,
    FrameType.ERROR: _decode_error,
}


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


def _valid_rule(spec: str) -> bool:
    """A rule's text as names are (protocol/entries.py): its bytes, not necessarily UTF-8, never a
    code point a name's bytes could not make (a surrogate outside the escapes')."""
    try:
        spec.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _decode_manifest(obj: Any) -> Manifest:
    _need(isinstance(obj, dict), "MANIFEST is not an object")
    tid, chunk, window, streams = (obj.get(k) for k in ("transfer_id", "chunk_bytes", "window", "streams"))
    delta, delete, dry_run = obj.get("delta", True), obj.get("delete", False), obj.get("dry_run", False)
    excluded_too, one_file = obj.get("delete_excluded", False), obj.get("one_file", False)
    flags = (delta, delete, dry_run, excluded_too, one_file)
    _need(
        all(isinstance(b, bool) for b in flags),
        "MANIFEST delta, delete, delete_excluded, dry_run or one_file malformed",
    )
    filters = obj.get("filters", [])
    _need(
        isinstance(filters, list)
        and len(filters) <= MAX_FILTER_RULES
        and all(isinstance(f, str) and 2 < len(f) <= 4096 and f[:2] in ("+ ", "- ") for f in filters)
        and all(_valid_rule(f) for f in filters),
        "MANIFEST filters malformed",
    )
    _need(isinstance(tid, str) and 0 < len(tid) <= 64, "MANIFEST transfer_id malformed")
    _need(_is_uint(chunk) and MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES, "MANIFEST chunk_bytes out of range")
    _need(_is_uint(window) and 1 <= window <= MAX_WINDOW, "MANIFEST window out of range")
    _need(_is_uint(streams) and 1 <= streams <= MAX_STREAMS, "MANIFEST streams out of range")
    assert isinstance(tid, str) and isinstance(chunk, int) and isinstance(window, int) and isinstance(streams, int)
    return Manifest(tid, chunk, window, streams, delta, tuple(filters), delete, excluded_too, dry_run, one_file)
