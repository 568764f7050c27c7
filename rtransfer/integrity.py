"""Whole-file BLAKE3 digests, computed while streaming.

Per-chunk checks live in the frame codec (xxh3, or the GCM tag of a sealed
chunk). Large BLAKE3 updates run in a worker thread: blake3 releases the GIL,
so big chunks hash beside socket and disk work instead of stalling the event
loop; small ones hash inline, where a thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import blake3
import xxhash

from rtransfer.errors import LocalIOError
from rtransfer.protocol.model import CONTENT_DIGEST_BYTES, Buffer, WritableBuffer
from rtransfer.protocol.pack import PackedFile, table_bytes, write_table
from rtransfer.workers import in_cpu, on_cpu

# Larger updates are hashed in a worker thread so they do not stall the event loop; below
# this, the thread hop costs more than the stall it saves (bench/loop_stall.py measures both).
HASH_IN_THREAD_BYTES = 2 * 1024 * 1024
# The sender reads a chunk in steps of this size and hashes each step at once, while it is
# still in the core's L2 cache, instead of reading the whole chunk and then hashing it from memory.
READ_STEP_BYTES = 1024 * 1024
_ZEROS = bytes(READ_STEP_BYTES)


class FileDigest:
    """BLAKE3 of a file fed strictly in order; ``hexdigest`` matches ``b3sum``."""

    def __init__(self, in_thread: bool = True) -> None:
        self._hasher = blake3.blake3()
        self._in_thread = in_thread

    async def update(self, data: Buffer) -> None:
        if self._in_thread and len(data) >= HASH_IN_THREAD_BYTES:
            await in_cpu(self._hasher.update, data)
        else:
            self._hasher.update(data)

    def update_now(self, data: Buffer) -> None:
        """Hash on the calling thread: for pieces small enough that a thread hop costs more."""
        self._hasher.update(data)

    async def update_zeros(self, n: int) -> None:
        """``n`` zeros (a hole), hashed as ``update`` would hash them."""
        if self._in_thread and n >= HASH_IN_THREAD_BYTES:
            await in_cpu(self.zeros_now, n)
        else:
            self.zeros_now(n)

    def zeros_now(self, n: int) -> int:
        """``update_zeros`` on the calling thread; ``n`` again (for a read-ahead's future)."""
        for step in range(0, n, len(_ZEROS)):
            self._hasher.update(_ZEROS[: min(len(_ZEROS), n - step)])
        return n

    def read_into(self, fd: int, buf: WritableBuffer, offset: int) -> asyncio.Future[memoryview]:
        """Read a file's next chunk at ``offset`` and hash it, in one worker-thread call.

        The sender's event loop then only seals and sends, and the hash reads bytes
        still in the cache of the core that just read them.
        """
        return on_cpu(self.read_now, fd, buf, offset)

    def read_now(self, fd: int, buf: WritableBuffer, offset: int) -> memoryview:
        """``read_into`` on the calling thread: ``buf`` filled from ``offset`` (or to the file's end), hashed."""
        view = memoryview(buf)
        got = 0
        while got < len(buf) and (n := os.preadv(fd, [view[got : got + READ_STEP_BYTES]], offset + got)):
            self._hasher.update(view[got : got + n])
            got += n
        return view[:got]

    async def hash_prefix(self, fd: int, size: int, name: object) -> None:
        """Feed the first ``size`` bytes of a file: on resume the whole-file digest must still
        cover the part sent (or received) before. One worker call, through one small buffer:
        reading a large prefix in fresh chunk-sized objects grew each side's memory by tens of MiB."""
        await in_cpu(self.hash_prefix_now, fd, size, name)

    def hash_prefix_now(self, fd: int, size: int, name: object) -> None:
        """``hash_prefix`` on the calling thread (one already in a worker)."""
        step = memoryview(bytearray(READ_STEP_BYTES))
        got = 0
        while got < size:
            n = len(self.read_now(fd, step[: min(READ_STEP_BYTES, size - got)], got))
            if not n:
                raise LocalIOError(f"{name}: shorter than the part already transferred")
            got += n

    def digest(self) -> bytes:
        return self._hasher.digest()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def read_pack(small: list[tuple[int, str, int]], buf: WritableBuffer) -> Iterator[PackedFile]:
    """Read whole small files ``(index, path, size)`` into ``buf`` as a pack (protocol/pack.py),
    each hashed as soon as it is read, one file a step (see ``workers.in_slices``); the pack's
    table is written after the last.

    A file that is no longer the size it was listed with fails the transfer, as a large
    one does: what arrives is always a whole version of the file."""
    view = memoryview(buf)
    start = table_bytes(len(small))
    files: list[PackedFile] = []
    probe = bytearray(1)
    with _Parents() as parents:
        for index, path, size in small:
            fd = parents.open(path)
            try:
                got = 0
                while True:  # a short read from a regular file is its end: one call per file, as a rule
                    want = size - got + 1
                    n = os.readv(fd, [view[start + got : start + size], probe])
                    got += n
                    if n == 0 or n < want or got > size:
                        break
            finally:
                os.close(fd)
            if got != size:
                raise LocalIOError(f"{path}: changed while being sent ({size} bytes expected, {got} or more read)")
            packed = PackedFile(index, size, blake3.blake3(view[start : start + size]).digest(), start)
            files.append(packed)
            yield packed
            start += size
    write_table(view, files)


_PARENT_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


class _Parents:
    """The directory of the file opened last, kept open for the next: the files of a directory
    are listed together, so each open looks up one name, not every directory of its path."""

    def __init__(self) -> None:
        self._dir, self._fd = "", -1

    def open(self, path: str) -> int:
        parent, _, name = path.rpartition("/")
        if parent != self._dir or self._fd < 0:
            self.close()
            self._fd = os.open(parent or ("/" if path.startswith("/") else "."), _PARENT_FLAGS)
            self._dir = parent
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def content_digest(source: os.PathLike[str] | str | int) -> str:
    """--checksum: a file's BLAKE3 in hex, cut to CONTENT_DIGEST_BYTES (it decides a skip, nothing more).
    Both sides compute it the same way, of a path or an open descriptor (kept open); for a worker thread."""
    hasher = blake3.blake3()
    with open(source, "rb", buffering=0, closefd=not isinstance(source, int)) as f:
        while data := f.read(READ_STEP_BYTES):
            hasher.update(data)
    return hasher.hexdigest(length=CONTENT_DIGEST_BYTES)


IDENTITY_HEAD_BYTES = 64 * 1024


def source_identity(path: os.PathLike[str] | str, st: os.stat_result) -> str:
    """The version of a file's data: size, mtime and a digest of its head.

    A resume continues only a partial file whose identity matches, so two
    versions of a file are never spliced together (the digest catches a change
    that kept size and mtime).
    """
    with open(path, "rb") as f:
        head = f.read(IDENTITY_HEAD_BYTES)
    return f"{st.st_size}:{st.st_mtime_ns}:{xxhash.xxh3_64_hexdigest(head)}"
