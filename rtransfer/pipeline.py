"""The two ends of the data path, each a task joined to the network by a bounded queue.

Sender: files -> ``read_sources`` -> queue -> network.  Receiver: network ->
queue -> ``write_chunks`` -> files. Queue size x chunk size bounds memory
whatever the file size; a full queue stops the producer, which is the
back-pressure that reaches all the way to the peer's socket.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import mmap
import os
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiofiles

from rtransfer.compress import BadCompressedChunk, Compressor, decompress
from rtransfer.delta import Fingerprint, Matcher, Piece, fingerprint, match
from rtransfer.errors import LocalIOError, ProtocolViolation
from rtransfer.files import PACK_FILE_MAX_BYTES, Source, local_error
from rtransfer.integrity import FileDigest, read_pack
from rtransfer.protocol.constants import MAX_COPY_RANGES, FrameType
from rtransfer.protocol.events import Accepted, ChunkReady, FileComplete, PackReady
from rtransfer.protocol.messages import DATA_HEADER, copy_payload, copy_ranges, hole_payload, hole_size
from rtransfer.protocol.model import Buffer, WritableBuffer
from rtransfer.protocol.pack import PackedFile, table_bytes
from rtransfer.sink import Sink
from rtransfer.stats import TransferStats
from rtransfer.stdio import StdStream
from rtransfer.workers import in_cpu, in_slices, in_worker, on_cpu, settle, wait_out

_POPULATED = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)  # Linux only
QUEUE_CHUNKS = 1  # one chunk ready while another is read or written is enough to overlap them
# The sender's reader and send loop take a buffer only while two would fit the pool's budget: the
# one left over is for a resend's ciphertext, which the machine must seal at once, whatever the budget.
SENDER_ROOM = 2


class BufferPool:
    """Recycles chunk-sized buffers, and holds the process to a budget of them.

    Fresh large buffers cost page faults and zeroing on every chunk. Small buffers
    are plain bytearrays, not pooled.

    ``budget_buffers`` is a budget on the pooled regions alive at once, idle or in use:
    producers (the sender's reader and send loop, the receiver's socket reads) wait
    for ``room`` before they take one, and an idle region is unmapped before a new
    one would go past it. Tuning alone did not hold memory under faults: resets, resends
    and a slow writer each held a few more chunks at once, and peak RSS left its
    budget. A buffer's region is counted until it is unmapped, whoever dropped it.

    A pooled buffer is a view into its own anonymous mapping, placed so that byte
    ``DATA_HEADER.size`` falls on a page boundary: a DATA frame's payload, whether
    read from the socket or decrypted, is then aligned for direct I/O and reaches
    the disk without another copy. Each mapping is populated when it is made: one
    populating call costs far less than faulting fresh pages in one at a time.
    """

    MIN_POOLED_BYTES = 64 * 1024
    ROOM_COLLECT_AFTER_S = 0.5
    # A chunk, its ciphertext (+16 bytes) and a received frame body (+ header) share one size
    # class, so an idle buffer of one serves the others: with separate sizes, the idle ones
    # of one kind sat unused while the other kind mapped fresh memory (a chunk's worth of RSS).
    SIZE_CLASS_BYTES = 64 * 1024
    _LEAD = mmap.PAGESIZE - DATA_HEADER.size

    def __init__(self, budget_buffers: int) -> None:
        self.budget_buffers = budget_buffers
        self.live = 0  # regions mapped and not yet unmapped: idle or in use
        self._free: dict[int, list[mmap.mmap]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def _size_class(self, size: int) -> int:
        return -(-size // self.SIZE_CLASS_BYTES) * self.SIZE_CLASS_BYTES

    @property
    def in_use(self) -> int:
        return self.live - sum(len(free) for free in self._free.values())

    def has_room(self, count: int = 1) -> bool:
        """Could ``count`` more buffers be taken without going over the budget?"""
        return self.in_use + count <= self.budget_buffers

    async def room(self, count: int = 1) -> None:
        """Wait until ``has_room(count)``: buffers come back, or dropped ones are unmapped.

        A buffer dropped by a dead connection can sit in a reference cycle (its tasks' frames,
        the error's traceback, a transport closing late) until the garbage collector runs, and an
        idle process may never run it: a reconnect through a rate-capped proxy waited for room
        forever, 1 run in 3 under load. A wait longer than ROOM_COLLECT_AFTER_S collects, once."""
        collected = False
        while not self.has_room(count):
            waiter = asyncio.get_running_loop().create_future()

            def wake(waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.listen(wake)
            try:
                async with asyncio.timeout(None if collected else self.ROOM_COLLECT_AFTER_S):
                    await waiter  # asyncio.timeout, not wait_for: on 3.11 that can swallow a cancel
            except TimeoutError:
                collected = True
                gc.collect()
            finally:
                self.unlisten(wake)

    async def take(self, size: int, room: int = 1) -> WritableBuffer:
        """A buffer for a producer, once ``room`` buffers would fit the budget."""
        await self.room(room)
        return self.get(size)

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` (on the event loop) whenever a buffer comes back or is unmapped."""
        self._loop = asyncio.get_running_loop()
        self._listeners.append(on_change)

    def unlisten(self, on_change: Callable[[], None]) -> None:
        if on_change in self._listeners:
            self._listeners.remove(on_change)

    def get(self, size: int) -> WritableBuffer:
        if size < self.MIN_POOLED_BYTES:
            return bytearray(size)
        size_class = self._size_class(size)
        free = self._free.get(size_class) or self._larger_idle(size_class)
        region = free.pop() if free else self._map(size_class)
        return memoryview(region)[self._LEAD : self._LEAD + size]

    def _larger_idle(self, size_class: int) -> list[mmap.mmap] | None:
        """The idle regions of the next larger size, if any. A tree's packs come in every size
        (as large as the small files they hold): mapping and populating a region afresh whenever
        the size changed, while larger ones sat idle, took 40% of a mixed tree's time (bench/README.md)."""
        sizes = [c for c, free in self._free.items() if free and c > size_class]
        return self._free[min(sizes)] if sizes else None

    def _map(self, size_class: int) -> mmap.mmap:
        if self.live >= self.budget_buffers:  # make way: an idle region of another size goes
            for free in self._free.values():
                if free:
                    free.pop()
                    break
        region = mmap.mmap(-1, self._LEAD + size_class, flags=_POPULATED)
        self.live += 1
        weakref.finalize(region, self._unmapped)
        return region

    def _unmapped(self) -> None:
        self.live -= 1
        if self._listeners and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._changed)  # the last reference may go on any thread

    def _changed(self) -> None:
        for on_change in list(self._listeners):
            on_change()

    def put(self, buf: object) -> None:
        """Take back a buffer from ``get`` (or any view into one); anything else is ignored.

        It is kept idle whatever the count: dropped, it would still count against the budget
        until every view of it is gone (a caller's local variable, or a dead connection's
        objects awaiting the garbage collector), and producers waiting for room would wait
        for that. ``_map`` unmaps idle regions instead when it needs the room."""
        region = buf.obj if isinstance(buf, memoryview) else buf
        if not isinstance(region, mmap.mmap):
            return
        free = self._free.setdefault(len(region) - self._LEAD, [])
        if not any(r is region for r in free):
            free.append(region)
            self._changed()

    def recycle(self, views: Iterable[Buffer]) -> None:
        for view in views:
            self.put(view)

    def reclaim(self, held: Iterable[Buffer], queue: asyncio.Queue[Any]) -> None:
        """A connection has ended, and its tasks with it: the buffers its machine still held and
        the chunks left in its queue come back for the next connection."""
        self.recycle(held)
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, Chunk | ChunkReady | Packed | PackReady):
                self.put(item.payload)


@dataclass(frozen=True)
class Chunk:
    file_index: int
    offset: int
    payload: Buffer
    kind: FrameType = FrameType.DATA  # what the payload holds (see frames.Data)


@dataclass(frozen=True)
class EndOfFile:
    file_index: int
    path: str
    size: int
    digest: bytes


@dataclass(frozen=True)
class Packed:
    """Whole small files read into one chunk buffer (laid out as protocol/pack.py says)."""

    files: list[PackedFile]
    paths: list[str]
    payload: Buffer


@dataclass
class OldCopy:
    """The receiver's old copy of a file, as it described it, and the new file's fingerprint if
    the sender made it while the receiver was describing (``early``)."""

    matcher: Matcher = field(default_factory=Matcher)
    early: asyncio.Future[Fingerprint] | None = None


@dataclass(frozen=True)
class Listed:
    """A batch of the file list, as the receiver accepted it: what the reader reads next."""

    first: int
    sources: list[Source]
    accepted: Accepted
    bases: dict[int, OldCopy] = field(default_factory=dict)  # the receiver's old copies, described


SendItem = Chunk | EndOfFile | Packed | None  # None: every source has been read
RecvItem = ChunkReady | FileComplete | PackReady


@dataclass
class Reading:
    """What the reader needs besides the files: where chunks go, and how to make them."""

    chunk_bytes: int
    queue: asyncio.Queue[SendItem]
    stats: TransferStats
    pool: BufferPool
    compressor: Compressor | None = None  # send --compress

    async def put(self, item: SendItem) -> None:
        await self.queue.put(item)
        self.stats.observe_queue(self.queue.qsize())

    async def put_bytes(self, index: int, offset: int, piece: WritableBuffer | memoryview) -> int:
        """Queue a chunk of a file's bytes (compressed, if that pays; its buffer then goes back at
        once), waiting while the network is behind; the offset after it."""
        size = len(piece)
        chunk = Chunk(index, offset, piece)
        if self.compressor is not None:
            self.compressor.adapt(link_waits=self.queue.full(), cpu_waits=self.queue.empty())
            try:
                packed = await in_cpu(self.compressor.compress, piece)
            except BaseException:
                self.pool.put(piece)
                raise
            if packed is not None:
                self.pool.put(piece)
                chunk = Chunk(index, offset, packed, FrameType.ZDATA)
        try:
            await self.put(chunk)
        except BaseException:
            self.pool.put(chunk.payload)
            raise
        return offset + size


async def read_sources(batches: asyncio.Queue[Listed | None], reading: Reading, batch_read: Callable[[], None]) -> None:
    """Read each accepted batch's files once, in order: small whole files into packs, the
    others chunk by chunk (or, where the receiver has an old copy, as a delta against it);
    ``batch_read`` after each batch, so the lister may list another."""
    while (batch := await batches.get()) is not None:
        for item in _reading_order(batch, reading.chunk_bytes):
            if isinstance(item, list):
                await _queue_pack(item, reading)
                continue
            index, source, start = item
            old = batch.bases.get(index)
            if old is not None:
                await _read_delta(index, source, start, old, reading)
            else:
                await _read_file(index, source, start, reading)
        batch_read()
    await reading.put(None)


SmallFile = tuple[int, str, int]  # file index, path, size


def _reading_order(batch: Listed, chunk_bytes: int) -> Iterator[list[SmallFile] | tuple[int, Source, int]]:
    """A batch's files to send, in index order: packs of small whole files (as many as fit a chunk)
    and, one at a time, the others with the offset they resume from."""
    pack_max = min(PACK_FILE_MAX_BYTES, chunk_bytes - table_bytes(1))
    starts, skip = batch.accepted.start_offsets, set(batch.accepted.done)
    small: list[SmallFile] = []
    small_bytes = 0
    for index, source in enumerate(batch.sources, batch.first):
        entry, start = source.entry, starts.get(index, 0)
        if entry.kind != "file" or index in skip:
            continue
        packable = source.local is not None and entry.size is not None and entry.size <= pack_max and not start
        if small and (not packable or table_bytes(len(small) + 1) + small_bytes + (entry.size or 0) > chunk_bytes):
            yield small
            small, small_bytes = [], 0
        if packable:
            assert source.local is not None and entry.size is not None
            small.append((index, source.local, entry.size))
            small_bytes += entry.size
        else:
            yield index, source, start
    if small:
        yield small


async def _queue_pack(small: list[SmallFile], reading: Reading) -> None:
    """Read a pack's files (open, read, hash, close each) on the loop's thread, a slice at a time."""
    buf = await reading.pool.take(reading.chunk_bytes, SENDER_ROOM)
    try:
        files = await in_slices(read_pack(small, buf))
    except BaseException:
        reading.pool.put(buf)
        raise
    end = files[-1].start + files[-1].size
    await reading.put(Packed(files, [path for _, path, _ in small], memoryview(buf)[:end]))


async def _read_file(index: int, source: Source, offset: int, reading: Reading) -> None:
    """One file (or standard input) chunk by chunk; a chunk is queued only once hashed, so an
    ACK can recycle its buffer.

    For files, chunk N+1 is read (and hashed) while chunk N waits in the queue for
    the network; reading further ahead only held another chunk of memory. Standard
    input is not read ahead: a slow pipe must not hold back a chunk already read.
    """
    name = source.local or "standard input"
    digest = FileDigest()
    try:
        if source.local is None:
            offset = await _read_stdin(index, reading, digest)
        else:
            async with aiofiles.open(source.local, "rb") as f:
                if offset:
                    await digest.hash_prefix(f.fileno(), offset, name)
                offset = await _read_chunks(index, f.fileno(), offset, digest, reading)
    except OSError as exc:
        raise local_error(exc, name) from None
    await _end_file(index, source, offset, digest.digest(), reading)


async def _read_chunks(index: int, fd: int, offset: int, digest: FileDigest, reading: Reading) -> int:
    """A file's chunks from ``offset``, each read ahead while the one before waits in the queue
    (a chunk that is all hole, as its length); the offset reached, its end."""
    pool, chunk_bytes = reading.pool, reading.chunk_bytes
    holes = Holes.of(fd, chunk_bytes)
    buf: WritableBuffer | None = await pool.take(chunk_bytes, SENDER_ROOM)
    assert buf is not None
    ahead = holes.read_ahead(digest, buf, offset)
    try:
        while piece := await settle(ahead):
            if isinstance(piece, int):  # a chunk that is all hole: its length, and ``buf`` unused
                await reading.put(Chunk(index, offset, hole_payload(piece), FrameType.HOLE))
                offset += piece
            else:
                buf = None  # the chunk owns it now: queued, or given back if queueing is cancelled
                offset = await reading.put_bytes(index, offset, piece)
                buf = await pool.take(chunk_bytes, SENDER_ROOM)
            ahead = holes.read_ahead(digest, buf, offset)
    finally:
        try:
            await wait_out(ahead)  # the worker must be done with the fd and buf first
        finally:  # done, even if a second cancel came meanwhile (wait_out saw to it)
            if buf is not None:
                pool.put(buf)  # read to the end, or being read
    return offset


class Holes:
    """Where a sparse source has no data (``SEEK_DATA``): a chunk that is all hole is sent as its
    length (a HOLE chunk), neither read nor carried. A file with no holes is read as it is."""

    def __init__(self, fd: int, chunk_bytes: int, size: int, sparse: bool) -> None:
        self.fd = fd
        self.chunk_bytes = chunk_bytes
        self.size = size
        self.sparse = sparse

    @classmethod
    def of(cls, fd: int, chunk_bytes: int) -> Holes:
        st = os.fstat(fd)
        return cls(fd, chunk_bytes, st.st_size, st.st_blocks * 512 < st.st_size)

    def at(self, offset: int) -> int:
        """The bytes from ``offset`` that are hole, when the whole chunk there is (else 0)."""
        end = min(offset + self.chunk_bytes, self.size)
        if not self.sparse or offset >= end:
            return 0
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data from here to the end
                raise
            data = self.size
        return end - offset if data >= end else 0

    def read_ahead(self, digest: FileDigest, buf: WritableBuffer, offset: int) -> asyncio.Future[memoryview | int]:
        """The next chunk from ``offset``, read and hashed (a view of ``buf``); or, where the
        chunk is all hole, its zeros hashed and its length."""
        hole = self.at(offset)
        if hole:
            return on_cpu(digest.zeros_now, hole)
        return digest.read_into(self.fd, buf, offset)  # type: ignore[return-value]


async def _end_file(index: int, source: Source, size: int, digest: bytes, reading: Reading) -> None:
    declared = source.entry.size
    if declared is not None and size != declared:
        name = source.local or "standard input"
        raise LocalIOError(f"{name}: changed while being sent ({declared} bytes expected, {size} read)")
    await reading.put(EndOfFile(index, source.entry.path, size, digest))


async def _read_delta(index: int, source: Source, start: int, old: OldCopy, reading: Reading) -> None:
    """A file the receiver has an old copy of: cut and hashed in one read (delta.py), matched against
    the old copy; then what the old copy lacks is read again and sent, the rest named as COPY ranges."""
    assert source.local is not None
    try:
        new = await old.early if old.early is not None else None
        if new is None or new.start != start:  # a resume starts elsewhere
            new = await in_cpu(fingerprint, source.local, start)
        pieces = await in_cpu(match, new, old.matcher)
        async with aiofiles.open(source.local, "rb") as f:
            ranges: list[Piece] = []
            for piece in pieces:
                if piece.basis_offset is not None:
                    ranges.append(piece)
                    if len(ranges) == MAX_COPY_RANGES:
                        await _queue_copy(index, ranges, reading)
                    continue
                if ranges:
                    await _queue_copy(index, ranges, reading)
                await _send_literal(index, f.fileno(), piece, reading)
            if ranges:
                await _queue_copy(index, ranges, reading)
    except OSError as exc:
        raise local_error(exc, source.local) from None
    await _end_file(index, source, new.size, new.digest, reading)


async def _queue_copy(index: int, ranges: list[Piece], reading: Reading) -> None:
    payload = copy_payload([(p.basis_offset or 0, p.length) for p in ranges])
    await reading.put(Chunk(index, ranges[0].offset, payload, FrameType.COPY))
    ranges.clear()


async def _send_literal(index: int, fd: int, piece: Piece, reading: Reading) -> None:
    """Bytes the old copy lacks, read again (the first read hashed them) and sent chunk by chunk."""
    offset, end = piece.offset, piece.offset + piece.length
    while offset < end:
        buf = await reading.pool.take(reading.chunk_bytes, SENDER_ROOM)
        want = min(reading.chunk_bytes, end - offset)
        try:
            got = await in_worker(os.preadv, fd, [memoryview(buf)[:want]], offset)
        except BaseException:
            reading.pool.put(buf)
            raise
        if got != want:
            reading.pool.put(buf)
            raise LocalIOError(f"file {index} shrank while being sent")
        offset = await reading.put_bytes(index, offset, memoryview(buf)[:want])


async def _read_stdin(index: int, reading: Reading, digest: FileDigest) -> int:
    """Standard input, chunk by chunk, hashed piece by piece as it arrives (still in cache);
    the bytes read so far. Not read ahead: a slow pipe must not hold back a chunk already read."""
    stream = StdStream(sys.stdin.fileno())
    offset = 0
    while True:
        buf = await reading.pool.take(reading.chunk_bytes, SENDER_ROOM)
        got = await stream.fill(buf, digest.update_now)
        if not got:
            reading.pool.put(buf)
            return offset
        offset = await reading.put_bytes(index, offset, memoryview(buf)[:got])


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
            stats.bytes_done += await _write_chunk(item, sink, await writer.digest_for(item.file_index))
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
