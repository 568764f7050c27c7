"""Whole-file BLAKE3 digests, computed while streaming.

Per-chunk checks live in the frame codec (xxh3, or the GCM tag of a sealed
chunk). Large BLAKE3 updates run in a worker thread: blake3 releases the GIL,
so big chunks hash beside socket and disk work instead of stalling the event
loop; small ones hash inline, where a thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import os
from typing import NamedTuple

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


class _Step(NamedTuple):
    """A step of a file hashed ahead: its length and xxh3, and the digest's state before it."""

    length: int
    check: int
    before: blake3.blake3


class FileDigest:
    """BLAKE3 of a file fed strictly in order; ``hexdigest`` matches ``b3sum``. ``fed`` counts the
    bytes taken in.

    A sender's digest may have been fed part of its file ahead of the reader (``hash_ahead``;
    sending/head_start.py). The reader's bytes below ``fed`` are then checked step by step against
    what was hashed (xxh3: ~8x cheaper than BLAKE3), and skipped; at the first step that differs
    (a write that moved no timestamp, through a shared mapping), the digest goes back to that
    step's start and takes the reader's bytes from there. Either way it is the digest of the bytes
    sent. The ``at`` arguments say where bytes stand in the file.
    """

    def __init__(self, in_thread: bool = True) -> None:
        self._hasher = blake3.blake3()
        self._in_thread = in_thread
        self.fed = 0
        self._ahead: list[_Step] = []

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
        """``update_zeros`` on the calling thread; ``n`` again (for a read-ahead's future)."""
        start = self.fed if at is None else at
        done = 0
        while done < n:
            piece = _ZEROS[: min(n - done, READ_STEP_BYTES - (start + done) % READ_STEP_BYTES)]
            self._take(piece, start + done)
            done += len(piece)
        return n

    def read_into(self, fd: int, buf: WritableBuffer, offset: int) -> asyncio.Future[memoryview]:
        """Read a file's next chunk at ``offset`` and hash it, in one worker-thread call.

        The sender's event loop then only seals and sends, and the hash reads bytes
        still in the cache of the core that just read them.
        """
        return on_cpu(self.read_now, fd, buf, offset, offset)

    def read_now(self, fd: int, buf: WritableBuffer, offset: int, at: int | None = None) -> memoryview:
        """``buf`` filled from ``offset`` of ``fd`` (or to its end), and hashed, a step at a time.
        ``at``: where these bytes stand in the file hashed; by default they follow what the digest
        was fed (``offset`` may then be in another file: a basis)."""
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            start = self.fed if at is None else at + got
            want = min(len(buf) - got, READ_STEP_BYTES - start % READ_STEP_BYTES)
            n = os.preadv(fd, [view[got : got + want]], offset + got)
            if not n:
                break
            self._take(view[got : got + n], start)
            got += n
        return view[:got]

    def hash_ahead(self, fd: int, step: memoryview) -> int:
        """The file's next step (``step`` long at most) read, remembered and hashed, for a reader
        to come (see the class); its length, 0 at the end."""
        before = self._hasher.copy()
        data = self.read_now(fd, step, self.fed)
        if data:
            self._ahead.append(_Step(len(data), xxhash.xxh3_64_intdigest(data), before))
        return len(data)

    def ended(self, size: int) -> None:
        """The file ended at ``size``: steps hashed ahead past it (it was cut since) were never
        sent, and are dropped. (A step it ends inside has gone back already: a shorter read.)"""
        if size < self.fed:
            self._back_to(size)

    def _take(self, data: memoryview, at: int) -> None:
        """``data``, the file's bytes from ``at`` (within one step), into the digest."""
        if at < self.fed:
            step = self._step_at(at)
            if len(data) == step.length and xxhash.xxh3_64_intdigest(data) == step.check:
                return
            self._back_to(at)
        assert at == self.fed, f"a gap in a digest's input: bytes from {at} after {self.fed}"
        self._hasher.update(data)
        self.fed += len(data)

    def _step_at(self, at: int) -> _Step:
        index = at // READ_STEP_BYTES
        assert at % READ_STEP_BYTES == 0 and index < len(self._ahead), f"bytes from {at}: not a step hashed ahead"
        return self._ahead[index]

    def _back_to(self, at: int) -> None:
        """The digest as it was before the step hashed ahead at ``at``; it hashes from there as bytes come."""
        self._hasher, self.fed, self._ahead = self._step_at(at).before, at, []

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


def source_identity(source: os.PathLike[str] | str | int, size: int, mtime_ns: int) -> str:
    """The version of a file's data: size, mtime and a digest of its head (of a path or an open
    descriptor, read from its start and kept open).

    A resume continues only a partial file whose identity matches, so two
    versions of a file are never spliced together (the digest catches a change
    that kept size and mtime).
    """
    with open(source, "rb", buffering=0, closefd=not isinstance(source, int)) as f:
        head = f.read(IDENTITY_HEAD_BYTES)
    return f"{size}:{mtime_ns}:{xxhash.xxh3_64_hexdigest(head)}"
