"""Frame codec: round trips, bounds, corruption, and arbitrary input."""

from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from rtransfer.protocol.constants import Cause, FrameType, Role
from rtransfer.protocol.entries import DEVICE, LINKED, SIZE
from rtransfer.protocol.errors import ProtocolError
from rtransfer.protocol.messages import (
    HEADER,
    MAX_BODY_BYTES,
    Accept,
    Ack,
    CorruptChunk,
    Data,
    Done,
    ErrorFrame,
    FileEnd,
    FileResult,
    Hello,
    Join,
    Joined,
    Nack,
    PackResult,
    Ping,
    Pong,
)
from rtransfer.protocol.model import Entry, EntryBatch, Manifest, Signature
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.writing import encode_bytes

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40) | st.binary(
    min_size=1, max_size=40
).map(lambda raw: raw.decode("utf-8", "surrogateescape"))  # names are bytes: any, UTF-8 or not
files = st.builds(
    Entry,
    path=names,
    kind=st.just("file"),
    size=st.none() | st.integers(0, 2**50),
    mode=st.integers(0, 0o7777),
    mtime_ns=st.none() | st.integers(-(2**63), 2**63 - 1),
    identity=st.none() | st.text(max_size=40),
    digest=st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
    linked=st.booleans(),
)
others = st.builds(
    Entry,
    path=names,
    kind=st.sampled_from(["dir", "symlink", "hardlink", "fifo", "char", "block"]),
    mode=st.integers(0, 0o7777),
    mtime_ns=st.none() | st.integers(-(2**63), 2**63 - 1),
    uid=st.none() | st.integers(0, 2**32 - 1),
).map(
    lambda e: Entry(
        e.path,
        e.kind,
        None,
        e.mode,
        e.mtime_ns,
        "t/\udcff" if e.kind in ("symlink", "hardlink") else None,
        uid=e.uid,
        gid=None if e.uid is None else e.uid // 2,
        device=e.mode * 7 if e.kind in ("char", "block") else None,
    )
)
entries = files | others
frames = st.one_of(
    st.builds(
        Hello, role=st.sampled_from(Role), version=st.integers(0, 65535), capabilities=u32, auth=st.binary(max_size=64)
    ),
    manifests := st.builds(
        Manifest,
        st.text("0123456789abcdef", min_size=1, max_size=32),
        st.integers(4096, 1 << 24),
        st.integers(1, 1024),
        st.integers(1, 64),
        st.booleans(),
    ),
    st.builds(Join, manifests, st.integers(1, 64)),
    st.just(Joined()),
    st.builds(EntryBatch, u32, st.lists(entries, max_size=5).map(tuple), st.booleans()),
    st.builds(
        Accept,
        u32,
        st.dictionaries(st.integers(0, 1000), st.integers(0, 2**50), max_size=5),
        st.lists(u32, max_size=5).map(tuple),
    ),
    st.builds(
        Data,
        u64,
        u32,
        u64,
        st.binary(max_size=3000),
        st.sampled_from([FrameType.DATA, FrameType.PACK, FrameType.ZDATA, FrameType.COPY]),
        u64,
    ),
    st.builds(
        Signature,
        u32,
        u64,
        st.lists(st.tuples(st.integers(1, 2**32 - 1), st.binary(min_size=16, max_size=16)), max_size=5).map(tuple),
    ),
    st.builds(PackResult, u64, st.booleans()),
    st.builds(Ack, u64, st.lists(u64, max_size=20).map(tuple)),
    st.builds(Nack, u64),
    st.builds(FileEnd, u32, u64, st.binary(min_size=32, max_size=32)),
    st.builds(FileResult, u32, st.booleans()),
    st.just(Done()),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(ErrorFrame, st.sampled_from(Cause), st.text(max_size=100)),
)


def decode_all(raw: bytes, split: int = 0) -> list[object]:
    decoder = FrameDecoder()
    out: list[object] = []
    pieces = [raw[i : i + split] for i in range(0, len(raw), split)] if split else [raw]
    for piece in pieces:
        decoder.feed(piece)
        out.extend(decoder.frames())
    return out


def normalise(frame: object) -> object:
    if isinstance(frame, Data):
        return Data(frame.seq, frame.file_index, frame.offset, bytes(frame.payload), frame.kind, frame.order)
    return frame


@given(st.lists(frames, min_size=1, max_size=6), st.integers(0, 50))
def test_any_frames_round_trip_whatever_the_read_sizes(batch: list[object], split: int) -> None:
    raw = b"".join(encode_bytes(f) for f in batch)  # type: ignore[arg-type]
    assert [normalise(f) for f in decode_all(raw, split)] == [normalise(f) for f in batch]


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_frames_or_protocol_error_never_another_exception(raw: bytes) -> None:
    decoder = FrameDecoder()
    try:
        decoder.feed(raw)
        list(decoder.frames())
    except ProtocolError:
        pass
    assert len(decoder.get_buffer()) <= max(MAX_BODY_BYTES.values())


def test_oversized_length_is_refused_before_allocating() -> None:
    header = HEADER.pack(FrameType.ACK, MAX_BODY_BYTES[FrameType.ACK] + 1, 0)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode_all(header)


def test_unknown_frame_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 0xee"):
        decode_all(HEADER.pack(0xEE, 0, 0))


def test_flipped_payload_bit_in_data_frame_yields_corrupt_data_with_its_seq() -> None:
    raw = bytearray(encode_bytes(Data(7, 0, 0, b"x" * 100)))
    raw[-1] ^= 0x01
    assert decode_all(bytes(raw)) == [CorruptChunk(7)]


def test_flipped_bit_in_control_frame_is_a_protocol_error() -> None:
    raw = bytearray(encode_bytes(Ack(5, (7,))))
    raw[-1] ^= 0x80
    with pytest.raises(ProtocolError, match="corrupt ACK"):
        decode_all(bytes(raw))


def _head(kind: int, flags: int, suffix: int) -> bytes:
    """One binary entry's head (protocol/entries.py): kind, flags, no shared prefix, the suffix length, mode."""
    return struct.pack("!BBHHH", kind, flags, 0, suffix, 0o644)


def _entries(*entries: bytes) -> bytes:
    return struct.pack("!QBH", 0, 1, len(entries)) + b"".join(entries)


@pytest.mark.parametrize(
    ("ftype", "body", "message"),
    [
        (FrameType.ENTRIES, _entries(_head(1, LINKED, 1) + b"a"), "kind, mode or path malformed"),
        (FrameType.ENTRIES, _entries(_head(7, 0, 1) + b"a"), "kind, mode or path malformed"),
        (FrameType.ENTRIES, _entries(_head(4, DEVICE, 1) + b"a" + bytes(8)), "device its number"),
        (FrameType.ENTRIES, _entries(_head(3, 0, 1) + b"a"), "a link needs a target"),
        (FrameType.ENTRIES, _entries(_head(1, SIZE, 1) + b"a" + bytes(8)), "size given for what is not a file"),
        (FrameType.ENTRIES, _entries(_head(0, SIZE, 1) + b"a" + bytes(4)), "truncated"),
        (FrameType.ENTRIES, _entries(_head(0, 0, 1) + b"a" + b"more"), "bytes after its last entry"),
        (FrameType.ENTRIES, _entries(_head(0, 0, 0)), "path malformed"),
        (FrameType.ENTRIES, struct.pack("!QBH", 0, 2, 0), "count or last malformed"),
        (FrameType.MANIFEST, b'{"transfer_id":"a","chunk_bytes":1,"window":4}', "chunk_bytes out of range"),
        (FrameType.MANIFEST, b"\xff\xfe", "not valid UTF-8"),
        (FrameType.HINTS, b"[1,", "not valid JSON"),
        (FrameType.HINTS, b'[["10.0.0.1", 4000]]', "HINTS malformed"),  # version 8's form
        (FrameType.HINTS, b'{"at":[],"punch":[],"late":1}', "HINTS malformed"),
        (FrameType.HINTS, b'{"at":[],"punch":[["192.0.2.1",1],["192.0.2.9",2]],"late":false}', "more than one host"),
        (FrameType.HINTS, b'{"at":[],"punch":[["victim.example",1]],"late":false}', "host malformed"),  # no DNS
        (FrameType.HINTS, b'{"at":[["victim.example",1]],"punch":[],"late":false}', "host malformed"),
        (FrameType.HINTS, b'{"at":[],"punch":[["::1",1]],"late":false}', "host malformed"),  # punching is IPv4
        (FrameType.HINTS, b'{"at":[],"punch":' + b"[" + b",".join([b'["h",1]'] * 17) + b'],"late":false}', "malformed"),
        (FrameType.ACCEPT, b'{"first":0,"start_offsets":{"x":1},"done":[]}', "start_offsets malformed"),
        # digits to str.isdigit, not to int() (a ValueError, not a protocol error) nor ASCII ("\u0663" is int 3)
        (FrameType.ACCEPT, '{"first":0,"start_offsets":{"\u00b2":1},"done":[]}'.encode(), "start_offsets malformed"),
        (FrameType.ACCEPT, '{"first":0,"start_offsets":{"\u0663":1},"done":[]}'.encode(), "start_offsets malformed"),
    ],
)
def test_malformed_file_list_is_a_protocol_error(ftype: FrameType, body: bytes, message: str) -> None:
    from rtransfer.protocol.writing import _frame

    if ftype in (FrameType.ENTRIES, FrameType.ACCEPT):  # compressed on the wire
        body = zstandard.ZstdCompressor().compress(body)
    raw = b"".join(bytes(p) for p in _frame(ftype, b"", body, None))
    with pytest.raises(ProtocolError, match=message):
        decode_all(raw)


@pytest.mark.parametrize("declares_size", [True, False])
def test_a_file_list_that_would_inflate_past_its_limit_is_refused(declares_size: bool) -> None:
    """A few KiB of zstd can stand for gigabytes: the declared size is checked before anything is
    allocated for it, and without one, decompression stops at the limit."""
    from rtransfer.protocol.constants import MAX_ENTRIES_BYTES
    from rtransfer.protocol.writing import _frame

    bomb = zstandard.ZstdCompressor(write_content_size=declares_size).compress(b" " * (MAX_ENTRIES_BYTES + 1))
    assert len(bomb) < 4096
    raw = b"".join(bytes(p) for p in _frame(FrameType.ENTRIES, b"", bomb, None))
    with pytest.raises(ProtocolError, match="inflates past"):
        decode_all(raw)


def test_a_file_list_that_is_not_zstd_is_a_protocol_error() -> None:
    from rtransfer.protocol.writing import _frame

    raw = b"".join(bytes(p) for p in _frame(FrameType.ENTRIES, b"", b'{"first":0}', None))
    with pytest.raises(ProtocolError, match="not valid zstd"):
        decode_all(raw)


def test_ack_count_must_match_length() -> None:
    from rtransfer.protocol.writing import _frame

    raw = b"".join(bytes(p) for p in _frame(FrameType.ACK, b"", (1).to_bytes(8, "big") + (3).to_bytes(2, "big"), None))
    with pytest.raises(ProtocolError, match="does not match"):
        decode_all(raw)


def test_an_error_frame_with_a_cause_this_side_does_not_know_reads_as_other() -> None:
    from rtransfer.protocol.writing import _frame

    (frame,) = decode_all(b"".join(bytes(p) for p in _frame(FrameType.ERROR, b"", bytes([200]) + b"x", None)))
    assert frame == ErrorFrame(Cause.OTHER, "x")
