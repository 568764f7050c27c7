"""The buffer pool recycles chunk buffers and holds the process to its budget of them."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from rtransfer.buffers import BufferPool

CHUNK = 1 << 20


async def test_a_producer_waits_for_room_until_a_buffer_comes_back() -> None:
    pool = BufferPool(budget_buffers=2)
    first, second = pool.get(CHUNK), pool.get(CHUNK)
    assert not pool.has_room()
    waiting = asyncio.ensure_future(pool.room())
    await asyncio.sleep(0)
    assert not waiting.done()
    pool.put(first)
    await asyncio.wait_for(waiting, 5)
    assert pool.get(CHUNK).obj is first.obj  # type: ignore[union-attr]  # the same region, not a fresh one
    assert pool.live == 2
    del second


async def test_a_dropped_buffer_frees_its_room_once_unmapped() -> None:
    pool = BufferPool(budget_buffers=1)
    buf = pool.get(CHUNK)
    waiting = asyncio.ensure_future(pool.room())
    await asyncio.sleep(0)
    del buf  # a dead connection's buffer nobody recycled
    gc.collect()
    await asyncio.wait_for(waiting, 5)
    assert pool.live == 0


def test_idle_buffers_never_push_the_pool_past_its_budget() -> None:
    pool = BufferPool(budget_buffers=2)
    small, large = pool.get(CHUNK), pool.get(4 * CHUNK)
    pool.put(small)
    pool.put(large)
    del small, large  # given back: only the pool holds them now
    held = [pool.get(2 * CHUNK), pool.get(2 * CHUNK)]  # another size: idle ones of other sizes make way
    assert pool.live == 2 and pool.in_use == 2
    pool.recycle(held)
    assert pool.in_use == 0 and pool.live == 2


def test_a_buffer_given_back_makes_room_even_while_a_stale_view_of_it_lives_on() -> None:
    pool = BufferPool(budget_buffers=1)
    first, resend = pool.get(CHUNK), pool.get(CHUNK)  # one over budget, as a resend may go
    pool.recycle([first, resend])  # a dead connection's objects may still hold these views
    assert pool.has_room() and pool.in_use == 0
    assert first.obj is not None and resend.obj is not None  # type: ignore[union-attr]


async def test_a_producer_waiting_for_room_collects_buffers_dropped_in_a_reference_cycle() -> None:
    """A dead connection's buffers can sit in a cycle (frames, a traceback) that only the collector
    frees; an idle process may never run it, and the producer waited forever."""
    pool = BufferPool(1)
    cycle: list[object] = [pool.get(BufferPool.MIN_POOLED_BYTES)]
    cycle.append(cycle)
    gc.disable()
    try:
        del cycle
        assert not pool.has_room()
        await asyncio.wait_for(pool.room(), 10 * BufferPool.ROOM_COLLECT_AFTER_S)
    finally:
        gc.enable()
    assert pool.live == 0


def test_a_tree_goes_in_chunks_half_the_size_of_a_files(tmp_path: Path) -> None:
    """A tree's packs keep the receiver's buffers busy while its files are made: smaller chunks keep
    its memory in budget (bench/README.md)."""
    from rtransfer.cli.configure import send_config
    from rtransfer.cli.options import SendOptions
    from rtransfer.report import Reporter

    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    for sources, streams, expected in (
        ([tmp_path / "f"], 1, 8 << 20),
        ([tmp_path / "d"], 1, 4 << 20),
        ([tmp_path / "d"], 2, 2 << 20),
    ):
        config = send_config(SendOptions([*map(str, sources), "127.0.0.1:9"], code="c", streams=streams), Reporter())
        assert config.chunk_bytes == expected
    options = SendOptions([str(tmp_path / "d"), "h:9"], code="c", chunk_size="1M")
    assert send_config(options, Reporter()).chunk_bytes == 1 << 20
