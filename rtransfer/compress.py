"""``send --compress``: zstd per chunk, before sealing, at a level that follows the bottleneck.

As ``zstd --adapt`` does, the level climbs while the link is what the transfer waits
for (the reader finds the last chunk still queued) and drops while the sender's CPU is
(the send loop took the last chunk and waits for the next), through zstd's fast
negative levels to none at all: on a link faster than the fastest level, chunks go as
they are until the link falls behind again. A chunk that does not shrink goes as it
is; after one, the next few are not even tried (twice as many after each further
one), so incompressible data costs one try in dozens of chunks.
"""

from __future__ import annotations

import zstandard

from rtransfer.protocol.messages import ZDATA_SIZE
from rtransfer.protocol.model import Buffer

MIN_LEVEL = -5  # zstd's fast levels: less shrinking for much less CPU
OFF = MIN_LEVEL - 1  # below the fastest level: the link is faster than any compression
MAX_LEVEL = 15  # beyond this zstd slows by more than it shrinks text
START_LEVEL = 3
MAX_SKIPPED_CHUNKS = 64
WORTH_IT = 0.95  # compressed must be at most this share of the chunk to be sent compressed


class Compressor:
    """One sender's compressor; used by one task at a time (zstandard objects are not thread-safe)."""

    def __init__(self) -> None:
        self.level = START_LEVEL
        self._by_level: dict[int, zstandard.ZstdCompressor] = {}
        self._skip = 0
        self._next_skip = 1
        self.tried = 0  # chunks given to zstd
        self.raw_bytes = 0  # what went through ``compress``
        self.sent_bytes = 0  # what it gave back to send (compressed or not)

    def compress(self, data: Buffer) -> bytes | None:
        """``data`` as a ZDATA payload (its size, then a zstd frame), or None: send it as it is."""
        self.raw_bytes += len(data)
        packed = None
        if self._skip:
            self._skip -= 1
        elif self.level > OFF:
            packed = self._try(data)
        self.sent_bytes += len(data) if packed is None else len(packed)
        return packed

    def _try(self, data: Buffer) -> bytes | None:
        self.tried += 1
        zstd = self._by_level.get(self.level)
        if zstd is None:
            zstd = self._by_level[self.level] = zstandard.ZstdCompressor(level=self.level)
        out = zstd.compress(data)
        if len(out) + ZDATA_SIZE.size > len(data) * WORTH_IT:
            self._skip, self._next_skip = self._next_skip, min(2 * self._next_skip, MAX_SKIPPED_CHUNKS)
            return None
        self._next_skip = 1
        return ZDATA_SIZE.pack(len(data)) + out

    def adapt(self, link_waits: bool, cpu_waits: bool) -> None:
        """Up a level while the link is the bottleneck, down one while the CPU is."""
        if link_waits:
            self.level = min(self.level + 1, MAX_LEVEL)
        elif cpu_waits:
            self.level = max(self.level - 1, OFF)

    @property
    def ratio(self) -> float:
        """Bytes in per byte sent: 1.0 for nothing gained."""
        return self.raw_bytes / self.sent_bytes if self.sent_bytes else 1.0


class BadCompressedChunk(ValueError):
    pass


def decompress(payload: Buffer) -> bytes:
    """A ZDATA payload's bytes, never more than it declares (for a worker thread)."""
    (size,) = ZDATA_SIZE.unpack_from(payload)
    frame = memoryview(payload)[ZDATA_SIZE.size :]
    try:
        if zstandard.frame_content_size(frame) > size:
            raise BadCompressedChunk("a compressed chunk inflates past its declared size")
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise BadCompressedChunk(f"a compressed chunk does not decompress: {exc}") from None
    if len(data) != size:
        raise BadCompressedChunk(f"a compressed chunk holds {len(data)} bytes; it declared {size}")
    return data
