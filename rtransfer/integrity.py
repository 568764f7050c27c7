"""Whole-file BLAKE3 digests, computed while streaming.

Per-chunk checks live in the frame codec (xxh3, or the GCM tag of a sealed
chunk). Large BLAKE3 updates run in a worker thread: blake3 releases the GIL,
so big chunks hash beside socket and disk work instead of stalling the event
loop; small ones hash inline, where a thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import os

import blake3
import xxhash

from rtransfer.errors import LocalIOError
from rtransfer.protocol.model import CONTENT_DIGEST_BYTES, Buffer, WritableBuffer
from rtransfer.workers import in_cpu, on_cpu

# Larger updates are hashed in a worker thread so they do not stall the event loop; below
# this, the thread hop costs more than the stall it saves (bench/loop_stall.py measures both).
HASH_IN_THREAD_BYTES = 2 * 1024 * 1024
# The sender reads a chunk in steps of this size and hashes each step at once, while it is
# still in the core's L2 cache, instead of reading the whole chunk and then hashing it from memory.
READ_STEP_BYTES = 1024 * 1024
_ZEROS = memoryview(bytes(READ_STEP_BYTES))


class FileDigest:
    """BLAKE3 of a file fed strictly in order; ``hexdigest`` matches ``b3sum``. ``fed`` counts the
    bytes taken in: a sender's digest may have been fed part of its file ahead of the reader
    (sending/head_start.py), which then hashes only what lies past it (the ``at`` arguments)."""

    def __init__(self, in_thread: bool = True) -> None:
        self._hasher = blake3.blake3()
        self._in_thread = in_thread
        self.fed = 0

    async def update(self, data: Buffer) -> None:
        if self._in_thread and len(data) >= HASH_IN_THREAD_BYTES:
            await in_cpu(self.update_now, data)
        else:
            self.update_now(data)

    def update_now(self, data: Buffer) -> None:
        """Hash on the calling thread: for pieces small enough that a thread hop costs more."""
        self._hasher.update(data)
        self.fed += len(data)

    async def update_zeros(self, n: int) -> None:
        """``n`` zeros (a hole), hashed as ``update`` would hash them."""
        if self._in_thread and n >= HASH_IN_THREAD_BYTES:
            await in_cpu(self.zeros_now, n)
        else:
            self.zeros_now(n)

    def zeros_now(self, n: int, at: int | None = None) -> int:
        """``update_zeros`` on the calling thread (``at``: as in ``read_now``); ``n`` again (for a
        read-ahead's future)."""
        start = self.fed if at is None else at
        for step in range(0, n, len(_ZEROS)):
            self._take(_ZEROS[: min(len(_ZEROS), n - step)], start + step)
        return n

    def read_into(self, fd: int, buf: WritableBuffer, offset: int) -> asyncio.Future[memoryview]:
        """Read a file's next chunk at ``offset`` and hash it, in one worker-thread call.

        The sender's event loop then only seals and sends, and the hash reads bytes
        still in the cache of the core that just read them.
        """
        return on_cpu(self.read_now, fd, buf, offset, offset)

    def read_now(self, fd: int, buf: WritableBuffer, offset: int, at: int | None = None) -> memoryview:
        """``buf`` filled from ``offset`` of ``fd`` (or to its end), and hashed. ``at``: where these
        bytes stand in the file being hashed, for a digest that may have been fed them already;
        by default they follow what it was fed (``offset`` may be in another file: a basis)."""
        view = memoryview(buf)
        got = 0
        while got < len(buf) and (n := os.preadv(fd, [view[got : got + READ_STEP_BYTES]], offset + got)):
            self._take(view[got : got + n], self.fed if at is None else at + got)
            got += n
        return view[:got]

    def _take(self, data: memoryview, at: int) -> None:
        """Hash what of ``data``, the file's bytes from ``at``, lies past ``fed``."""
        assert at <= self.fed, f"a gap in a digest's input: bytes from {at} after {self.fed}"
        new = at + len(data) - self.fed
        if new > 0:
            self._hasher.update(data[len(data) - new :])
            self.fed += new

    async def hash_prefix(self, fd: int, size: int, name: object) -> None:
        """Feed the first ``size`` bytes of a file (those not fed yet): on resume the whole-file digest
        must still cover the part sent (or received) before. One worker call, through one small buffer:
        reading a large prefix in fresh chunk-sized objects grew each side's memory by tens of MiB."""
        await in_cpu(self.hash_prefix_now, fd, size, name)

    def hash_prefix_now(self, fd: int, size: int, name: object) -> None:
        """``hash_prefix`` on the calling thread (one already in a worker)."""
        step = memoryview(bytearray(READ_STEP_BYTES))
        while self.fed < size:
            if not self.read_now(fd, step[: min(READ_STEP_BYTES, size - self.fed)], self.fed):
                raise LocalIOError(f"{name}: shorter than the part already transferred")

    def digest(self) -> bytes:
        return self._hasher.digest()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


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
