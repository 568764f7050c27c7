"""The receiver's end of the data path: each in-order chunk appended to its file while it is
hashed, each file's digest checked at its end, each pack's files put in place together.

network -> queue -> ``write_chunks`` -> files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from rtransfer.buffers import BufferPool
from rtransfer.compress import BadCompressedChunk, decompress
from rtransfer.errors import ProtocolViolation
from rtransfer.integrity import FileDigest
from rtransfer.protocol.constants import FrameType
from rtransfer.protocol.events import ChunkReady, FileComplete, PackReady
from rtransfer.protocol.messages import copy_ranges, hole_size
from rtransfer.protocol.model import Buffer
from rtransfer.receiving.sink import Sink
from rtransfer.stats import TransferStats
from rtransfer.workers import in_cpu

RecvItem = ChunkReady | FileComplete | PackReady


FileVerifiedCallback = Callable[[FileComplete, bool, str, str], Awaitable[None]]
PackWrittenCallback = Callable[[PackReady, list[tuple[str, int, str | None]]], Awaitable[None]]


async def write_chunks(
    queue: asyncio.Queue[RecvItem],
    sink: Sink,
    stats: TransferStats,
    verified: FileVerifiedCallback,
    pack_written: PackWrittenCallback,
    start_offsets: dict[int, int],
    pool: BufferPool | None = None,
) -> None:
    """Append each in-order chunk to its file while hashing it; check the digest at the end.
    A pack's files go into place together (see DirectorySink.write_pack)."""
    writer = _Writer(sink, stats, start_offsets, pool)
    while True:
        item = await queue.get()
        stats.observe_queue(queue.qsize())
        if isinstance(item, PackReady):
            results = await sink.write_pack(item.files, item.payload, check=not item.authenticated)
            writer.recycle(item.payload)
            await pack_written(item, results)
        elif isinstance(item, ChunkReady):
            stats.transferred(await _write_chunk(item, sink, await writer.digest_for(item.file_index)))
            writer.recycle(item.payload)  # written and hashed: nothing reads this chunk again
        else:
            ok, digest_hex = await writer.check(item)
            path = sink.display_path(item.file_index)
            await sink.finish(item.file_index, ok)
            await verified(item, ok, digest_hex, path)


class _Writer:
    """The writer's running digests, one per file being written."""

    def __init__(
        self, sink: Sink, stats: TransferStats, start_offsets: dict[int, int], pool: BufferPool | None
    ) -> None:
        self.sink = sink
        self.stats = stats
        self.start_offsets = start_offsets
        self.pool = pool
        self.digests: dict[int, FileDigest] = {}

    async def digest_for(self, index: int) -> FileDigest:
        """A resumed file's digest first takes in the part already on disk."""
        if index not in self.digests:
            self.digests[index] = FileDigest()
            start = self.start_offsets.pop(index, 0)
            if start:
                await self.sink.hash_prefix(index, start, self.digests[index])
        return self.digests[index]

    async def check(self, end: FileComplete) -> tuple[bool, str]:
        """The file's digest against its sender's (a file resumed whole gets no chunk: its digest is of the disk)."""
        digest = await self.digest_for(end.file_index)
        del self.digests[end.file_index]
        ok = digest.digest() == end.digest
        if not ok:
            self.stats.integrity_failures += 1
        return ok, digest.hexdigest()

    def recycle(self, payload: Buffer) -> None:
        if self.pool is not None:
            self.pool.put(payload)


async def _write_chunk(chunk: ChunkReady, sink: Sink, digest: FileDigest) -> int:
    """Write and hash one chunk, whatever its payload holds; the file's bytes it stood for."""
    if chunk.kind is FrameType.COPY:
        return await sink.copy_from_basis(chunk.file_index, chunk.offset, copy_ranges(chunk.payload), digest)
    if chunk.kind is FrameType.HOLE:
        n = hole_size(chunk.payload)
        await asyncio.gather(sink.skip(chunk.file_index, chunk.offset, n), digest.update_zeros(n))
        return n
    data: Buffer = chunk.payload
    if chunk.kind is FrameType.ZDATA:
        try:
            data = await in_cpu(decompress, chunk.payload)
        except BadCompressedChunk as exc:
            raise ProtocolViolation(str(exc)) from None
    await asyncio.gather(sink.write(chunk.file_index, chunk.offset, data), digest.update(data))
    return len(data)
