"""Whole-file BLAKE3 digests, computed while streaming.

Per-chunk checks live in the frame codec (xxh3 over every frame). Large BLAKE3
updates run in a worker thread: blake3 releases the GIL, so hashing overlaps
with socket and disk work instead of stalling the event loop (bench/loop_stall.py
measures the difference).
"""

from __future__ import annotations

import asyncio

import blake3

from rtransfer.protocol.frames import Buffer

HASH_IN_THREAD_BYTES = 128 * 1024  # below this a thread hop costs more than the hash


class FileDigest:
    """BLAKE3 of a file fed strictly in order; ``hexdigest`` matches ``b3sum``."""

    def __init__(self, in_thread: bool = True) -> None:
        self._hasher = blake3.blake3()
        self._in_thread = in_thread

    async def update(self, data: Buffer) -> None:
        if self._in_thread and len(data) >= HASH_IN_THREAD_BYTES:
            await asyncio.get_running_loop().run_in_executor(None, self._hasher.update, data)
        else:
            self._hasher.update(data)

    def digest(self) -> bytes:
        return self._hasher.digest()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()
