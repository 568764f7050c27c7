"""Chunk buffers: a pool that recycles them and holds the process to a budget of them, and how
many wait between a connection and its file task.

Queue size x chunk size bounds memory whatever the file size; a full queue stops the producer,
which is the back-pressure that reaches all the way to the peer's socket.
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from rtransfer.protocol.messages import DATA_HEADER
from rtransfer.protocol.model import Buffer, WritableBuffer

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
            self.put(getattr(queue.get_nowait(), "payload", None))  # a chunk's or a pack's; None at a queue's end
