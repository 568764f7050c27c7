"""Worker-thread calls (and work done on the loop's thread in slices) that end before their
caller does.

A thread cannot be cancelled. If the coroutine waiting for one is cancelled (a
reconnect, an error elsewhere, SIGINT) and goes on to close a file or return a
buffer to the pool, the thread still reads or writes that descriptor, which may
by then belong to another file, or that buffer, which may by then hold another
chunk. So every call that touches a descriptor or a pooled buffer goes through
``settle``: a cancelled caller first waits for the call to end (file I/O ends in
milliseconds), then the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# CPU-bound work (hashing, compressing, cutting and matching a delta) has a pool of its own, one
# thread per core: it never waits behind file I/O in the default pool (an fdatasync can take
# seconds), and never runs more threads than there are cores to run them.
_CPU_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="rtransfer-cpu")
# The walk and small files are read and written on the event loop's own thread (``in_slices``),
# this long at most before the loop runs again. In worker threads, each of their system calls
# handed the GIL to the loop's thread and back, across cores: a tree of 59,000 entries took 12%
# longer (bench/README.md; holding each process to one core, which a tool cannot choose for its
# user, had saved as much).
SLICE_S = 0.005


async def settle(work: Awaitable[T]) -> T:
    """Await ``work``; if cancelled meanwhile, let it finish first, then raise the cancellation."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):  # a second cancel must not cut the wait short
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: its error is moot once we are cancelled
        raise


def in_worker(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
    """``fn(*args)`` in the default executor (file I/O), settled (see ``settle``)."""
    return settle(asyncio.get_running_loop().run_in_executor(None, fn, *args))


def on_cpu(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on the CPU pool, started now (callers settle it, or ``in_cpu`` does)."""
    return asyncio.get_running_loop().run_in_executor(_CPU_POOL, fn, *args)


def in_slices(steps: Iterable[T]) -> Awaitable[list[T]]:
    """Everything ``steps`` yields (a generator doing a little file I/O for each item), run on the
    loop's thread, which runs its other work at least every SLICE_S; settled, as the buffers the
    steps fill or write from are pooled (see ``settle``)."""
    return settle(_drain(steps))


async def _drain(steps: Iterable[T]) -> list[T]:
    done: list[T] = []
    deadline = time.monotonic() + SLICE_S
    for item in steps:
        done.append(item)
        if time.monotonic() >= deadline:
            await asyncio.sleep(0)
            deadline = time.monotonic() + SLICE_S
    return done


def in_cpu(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
    """``fn(*args)`` on the CPU pool, settled (see ``settle``)."""
    return settle(on_cpu(fn, *args))


async def wait_out(future: asyncio.Future[Any]) -> None:
    """For ``finally`` blocks: wait for a started call to end, whatever its outcome, and
    consume that outcome (a failure here is not the error being reported)."""
    await settle(asyncio.wait([future]))
    if not future.cancelled():
        future.exception()
