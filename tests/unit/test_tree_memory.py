"""Memory stays flat as a tree's entry count grows: both sides, in one process, fed a synthetic file list."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from rtransfer.cli.listen import open_listener
from rtransfer.crypto import TransferKeys
from rtransfer.protocol.model import Entry
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving import sink
from rtransfer.report import Reporter
from rtransfer.sending import walk as files
from rtransfer.sending.walk import Source
from rtransfer.session.config import RecvConfig, SendConfig
from rtransfer.session.recv import run_recv
from rtransfer.session.send import run_send
from rtransfer.transport.retry import RetryPolicy
from rtransfer.transport.source import Dial, Listen

EMPTY_DIGEST = blake3.blake3(b"").hexdigest()
DIRS = 10


def synthetic_walk(entries: int, empty_file: Path) -> Any:
    """``entries`` empty files in DIRS directories, as the walk would list them (batched by the real lister)."""

    def walk(self: files.Walk, root: Source) -> Iterator[Source]:
        yield Source(Entry("root", "dir", None, 0o755, 0), None)
        for d in range(DIRS):
            yield Source(Entry(f"root/d{d}", "dir", None, 0o755, 0), None)
        for i in range(entries):
            yield Source(Entry(f"root/d{i % DIRS}/f{i:07}", "file", 0, 0o644, 0), str(empty_file))

    return walk


def no_disk(
    dirs: Any, files: list[PackedFile], entries: list[Entry], places: Any, payload: Any, policy: Any, check: bool
) -> list[Any]:
    """Every check up to the file system, but no file made: a million files would take minutes."""
    return [(entry.path, f.size, EMPTY_DIGEST) for f, entry in zip(files, entries, strict=True)]


async def peak_bytes_for(entries: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    (tmp_path / "src").mkdir(parents=True)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    monkeypatch.setattr(files.Walk, "entries", synthetic_walk(entries, empty))
    monkeypatch.setattr(sink, "write_packed", no_disk)
    listener = open_listener("127.0.0.1", 0)
    recv = RecvConfig(str(tmp_path / "out"), Listen(listener), TransferKeys(b"memory-test-secret"))
    gc.collect()
    tracemalloc.start()
    try:
        receiving = asyncio.ensure_future(run_recv(recv, Reporter()))
        port = listener.getsockname()[1]
        send = SendConfig(
            [str(tmp_path / "src")],
            Dial("127.0.0.1", port),
            TransferKeys(b"memory-test-secret"),
            connect_policy=RetryPolicy(),
        )
        sent = await asyncio.wait_for(run_send(send, Reporter()), 300)
        received = await asyncio.wait_for(receiving, 30)
        assert sent.files_done == received.files_done == entries
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(600)
async def test_memory_stays_flat_as_the_entry_count_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten times the entries may not cost more than the jitter of what is in flight (peaks of both sides'
    Python allocations, measured 4.7-6.8 MB whether 4,000, 40,000 or 100,000 entries). Keeping every entry,
    as the whole manifest did (~9 KB per entry), would add over 400 MB here; 100 bytes per entry, 4.5 MB.
    Chunk buffers are mapped outside the Python heap and held to their budget elsewhere."""
    small = await peak_bytes_for(5_000, tmp_path / "small", monkeypatch)
    large = await peak_bytes_for(50_000, tmp_path / "large", monkeypatch)
    print(f"peak traced memory: {small / 1e6:.1f} MB for 5,000 entries, {large / 1e6:.1f} MB for 50,000")
    assert large < small + 4_000_000, (small, large)
