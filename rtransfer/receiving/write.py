"""A large file on its way: written under its partial name, a prefix of its source with a journal
beside it (so a later connection, or a later run, resumes it instead of starting over), renamed
into place once its digest matched."""

from __future__ import annotations

import asyncio
import contextlib
import os

from rtransfer.errors import LocalIOError
from rtransfer.integrity import FileDigest
from rtransfer.names import local_error, shown
from rtransfer.protocol.model import Buffer
from rtransfer.receiving.dest import Spot, open_existing, remove
from rtransfer.receiving.direct_io import PartialWriter, direct_io_suits
from rtransfer.receiving.journal import (
    FSYNC_EVERY_BYTES,
    JournalRecord,
    boot_id,
    journal_interval_bytes,
    remove_journal,
    write_journal,
)
from rtransfer.receiving.landing import Landing
from rtransfer.workers import in_cpu, in_worker

# A copied range of the old copy is read, hashed and written in one worker call per this many bytes.
COPY_STEP_BYTES = 16 * 1024 * 1024
_COPY_BUFFER_BYTES = 1024 * 1024  # through a buffer this size, so each piece is hashed while in cache


def _copy_hashed(src: int, dst: int, offset: int, length: int, digest: FileDigest) -> None:
    """``length`` bytes of ``src`` from ``offset``, hashed and appended to ``dst`` (for a worker thread)."""
    buf = memoryview(bytearray(min(length, _COPY_BUFFER_BYTES)))
    done = 0
    while done < length:
        view = digest.read_now(src, buf[: min(len(buf), length - done)], offset + done)
        if not view:
            raise LocalIOError("the old copy shrank during the transfer")
        done += len(view)
        while view:
            view = view[os.write(dst, view) :]


def _inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class PartialFiles:
    """The large files being written, each opened from its directory's descriptor when its first
    bytes come; what is kept of each lasts until it is in place."""

    def __init__(self, land: Landing) -> None:
        self.land = land
        self._spots: dict[int, Spot] = {}  # directory and name
        self._bases: dict[int, int] = {}  # delta: descriptor of the old copy, once a COPY needs it
        self._open: dict[int, PartialWriter] = {}
        self._written: dict[int, int] = {}
        self._journaled: dict[int, int] = {}
        self._durable: dict[int, int] = {}
        self._syncing: dict[int, asyncio.Task[None]] = {}

    def _spot(self, index: int) -> Spot:
        spot = self._spots.get(index)
        if spot is None:
            parent, name, _ = self.land.place_file(self.land.files[index].path)
            spot = self._spots[index] = Spot(self.land.open_dirs.fd(parent), name)
        return spot

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        """A resumed file's digest still covers the whole file: hash what is already here, from the
        partial file the plan vouched for."""
        spot, inode = self._spot(index), self.land.resume[index][2]
        try:
            fd = open_existing(spot.part, spot.dir_fd)
            if fd is None or _inode(fd) != inode:
                if fd is not None:
                    os.close(fd)
                raise LocalIOError(f"{shown(spot.part)}: changed since the transfer planned to resume it")
            try:
                await digest.hash_prefix(fd, size, spot.part)
            finally:
                os.close(fd)
        except OSError as exc:
            raise local_error(exc, self.land.root / self.land.disk_path(self.land.files[index].path)) from None

    async def _open_at(self, index: int, offset: int) -> PartialWriter:
        land = self.land
        # A delta's writes follow the content, not the chunk size that direct I/O aligns to.
        fixed = index not in land.described
        direct = fixed and land.policy.direct_io and direct_io_suits(land.files[index].size or 0, land.chunk_bytes)
        _, durable, inode = land.resume.get(index, (0, 0, None))
        handle = await PartialWriter.open(
            self._spot(index), offset, direct, land.chunk_bytes, inode if offset else None
        )
        self._open[index] = handle
        self._written[index] = self._journaled[index] = offset
        self._durable[index] = durable
        return handle

    async def _handle(self, index: int, offset: int) -> PartialWriter:
        return self._open.get(index) or await self._open_at(index, offset)

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            handle = await self._handle(index, offset)
            await handle.write(data)
            await self._advance(index, len(data))
        except OSError as exc:
            raise local_error(exc, self.land.shown(index)) from None

    async def skip(self, index: int, offset: int, n: int) -> None:
        """``n`` zeros of a sparse source, as a hole."""
        try:
            handle = await self._handle(index, offset)
            await handle.skip(n)
            await self._advance(index, n)
        except OSError as exc:
            raise local_error(exc, self.land.shown(index)) from None

    async def _advance(self, index: int, n: int) -> None:
        """``n`` more bytes of the file are written: journal them when due."""
        self._written[index] += n
        if self._written[index] - self._journaled[index] >= journal_interval_bytes(self.land.files[index].size or 0):
            await self._journal(index)

    async def copy_from_basis(self, index: int, offset: int, ranges: list[tuple[int, int]], digest: FileDigest) -> int:
        """Take ``ranges`` (offset, length) of the old copy, in order, into the new file from ``offset``,
        hashing them on the way; the bytes taken. Each step is one worker call that reads, hashes
        and writes, while the bytes are in cache. An old copy changed since it was described shows
        in the whole-file digest."""
        taken = 0
        try:
            handle = await self._handle(index, offset)
            await handle.flush()  # what the writer buffered goes first: the steps write to its descriptor
            src = self._bases.get(index)
            if src is None:
                spot = self._spot(index)
                src = self._bases[index] = open_existing(spot.name, spot.dir_fd) or -1
                if src < 0:
                    raise LocalIOError("the old copy is gone")
            for start, length in ranges:
                for step in range(0, length, COPY_STEP_BYTES):
                    want = min(COPY_STEP_BYTES, length - step)
                    await in_cpu(_copy_hashed, src, handle.fileno(), start + step, want, digest)
                    taken += want
                    await self._advance(index, want)
        except OSError as exc:
            raise local_error(exc, self.land.shown(index)) from None
        return taken

    def _close_basis(self, index: int) -> None:
        self.land.described.discard(index)
        fd = self._bases.pop(index, None)
        if fd is not None:
            os.close(fd)

    async def _journal(self, index: int, sync: bool = True) -> None:
        identity = self.land.files[index].identity
        if identity is None:
            return  # a stream cannot be resumed: its source cannot be read again
        handle = self._open[index]
        await handle.flush()
        written = self._written[index]
        if sync:
            self._sync_if_due(index, handle, written)
        device, inode = handle.inode
        chunk_bytes = self.land.chunk_bytes
        record = JournalRecord(identity, chunk_bytes, written, self._durable[index], boot_id(), device, inode)
        spot = self._spot(index)
        await in_worker(write_journal, spot.dir_fd, spot.name, record)
        self._journaled[index] = written

    def _sync_if_due(self, index: int, handle: PartialWriter, written: int) -> None:
        """Start an fdatasync every FSYNC_EVERY_BYTES in a worker, one at a time per file; writing goes on
        meanwhile. A sync that failed raises its error here, at the next journal."""
        task = self._syncing.get(index)
        if task is not None:
            if not task.done():
                return
            del self._syncing[index]
            task.result()
        if written - self._durable[index] >= FSYNC_EVERY_BYTES:
            self._syncing[index] = asyncio.create_task(self._sync(index, handle.fileno(), written))

    async def _sync(self, index: int, fd: int, upto: int) -> None:
        await in_worker(os.fdatasync, fd)
        self._durable[index] = upto

    async def _settle_sync(self, index: int) -> None:
        """Wait for the file's sync in flight, if any: its descriptor must stay open until it is done."""
        task = self._syncing.pop(index, None)
        if task is not None:
            await task

    async def finish(self, index: int, ok: bool) -> None:
        """Close the partial file, its owner, mode and times set through its descriptor; rename it
        into place only if its digest matched."""
        land = self.land
        entry = land.files[index]
        self._close_basis(index)
        try:
            handle = self._open.pop(index, None) or await self._open_at(index, land.resume.get(index, (0, 0, None))[0])
            try:
                await self._settle_sync(index)
                if ok:
                    await handle.settle(entry, land.policy)
            finally:
                await handle.close()
            spot = self._spot(index)
            if entry.identity is not None:
                remove_journal(spot.dir_fd, spot.name)
            if ok:
                os.replace(spot.part, spot.name, src_dir_fd=spot.dir_fd, dst_dir_fd=spot.dir_fd)
            else:
                remove(spot.part, spot.dir_fd)
        except OSError as exc:
            raise local_error(exc, land.shown(index)) from None
        finally:
            self._forget(index)

    def _forget(self, index: int) -> None:
        del self.land.files[index]
        self.land.resume.pop(index, None)
        spot = self._spots.pop(index, None)
        if spot is not None:
            spot.close()
        for state in (self._written, self._journaled, self._durable):
            state.pop(index, None)

    async def suspend(self) -> None:
        """The connection failed: keep what can resume (journal it), drop what cannot. Nothing is
        ever left under a final name."""
        for index in list(self._bases):
            self._close_basis(index)
        for index, handle in list(self._open.items()):
            resumable = self.land.files[index].identity is not None
            with contextlib.suppress(OSError):
                await self._settle_sync(index)
            with contextlib.suppress(OSError):
                if resumable:
                    await self._journal(index, sync=False)
                await handle.close()
                if not resumable:
                    remove(self._spot(index).part, self._spot(index).dir_fd)
        self._open.clear()
        for spot in self._spots.values():
            spot.close()
        self._spots.clear()
