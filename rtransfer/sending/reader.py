"""The sender's end of the data path: each accepted batch's files read once, in order, into chunks
(small whole files into packs, a sparse file's holes as their lengths, a changed file as a delta
against the receiver's old copy), queued for the network in a bounded queue.

files -> ``read_sources`` -> queue -> network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator

from msgspec import Struct, field

from rtransfer.buffers import SENDER_ROOM, BufferPool
from rtransfer.compress import Compressor
from rtransfer.delta import Fingerprint, Matcher, Piece, fingerprint, match
from rtransfer.errors import LocalIOError
from rtransfer.integrity import READ_STEP_BYTES, FileDigest
from rtransfer.names import local_error
from rtransfer.protocol.constants import MAX_COPY_RANGES, FrameType
from rtransfer.protocol.events import Accepted
from rtransfer.protocol.messages import copy_payload, hole_payload
from rtransfer.protocol.model import Buffer, WritableBuffer
from rtransfer.protocol.pack import PackedFile, table_bytes
from rtransfer.sending.head_start import HeadStart
from rtransfer.sending.packs import read_pack
from rtransfer.sending.walk import PACK_FILE_MAX_BYTES, Source, open_listed
from rtransfer.stats import TransferStats
from rtransfer.stdio import StdStream
from rtransfer.workers import in_cpu, in_slices, in_worker, on_cpu, settle, wait_out


class Chunk(Struct, frozen=True):
    file_index: int
    offset: int
    payload: Buffer
    kind: FrameType = FrameType.DATA  # what the payload holds (see messages.Data)


class EndOfFile(Struct, frozen=True):
    file_index: int
    path: str
    size: int
    digest: bytes


class Packed(Struct, frozen=True):
    """Whole small files read into one chunk buffer (laid out as protocol/pack.py says)."""

    files: list[PackedFile]
    paths: list[str]
    payload: Buffer


class OldCopy(Struct):
    """The receiver's old copy of a file, as it described it, and the new file's fingerprint if
    the sender made it while the receiver was describing (``early``)."""

    matcher: Matcher = field(default_factory=Matcher)
    early: asyncio.Future[Fingerprint] | None = None


class AcceptedBatch(Struct, frozen=True):
    """A batch of the file list, as the receiver accepted it: what the reader reads next."""

    first: int
    sources: list[Source]
    accepted: Accepted
    bases: dict[int, OldCopy] = field(default_factory=dict)  # the receiver's old copies, described


SendItem = Chunk | EndOfFile | Packed | None  # None: every source has been read


class Reading(Struct):
    """What the reader needs besides the files: where chunks go, and how to make them."""

    chunk_bytes: int
    queue: asyncio.Queue[SendItem]
    stats: TransferStats
    pool: BufferPool
    compressor: Compressor | None = None  # send --compress
    head_start: HeadStart | None = None  # the files named on the command line, hashed while the peer was awaited

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


async def read_sources(
    batches: asyncio.Queue[AcceptedBatch | None], reading: Reading, batch_read: Callable[[], None]
) -> None:
    """Read each accepted batch's files once, in order: small whole files into packs, the
    others chunk by chunk (or, where the receiver has an old copy, as a delta against it);
    ``batch_read`` after each batch, so the lister may list another."""
    while (batch := await batches.get()) is not None:
        if reading.head_start is not None:
            reading.head_start.stop()  # data moves from here on
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


Pack = list[tuple[int, Source]]  # small whole files, with their indices


def _reading_order(batch: AcceptedBatch, chunk_bytes: int) -> Iterator[Pack | tuple[int, Source, int]]:
    """A batch's files to send, in index order: packs of small whole files (as many as fit a chunk)
    and, one at a time, the others with the offset they resume from."""
    pack_max = min(PACK_FILE_MAX_BYTES, chunk_bytes - table_bytes(1))
    starts, skip = batch.accepted.start_offsets, set(batch.accepted.done)
    small: Pack = []
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
            assert entry.size is not None
            small.append((index, source))
            small_bytes += entry.size
        else:
            yield index, source, start
    if small:
        yield small


async def _queue_pack(small: Pack, reading: Reading) -> None:
    """Read a pack's files (open, read, hash, close each) on the loop's thread, a slice at a time."""
    buf = await reading.pool.take(reading.chunk_bytes, SENDER_ROOM)
    try:
        try:
            files = await in_slices(read_pack(small, buf))
        except BlockingIOError:  # a file under a lease: the pack again, where waiting for it holds up nothing else
            files = await in_worker(lambda: list(read_pack(small, buf, wait=True)))
    except BaseException:
        reading.pool.put(buf)
        raise
    end = files[-1].start + files[-1].size
    await reading.put(Packed(files, [source.entry.path for _, source in small], memoryview(buf)[:end]))


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
            async with _opened(source) as fd:
                on_steps = not (offset % READ_STEP_BYTES or reading.chunk_bytes % READ_STEP_BYTES)  # the head start's
                if reading.head_start is not None and on_steps:
                    digest = await reading.head_start.claim(source.local, fd) or digest
                if offset:
                    await digest.hash_prefix(fd, offset, name)
                offset = await _read_chunks(index, fd, offset, digest, reading)
                digest.ended(offset)
    except OSError as exc:
        raise local_error(exc, name) from None
    await _end_file(index, source, offset, digest.digest(), reading)


def fingerprint_listed(source: Source, start: int = 0) -> Fingerprint:
    """``delta.fingerprint`` of the file the walk listed (``open_listed``). For a worker thread."""
    fd = open_listed(source)
    try:
        return fingerprint(fd, source.local or "", start)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _opened(source: Source) -> AsyncIterator[int]:
    """The file the walk listed (``open_listed``), opened on a worker thread: an open may wait
    on a slow file system."""
    opening = asyncio.get_running_loop().run_in_executor(None, open_listed, source)
    try:
        fd = await asyncio.shield(opening)
    except asyncio.CancelledError:  # the open goes on in its thread: what it opens is closed there
        opening.add_done_callback(_close_opened)
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _close_opened(opening: asyncio.Future[int]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())


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
            return on_cpu(digest.zeros_now, hole, offset)
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
            new = await in_cpu(fingerprint_listed, source, start)
        pieces = await in_cpu(match, new, old.matcher)
        async with _opened(source) as fd:
            ranges: list[Piece] = []
            for piece in pieces:
                if piece.basis_offset is not None:
                    ranges.append(piece)
                    if len(ranges) == MAX_COPY_RANGES:
                        await _queue_copy(index, ranges, reading)
                    continue
                if ranges:
                    await _queue_copy(index, ranges, reading)
                await _send_literal(index, fd, piece, reading)
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
