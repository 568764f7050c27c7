"""Writing a large incoming file around the page cache (O_DIRECT), with buffered writes as the fallback.

Why: a buffered write copies every byte into freshly allocated page-cache pages,
and that copy was the receiver's largest cost (and on a VM whose free memory goes
back to the host, the most variable one).
A direct write hands the device our own, already-touched buffer instead. It also
keeps a multi-GB transfer from evicting everything else from the cache.

Direct I/O needs the buffer address, the file offset and the length aligned to
the device's block size. The buffer pool lays chunks out page-aligned, so they
are written as they are; a chunk in any other buffer is first copied into a
page-aligned one (the kernel refuses it with EINVAL, once). Offsets stay aligned
as long as every chunk is a whole number of blocks, and the
unaligned tail of a file (or any filesystem that refuses O_DIRECT) goes through
the page cache as usual.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Any

import aiofiles

from rtransfer.errors import LocalIOError
from rtransfer.names import shown
from rtransfer.protocol.model import Buffer, Entry
from rtransfer.receiving.dest import Spot, create_new, open_existing
from rtransfer.receiving.specials import DestPolicy
from rtransfer.workers import in_worker, settle

ALIGN = 4096
# Small files gain nothing from bypassing the cache and would wait on the device per write.
DIRECT_MIN_BYTES = 16 * 1024 * 1024
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _open_partial(spot: Spot, offset: int, inode: tuple[int, int] | None) -> int:
    """The partial file: made afresh (``offset`` 0, whatever leftover was there having been the
    receiver's own), or the one the plan vouched for (``inode``), checked again once open."""
    if not offset:
        return create_new(spot.part, spot.dir_fd)
    fd = open_existing(spot.part, spot.dir_fd, os.O_RDWR)
    if fd is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == inode and st.st_nlink == 1:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            return fd
        os.close(fd)
    raise LocalIOError(f"{shown(spot.part)}: changed since the transfer planned to resume it")


def _try_direct(fd: int) -> bool:
    """Turn on direct I/O for ``fd``, where its file system has it (EINVAL where it has not)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


_ZERO_BLOCK = bytes(ALIGN)


def zero_runs(view: memoryview, pos: int) -> list[tuple[int, int]]:
    """The runs of whole all-zero blocks of the file in ``view``, which starts at file offset
    ``pos``: (start, end) within ``view``. A block is a candidate only if its first eight bytes
    are zero, which one strided copy tells for every block of a chunk at C speed (a chunk of
    data has none, and costs about 30 µs per 8 MiB); only a candidate is compared whole."""
    first = -pos % ALIGN
    count = (len(view) - first) // ALIGN
    if count <= 0:
        return []
    heads = view[first : first + count * ALIGN].cast("Q")[:: ALIGN // 8].tolist()
    if 0 not in heads:
        return []
    runs: list[tuple[int, int]] = []
    for k, head in enumerate(heads):
        start = first + k * ALIGN
        if head or bytes(view[start : start + ALIGN]) != _ZERO_BLOCK:
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + ALIGN)
        else:
            runs.append((start, start + ALIGN))
    return runs


def direct_io_suits(file_bytes: int, chunk_bytes: int) -> bool:
    return bool(_O_DIRECT) and file_bytes >= DIRECT_MIN_BYTES and chunk_bytes % ALIGN == 0


class PartialWriter:
    """Sequential writes to one partial file, starting at ``offset``."""

    def __init__(self, handle: Any, direct: bool, chunk_bytes: int, offset: int = 0) -> None:
        self._handle = handle
        self._aligned = memoryview(mmap.mmap(-1, chunk_bytes)) if direct else None
        self.zero_copy = direct  # until a chunk's own buffer turns out to be misaligned
        self._pos = offset  # where the next write goes

    @classmethod
    async def open(
        cls, spot: Spot, offset: int, direct: bool, chunk_bytes: int, inode: tuple[int, int] | None = None
    ) -> PartialWriter:
        """Sequential writes from ``offset`` to ``spot``'s partial file (see ``_open_partial``)."""
        fd = await in_worker(_open_partial, spot, offset, inode)
        try:
            direct = direct and _try_direct(fd)
            handle: Any = await settle(aiofiles.open(fd, "wb", buffering=0 if direct else -1))
        except BaseException:
            os.close(fd)
            raise
        writer = cls(handle, direct, chunk_bytes, offset)
        if offset:
            await settle(writer._handle.truncate(offset))
            await settle(writer._handle.seek(offset))
        return writer

    @property
    def inode(self) -> tuple[int, int]:
        """The partial file's device and inode, which its journal names."""
        st = os.fstat(self.fileno())
        return st.st_dev, st.st_ino

    async def settle(self, entry: Entry, policy: DestPolicy) -> None:
        """The file is whole and verified: its owner, mode and times, set through its descriptor."""
        await self.flush()
        fd = self.fileno()
        policy.own(entry, fd)
        os.fchmod(fd, policy.mode(entry.mode))
        if entry.mtime_ns is not None:
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    @property
    def direct(self) -> bool:
        return self._aligned is not None

    def fileno(self) -> int:
        return int(self._handle.fileno())

    async def write(self, data: Buffer) -> None:
        """Write ``data`` next; its all-zero blocks become holes (as rsync -S makes them)."""
        view = memoryview(data).cast("B")
        at = 0
        for start, end in zero_runs(view, self._pos) if len(view) >= ALIGN else ():
            if start > at:
                await self._write_data(view[at:start])
            await self.skip(end - start)
            at = end
        if at < len(view):
            await self._write_data(view[at:] if at else view)

    async def _write_data(self, data: memoryview) -> None:
        n = len(data)
        if self._aligned is not None:
            if n % ALIGN == 0 and n <= len(self._aligned):
                if self.zero_copy:
                    if await self._write_direct(data):
                        return
                    self.zero_copy = False  # this buffer is not aligned; copy from now on
                self._aligned[:n] = data
                if await self._write_direct(self._aligned[:n]):
                    return
                # even an aligned buffer was refused: the device wants a coarser alignment
            self._leave_direct()
        await self._write_all(data)

    async def _write_direct(self, data: Buffer) -> bool:
        """False if the kernel refused the alignment (EINVAL); any other error is raised."""
        try:
            await self._write_all(data)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
        return True

    async def _write_all(self, data: Buffer) -> None:
        """An unbuffered write may be short (e.g. just before the disk fills): finish it or fail."""
        view = memoryview(data).cast("B")
        while view:
            written = await settle(self._handle.write(view))
            view = view[written:]
            self._pos += written

    async def skip(self, n: int) -> None:
        """``n`` zeros become a hole: the file is extended past them, unwritten, which a file
        system with holes stores as nothing at all."""
        await settle(self._handle.flush())
        await settle(self._handle.seek(n, os.SEEK_CUR))
        await settle(self._handle.truncate())
        self._pos += n

    def _leave_direct(self) -> None:
        """From here on (the file's tail), write through the page cache."""
        fd = self.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self._aligned = None

    async def flush(self) -> None:
        await settle(self._handle.flush())

    async def close(self) -> None:
        self._aligned = None
        await settle(self._handle.close())
