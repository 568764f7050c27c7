"""Delta transfer: send only the parts of a file the receiver's old copy lacks.

Both sides cut a file at content-defined boundaries (FastCDC, pyfastcdc's Cython
implementation): a boundary depends only on the bytes just before it, so an insertion
or deletion moves the boundaries near it and no others, and costs one or two chunks
where fixed-size blocks would shift every block after it. The receiver describes its
old copy as (length, digest) per chunk (``describe``); the sender cuts the new file the
same way and, for each chunk, either names a range of the old copy or sends the bytes
(``fingerprint``, ``match``). The whole-file BLAKE3 digest still decides whether the result gets
its name, so a digest collision or an old copy changed midway fails the file; it never
yields a wrong one.

Chunk digests are xxh3-128: 128 bits make an accidental match as unlikely as a BLAKE3
one, and at several GB/s it costs a tenth of the chunker. A deliberate collision could
only come from someone who can write the receiver's old copy, and costs a failed check.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import xxhash
from msgspec import Struct

from rtransfer.integrity import FileDigest
from rtransfer.protocol.model import Basis, WritableBuffer

if TYPE_CHECKING:
    import pyfastcdc

# Chunks average ~80 KiB (pyfastcdc's average is avg + min): a 256 MiB file is ~3,300
# chunks, a 66 KB description, and an insertion costs one or two of them.
CDC_MIN_BYTES = 16 * 1024
CDC_AVG_BYTES = 64 * 1024
CDC_MAX_BYTES = 256 * 1024
# Below this an old copy is not worth describing: reading it costs more than its bytes on the wire.
DELTA_MIN_BYTES = 1024 * 1024


def _chunker() -> pyfastcdc.FastCDC:
    """Imported here: most transfers never cut a file, and the import cost every start 5 ms."""
    import pyfastcdc

    return pyfastcdc.FastCDC(CDC_AVG_BYTES, min_size=CDC_MIN_BYTES, max_size=CDC_MAX_BYTES)


def chunk_digest(data: memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


class _Reader:
    """A file from an offset, for the chunker's ``readinto``; what it reads can be hashed on the way."""

    def __init__(self, fd: int, offset: int, digest: FileDigest | None = None) -> None:
        self._fd = fd
        self.offset = offset
        self._digest = digest

    def readinto(self, buf: WritableBuffer) -> int:
        n = os.preadv(self._fd, [buf], self.offset)
        if self._digest is not None and n:
            self._digest.update_now(memoryview(buf)[:n])
        self.offset += n
        return n


def cut(data: bytes | memoryview) -> list[tuple[int, int]]:
    """(offset, length) of each content-defined chunk of ``data`` (tests and tools)."""
    return [(c.offset, c.length) for c in _chunker().cut_buf(data)]


def describe(fd: int) -> Basis:
    """The receiver's old copy (open, from its start) as content-defined chunks: one read of it (for
    a worker thread)."""
    return tuple((c.length, chunk_digest(c.data)) for c in _chunker().cut_stream(_Reader(fd, 0)))


class Piece(Struct, frozen=True):
    """A run of the new file: ``length`` bytes from ``offset``, found in the old copy at
    ``basis_offset``, or (None) to be sent as they are."""

    offset: int
    length: int
    basis_offset: int | None


class Matcher:
    """The receiver's description of its old copy, looked up by chunk digest."""

    def __init__(self) -> None:
        self._where: dict[bytes, tuple[int, int]] = {}  # digest -> (offset in the old copy, length)
        self.basis_bytes = 0

    def add(self, chunks: Basis) -> None:
        """The next chunks of the old copy, in order (a description arrives in several frames)."""
        for length, digest in chunks:
            self._where.setdefault(digest, (self.basis_bytes, length))
            self.basis_bytes += length

    def find(self, length: int, digest: bytes) -> int | None:
        found = self._where.get(digest)
        return found[0] if found is not None and found[1] == length else None


class Fingerprint(Struct, frozen=True):
    """The new file cut from ``start``: (length, digest) per chunk, its size and whole BLAKE3 digest.
    It needs nothing from the receiver, so it can be made while the receiver describes its copy."""

    start: int
    chunks: list[tuple[int, bytes]]
    size: int
    digest: bytes


def fingerprint(fd: int, name: str, start: int = 0) -> Fingerprint:
    """One read of the new file (open as ``fd``) from ``start`` (a resume's offset): cut, each chunk
    hashed, and the whole file hashed in the same read (the part before ``start`` too). For a
    worker thread."""
    digest = FileDigest()
    digest.hash_prefix_now(fd, start, name)
    reader = _Reader(fd, start, digest)
    chunks = [(c.length, chunk_digest(c.data)) for c in _chunker().cut_stream(reader)]
    return Fingerprint(start, chunks, reader.offset, digest.digest())


def match(new: Fingerprint, matcher: Matcher) -> list[Piece]:
    """Each chunk of the new file, found in the old copy or not; consecutive pieces of the same
    sort are merged."""
    pieces: list[Piece] = []
    offset = new.start
    for length, digest in new.chunks:
        _append(pieces, Piece(offset, length, matcher.find(length, digest)))
        offset += length
    return pieces


def _append(pieces: list[Piece], piece: Piece) -> None:
    last = pieces[-1] if pieces else None
    if last is not None and last.offset + last.length == piece.offset:
        both_sent = last.basis_offset is None and piece.basis_offset is None
        contiguous = (
            last.basis_offset is not None
            and piece.basis_offset is not None
            and last.basis_offset + last.length == piece.basis_offset
        )
        if both_sent or contiguous:
            pieces[-1] = Piece(last.offset, last.length + piece.length, last.basis_offset)
            return
    pieces.append(piece)
