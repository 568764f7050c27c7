"""No worker-thread call outlives its caller: a cancelled caller waits for the call before it closes or recycles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtransfer import workers
from rtransfer.buffers import BufferPool
from rtransfer.integrity import FileDigest
from rtransfer.protocol.events import Accepted
from rtransfer.sending.reader import AcceptedBatch, Reading, SendItem, read_sources
from rtransfer.sending.walk import collect_sources
from rtransfer.stats import TransferStats
from rtransfer.workers import in_slices, settle

NEGATIVE_WAIT_S = 1.0  # how long "this must not happen" is watched for


async def _cancel_twice(task: asyncio.Task[None]) -> None:
    """As a reconnect does: the reader is cancelled, then cancelled again by its supervisor's teardown."""
    task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()


async def test_settle_waits_for_the_call_through_repeated_cancels() -> None:
    release = threading.Event()
    ended = threading.Event()

    def call() -> None:
        release.wait(10)
        ended.set()

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(settle(loop.run_in_executor(None, call)))
    await asyncio.sleep(0)
    await _cancel_twice(task)  # type: ignore[arg-type]
    done, _ = await asyncio.wait([task], timeout=NEGATIVE_WAIT_S)
    assert not done
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and ended.is_set()


async def test_a_cancelled_reader_never_closes_the_file_under_its_worker(tmp_path: Path, monkeypatch: object) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))  # large enough to go chunk by chunk, not packed
    inside, release = threading.Event(), threading.Event()
    fd_state: list[str] = []
    real_read = FileDigest.read_now

    def blocked_read(self: FileDigest, fd: int, buf: memoryview, offset: int, at: int | None = None) -> memoryview:
        inside.set()
        release.wait(10)
        try:
            os.fstat(fd)
            fd_state.append("open")
        except OSError:
            fd_state.append("closed")
            return memoryview(buf)[:0]
        return real_read(self, fd, buf, offset, at)

    monkeypatch.setattr(FileDigest, "read_now", blocked_read)  # type: ignore[attr-defined]
    batches: asyncio.Queue[AcceptedBatch | None] = asyncio.Queue()
    batches.put_nowait(AcceptedBatch(0, collect_sources([str(src)], None), Accepted(0, {})))
    queue: asyncio.Queue[SendItem] = asyncio.Queue(maxsize=1)
    stats = TransferStats("send")
    reader = asyncio.ensure_future(read_sources(batches, Reading(64 * 1024, queue, stats, BufferPool(4)), lambda: None))
    await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
    await _cancel_twice(reader)
    done, _ = await asyncio.wait([reader], timeout=NEGATIVE_WAIT_S)
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert not done, "the reader ended while its worker was still reading"
    assert fd_state == ["open"]


async def test_small_file_work_lets_the_loop_run_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack is written on the loop's thread: on a slow disk the loop must still get its turns."""
    monkeypatch.setattr(workers, "SLICE_S", 0.0)  # every step overruns its slice
    seen: list[str] = []
    finished = asyncio.Event()

    def steps() -> Iterator[int]:
        for i in range(4):
            seen.append(f"step {i}")
            yield i

    async def meanwhile() -> None:
        while not finished.is_set():  # ends with the steps
            seen.append("loop")
            await asyncio.sleep(0)

    other = asyncio.ensure_future(meanwhile())
    assert await in_slices(steps()) == [0, 1, 2, 3]
    finished.set()
    await other
    assert "loop" in seen[seen.index("step 0") : seen.index("step 3")]


async def test_a_cancelled_caller_waits_for_the_last_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for a worker thread: the steps fill or empty a pooled buffer, so they end before the caller goes on."""
    monkeypatch.setattr(workers, "SLICE_S", 0.0)
    done: list[int] = []

    def steps() -> Iterator[int]:
        for i in range(5):
            done.append(i)
            yield i

    task = asyncio.ensure_future(in_slices(steps()))
    while not done:
        await asyncio.sleep(0)
    await _cancel_twice(task)  # type: ignore[arg-type]
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and done == [0, 1, 2, 3, 4]
