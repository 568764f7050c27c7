"""Writing frames: each message type's encoder, in one table, and the header, check and
sealing every frame gets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import zstandard

from rtransfer.protocol.constants import MAX_ERROR_MESSAGE_BYTES, FrameType
from rtransfer.protocol.entries import encode_entries
from rtransfer.protocol.errors import LocalProtocolError
from rtransfer.protocol.messages import (
    ACK_LAYOUT,
    CONFIRM_BODY,
    DATA_HEADER,
    ERROR_LAYOUT,
    FILE_END_LAYOUT,
    FILE_RESULT_LAYOUT,
    HELLO_LAYOUT,
    MAGIC,
    PACK_RESULT_LAYOUT,
    PREFIX,
    SIGNATURE_CHUNK_LAYOUT,
    SIGNATURE_LAYOUT,
    TAG_BYTES,
    U64,
    Accept,
    Ack,
    Confirm,
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
    PackResult,
    Ping,
    Pong,
    Punch,
    Sealer,
    checked_by_tag,
    frame_check,
    frame_type,
)
from rtransfer.protocol.model import Buffer, EntryBatch, Manifest, Signature, WritableBuffer


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
        prefix = PREFIX.pack(ftype, len(clear) + len(secret))
        parts: list[Buffer] = [clear, secret] if clear else [secret]
    else:
        prefix = PREFIX.pack(ftype, len(clear) + len(secret) + TAG_BYTES)
        out = allocate(len(secret) + TAG_BYTES) if allocate is not None else None
        parts = [clear, sealer.seal(prefix + clear, secret, out)]
    check = 0 if checked_by_tag(ftype, sealer is not None) else frame_check(prefix, *parts)
    return [prefix + U64.pack(check), *parts]


def encode(
    frame: Frame, sealer: Sealer | None = None, allocate: Callable[[int], WritableBuffer] | None = None
) -> list[Buffer]:
    """Encode a frame as buffers to write in order; large payloads are not copied.

    The last buffer of a DATA frame is its payload, or its ciphertext when sealed."""
    if isinstance(frame, Data):
        clear = DATA_HEADER.pack(frame.seq, frame.file_index, frame.offset, frame.order)
        return _frame(frame.kind, clear, frame.payload, sealer, allocate)
    body = _BODIES.get(type(frame))
    if body is None:
        raise LocalProtocolError(f"not a frame: {frame!r}")
    return _frame(frame_type(frame), b"", body(frame), sealer)


def _signature_body(frame: Signature) -> bytes:
    rows = b"".join(SIGNATURE_CHUNK_LAYOUT.pack(length, digest) for length, digest in frame.chunks)
    return SIGNATURE_LAYOUT.pack(frame.file_index, frame.offset) + rows


def _ack_body(frame: Ack) -> bytes:
    return ACK_LAYOUT.pack(frame.cumulative, len(frame.selective)) + b"".join(U64.pack(s) for s in frame.selective)


def _entries_body(frame: EntryBatch) -> bytes:
    return _LIST_COMPRESSOR.compress(encode_entries(frame))


def _accept_body(frame: Accept) -> bytes:
    offsets = {str(k): v for k, v in frame.start_offsets.items()}
    return _squeezed({"first": frame.first, "start_offsets": offsets, "done": list(frame.done)})


def _error_body(frame: ErrorFrame) -> bytes:
    text = frame.message.encode("utf-8", "backslashreplace")[:MAX_ERROR_MESSAGE_BYTES].decode("utf-8", "ignore")
    return ERROR_LAYOUT.pack(frame.cause) + text.encode("utf-8")


_BODIES: dict[type, Callable[[Any], bytes]] = {
    Signature: _signature_body,
    Ack: _ack_body,
    Nack: lambda f: U64.pack(f.seq),
    Hello: lambda f: HELLO_LAYOUT.pack(MAGIC, f.version, f.capabilities, f.role) + f.auth,
    Manifest: lambda f: _json(_manifest_to_json(f)),
    Join: lambda f: _json({**_manifest_to_json(f.manifest), "stream": f.stream}),
    Joined: lambda f: b"",
    EntryBatch: _entries_body,
    Accept: _accept_body,
    PackResult: lambda f: PACK_RESULT_LAYOUT.pack(f.order, f.ok),
    FileEnd: lambda f: FILE_END_LAYOUT.pack(f.file_index, f.size, f.digest),
    FileResult: lambda f: FILE_RESULT_LAYOUT.pack(f.file_index, f.ok),
    Done: lambda f: b"",
    Ping: lambda f: U64.pack(f.token),
    Pong: lambda f: U64.pack(f.token),
    ErrorFrame: _error_body,
    Confirm: lambda f: CONFIRM_BODY,
    Hints: lambda f: _json({"at": [list(a) for a in f.addresses], "punch": [list(a) for a in f.punch], "late": f.late}),
    Punch: lambda f: b"",
    GoDirect: lambda f: f.ident,
}


def encode_bytes(frame: Frame) -> bytes:
    return b"".join(bytes(p) for p in encode(frame))


def _manifest_to_json(m: Manifest) -> dict[str, Any]:
    return {
        "transfer_id": m.transfer_id,
        "chunk_bytes": m.chunk_bytes,
        "window": m.window,
        "streams": m.streams,
        "delta": m.delta,
        "filters": list(m.filters),
        "delete": m.delete,
        "delete_excluded": m.delete_excluded,
        "dry_run": m.dry_run,
        "one_file": m.one_file,
    }


def _json(obj: object) -> bytes:
    """ASCII: a rule's bytes that are not UTF-8 (names.py) travel as JSON's \\udcNN escapes."""
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


# The file list and ACCEPT are most of what a second run of an unchanged tree puts on the wire:
# paths share their directories and sizes repeat, and zstd shrinks them about elevenfold (bench/README.md).
_LIST_COMPRESSOR = zstandard.ZstdCompressor(level=3)


def _squeezed(obj: object) -> bytes:
    return _LIST_COMPRESSOR.compress(_json(obj))
