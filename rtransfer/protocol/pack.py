"""Packs: many whole small files in one chunk.

A tree of small files sent one chunk (and one FILE_END, one FILE_RESULT) per file
pays the per-frame and per-ACK cost thousands of times over; packed, it pays it
once per chunk, and the chunk still has its sequence number, ACK, resend and seal.

A pack's payload is ``count:u32``, then ``count`` table rows ``index:u32 | size:u32 |
blake3:32``, then the files' bytes back to back in table order. The digest is each
file's own whole-file BLAKE3, checked by the receiver before the file gets its name.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from rtransfer.protocol.errors import RemoteProtocolError
from rtransfer.protocol.model import DIGEST_BYTES, Buffer

_COUNT = struct.Struct("!I")
_ROW = struct.Struct(f"!II{DIGEST_BYTES}s")


class PackedFile(NamedTuple):
    """A tuple, not a dataclass: a pack of empty files has thousands, and each is made per pack."""

    file_index: int
    size: int
    digest: bytes
    start: int = 0  # where its bytes begin in the payload


def table_bytes(count: int) -> int:
    """Bytes the table of a pack of ``count`` files takes, before the files' bytes."""
    return _COUNT.size + count * _ROW.size


def table_bytes_of(payload: Buffer) -> int:
    """Bytes of a pack's payload that are its table, not file data (from the count it starts with)."""
    return table_bytes(_COUNT.unpack_from(payload)[0])


def write_table(buf: memoryview, files: list[PackedFile]) -> None:
    _COUNT.pack_into(buf, 0, len(files))
    for i, f in enumerate(files):
        _ROW.pack_into(buf, _COUNT.size + i * _ROW.size, f.file_index, f.size, f.digest)


def read_table(payload: Buffer) -> list[PackedFile]:
    """The files of a pack, each with where its bytes start; RemoteProtocolError if the table
    does not describe the payload exactly."""
    if len(payload) < _COUNT.size:
        raise RemoteProtocolError("PACK too short for its table")
    (count,) = _COUNT.unpack_from(payload)
    start = table_bytes(count)
    if start > len(payload):
        raise RemoteProtocolError(f"PACK of {len(payload)} bytes cannot hold a table of {count} files")
    files = []
    with memoryview(payload) as view:
        for index, size, digest in _ROW.iter_unpack(view[_COUNT.size : table_bytes(count)]):
            files.append(PackedFile(index, size, digest, start))
            start += size
    if start != len(payload):
        raise RemoteProtocolError("PACK sizes do not add up to its length")
    return files
