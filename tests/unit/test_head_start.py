"""The sender's head start: files hashed while the peer is awaited, their digests handed to the
reader only for the same file unchanged, and the reader hashing only what lies past them."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import blake3
import pytest

from rtransfer.buffers import BufferPool
from rtransfer.errors import LocalIOError
from rtransfer.integrity import READ_STEP_BYTES, FileDigest
from rtransfer.protocol.events import Accepted
from rtransfer.sending import head_start
from rtransfer.sending.head_start import HeadStart, hashed_ahead
from rtransfer.sending.reader import AcceptedBatch, EndOfFile, Reading, SendItem, read_sources
from rtransfer.sending.walk import PACK_FILE_MAX_BYTES, collect_sources
from rtransfer.stats import TransferStats

CHUNK = 64 * 1024
WAIT_S = 10.0


def _fed_ahead(path: Path, n: int) -> FileDigest:
    digest = FileDigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        digest.read_now(fd, bytearray(n), 0)
    finally:
        os.close(fd)
    return digest


@pytest.mark.parametrize("ahead", [0, 1, CHUNK - 1, CHUNK, 5 * CHUNK // 2, 4 * CHUNK + 3])
@pytest.mark.parametrize("resume", [0, CHUNK, 3 * CHUNK + 1])
async def test_a_digest_fed_ahead_takes_in_only_the_bytes_past_it(tmp_path: Path, ahead: int, resume: int) -> None:
    data = os.urandom(4 * CHUNK + 3)
    (tmp_path / "f").write_bytes(data)
    digest = _fed_ahead(tmp_path / "f", ahead)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        await digest.hash_prefix(fd, resume, "f")
        offset = resume
        while piece := await digest.read_into(fd, bytearray(CHUNK), offset):
            assert bytes(piece) == data[offset : offset + len(piece)]
            offset += len(piece)
    finally:
        os.close(fd)
    assert digest.fed == len(data)
    assert digest.hexdigest() == blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("ahead", [0, 10, READ_STEP_BYTES + 5, 3 * READ_STEP_BYTES])
def test_a_hole_hashed_ahead_is_not_hashed_again(ahead: int) -> None:
    digest = FileDigest()
    digest.zeros_now(ahead)
    for offset in range(0, 3 * READ_STEP_BYTES, READ_STEP_BYTES):
        digest.zeros_now(READ_STEP_BYTES, offset)
    assert digest.hexdigest() == blake3.blake3(bytes(3 * READ_STEP_BYTES)).hexdigest()


def test_a_gap_in_a_digest_s_input_is_a_bug_not_a_wrong_digest() -> None:
    digest = FileDigest()
    with pytest.raises(AssertionError, match="gap"):
        digest.zeros_now(10, 5)


def _files(tmp_path: Path, *sizes: int) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


async def _claimed(head: HeadStart, path: Path) -> FileDigest | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        ahead = await head.claim(str(path), fd)
    finally:
        os.close(fd)
    return None if ahead is None else ahead.digest


async def test_files_are_hashed_in_order_within_the_budget(tmp_path: Path) -> None:
    first, second, third = _files(tmp_path, 3 * READ_STEP_BYTES, 3 * READ_STEP_BYTES, READ_STEP_BYTES)
    head = HeadStart([str(first), str(second), str(third)], 4 * READ_STEP_BYTES + 7)
    head.hashed.result(WAIT_S)
    whole, part = await _claimed(head, first), await _claimed(head, second)
    assert whole is not None and whole.fed == 3 * READ_STEP_BYTES
    assert whole.hexdigest() == blake3.blake3(first.read_bytes()).hexdigest()
    assert part is not None and part.fed == READ_STEP_BYTES + 7
    assert await _claimed(head, third) is None  # the budget was spent before it
    assert await _claimed(head, first) is None  # handed over once


async def test_a_file_changed_or_replaced_after_its_head_start_is_not_handed_over(tmp_path: Path) -> None:
    changed, replaced, other = _files(tmp_path, 2 * READ_STEP_BYTES, 2 * READ_STEP_BYTES, 2 * READ_STEP_BYTES)
    head = HeadStart([str(changed), str(replaced)], 1 << 30)
    head.hashed.result(WAIT_S)
    with changed.open("r+b") as f:  # same size, same mtime: the ctime still moves
        st = os.fstat(f.fileno())
        f.write(b"x")
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    other.rename(replaced)
    assert await _claimed(head, changed) is None
    assert await _claimed(head, replaced) is None


async def test_stop_ends_the_head_start_after_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (big,) = _files(tmp_path, 8 * READ_STEP_BYTES)
    stepped, release = threading.Event(), threading.Event()
    real_read = FileDigest.read_now

    def one_step(self: FileDigest, fd: int, buf: memoryview, offset: int, at: int | None = None) -> memoryview:
        view = real_read(self, fd, buf, offset, at)
        stepped.set()
        release.wait(WAIT_S)
        return view

    monkeypatch.setattr(FileDigest, "read_now", one_step)
    head = HeadStart([str(big)], 1 << 30)
    assert stepped.wait(WAIT_S)
    head.stop()
    release.set()
    digest = head.hashed.result(WAIT_S)[str(big)].digest
    assert digest.fed == READ_STEP_BYTES
    monkeypatch.undo()
    fd = os.open(big, os.O_RDONLY)
    try:
        await digest.hash_prefix(fd, big.stat().st_size, "big")
    finally:
        os.close(fd)
    assert digest.hexdigest() == blake3.blake3(big.read_bytes()).hexdigest()


async def test_a_step_that_hangs_is_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (big,) = _files(tmp_path, 2 * READ_STEP_BYTES)
    stepped, release = threading.Event(), threading.Event()

    def hung(self: FileDigest, fd: int, buf: memoryview, offset: int, at: int | None = None) -> memoryview:
        stepped.set()
        release.wait(WAIT_S)
        return memoryview(buf)[:0]

    monkeypatch.setattr(FileDigest, "read_now", hung)
    monkeypatch.setattr(head_start, "STEP_WAIT_S", 0.05)
    head = HeadStart([str(big)], 1 << 30)
    try:
        assert stepped.wait(WAIT_S)
        assert await _claimed(head, big) is None
        assert not head.hashed.done()
    finally:
        release.set()


async def test_a_file_gone_before_its_head_start_is_left_to_the_reader(tmp_path: Path) -> None:
    head = HeadStart([str(tmp_path / "gone")], 1 << 30)
    assert head.hashed.result(WAIT_S) == {}


async def test_a_fifo_put_in_a_file_s_place_is_neither_waited_on_nor_read(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer with bytes waiting: a read would take them
    try:
        os.write(writer, b"not for the head start")
        head = HeadStart([str(fifo)], 1 << 30)
        assert head.hashed.result(WAIT_S) == {}
        assert os.read(writer, 100) == b"not for the head start"
    finally:
        os.close(writer)


def test_only_files_read_chunk_by_chunk_get_a_head_start(tmp_path: Path) -> None:
    small, large = _files(tmp_path, PACK_FILE_MAX_BYTES, PACK_FILE_MAX_BYTES + 1)
    (tmp_path / "dir").mkdir()
    sources = collect_sources([str(small), str(large), str(tmp_path / "dir"), "-"], None)
    assert hashed_ahead(sources) == [str(large)]


async def _read(path: Path, head: HeadStart, touch_after_first_chunk: bool) -> list[SendItem]:
    batches: asyncio.Queue[AcceptedBatch | None] = asyncio.Queue()
    batches.put_nowait(AcceptedBatch(0, collect_sources([str(path)], None), Accepted(0, {})))
    batches.put_nowait(None)
    queue: asyncio.Queue[SendItem] = asyncio.Queue(maxsize=1)
    pool = BufferPool(4)
    reader = asyncio.ensure_future(
        read_sources(batches, Reading(CHUNK, queue, TransferStats("send"), pool, None, head), lambda: None)
    )
    items: list[SendItem] = []
    try:
        while not items or items[-1] is not None:
            async with asyncio.timeout(WAIT_S):
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait([getting, reader], return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                reader.result()  # the reader's error
            item = getting.result()
            items.append(item)
            if touch_after_first_chunk and len(items) == 1:
                os.utime(path)
            payload = getattr(item, "payload", None)
            if payload is not None:
                pool.put(payload)
    finally:
        reader.cancel()
    return items


async def test_the_reader_hashes_only_what_the_head_start_left(tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 3 * READ_STEP_BYTES + 5)
    head = HeadStart([str(path)], 1 << 30)
    head.hashed.result(WAIT_S)  # the whole file hashed ahead: hashing any of it again gives another digest
    items = await _read(path, head, touch_after_first_chunk=False)
    ends = [item for item in items if isinstance(item, EndOfFile)]
    assert [end.digest for end in ends] == [blake3.blake3(path.read_bytes()).digest()]


async def test_a_file_changed_while_sent_after_its_head_start_is_refused(tmp_path: Path) -> None:
    (path,) = _files(tmp_path, 3 * READ_STEP_BYTES)
    head = HeadStart([str(path)], 1 << 30)
    head.hashed.result(WAIT_S)
    with pytest.raises(LocalIOError, match="changed while being sent"):
        await _read(path, head, touch_after_first_chunk=True)
