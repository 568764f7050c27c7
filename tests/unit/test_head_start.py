"""The sender's head start: files hashed while the peer is awaited, their digests handed to the
reader for the same file, which checks what was hashed ahead a step at a time and takes the
bytes it sends from the first step that differs: the digest is always that of the bytes sent."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import blake3
import pytest

from rtransfer.buffers import BufferPool
from rtransfer.integrity import READ_STEP_BYTES, FileDigest
from rtransfer.protocol.events import Accepted
from rtransfer.protocol.model import Entry
from rtransfer.sending import head_start
from rtransfer.sending.head_start import HeadStart, hashed_ahead
from rtransfer.sending.reader import AcceptedBatch, Chunk, EndOfFile, Reading, SendItem, read_sources
from rtransfer.sending.walk import PACK_FILE_MAX_BYTES, Source, collect_sources
from rtransfer.stats import TransferStats

STEP = READ_STEP_BYTES
WAIT_S = 10.0


def _sources(*paths: Path) -> list[Source]:
    """As the walk lists files, as far as the head start looks (a name that is gone or a FIFO too)."""
    return [Source(Entry(p.name, "file", None), str(p)) for p in paths]


def _hashed_ahead(path: Path, n: int) -> FileDigest:
    """As the head start does: ``n`` bytes of ``path`` hashed a step at a time."""
    digest = FileDigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        while digest.fed < n and digest.hash_ahead(fd, memoryview(bytearray(min(STEP, n - digest.fed)))):
            pass
    finally:
        os.close(fd)
    return digest


def _read_from(path: Path, digest: FileDigest, resume: int, chunk: int) -> bytes:
    """As the reader does: the prefix up to ``resume``, then chunk by chunk; the bytes read after it."""
    read = []
    fd = os.open(path, os.O_RDONLY)
    try:
        digest.hash_prefix_now(fd, resume, path.name)
        offset = resume
        while piece := digest.read_now(fd, bytearray(chunk), offset, offset):
            read.append(bytes(piece))
            offset += len(piece)
        digest.ended(offset)
    finally:
        os.close(fd)
    return b"".join(read)


@pytest.mark.parametrize("ahead", [0, 1, STEP - 1, STEP, 5 * STEP // 2, 4 * STEP + 3])
@pytest.mark.parametrize("resume", [0, STEP, 3 * STEP])
@pytest.mark.parametrize("chunk", [STEP, 2 * STEP])
def test_a_digest_hashed_ahead_skips_what_it_hashed(tmp_path: Path, ahead: int, resume: int, chunk: int) -> None:
    data = os.urandom(4 * STEP + 3)
    (tmp_path / "f").write_bytes(data)
    digest = _hashed_ahead(tmp_path / "f", ahead)
    assert _read_from(tmp_path / "f", digest, resume, chunk) == data[resume:]
    assert digest.fed == len(data)
    assert digest.hexdigest() == blake3.blake3(data).hexdigest()


@pytest.mark.parametrize("changed_at", [0, STEP + 5, 4 * STEP])
def test_bytes_changed_after_they_were_hashed_ahead_are_hashed_as_read(tmp_path: Path, changed_at: int) -> None:
    """A write through a shared mapping moves no timestamp: the step check finds it."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 * STEP + 3))
    digest = _hashed_ahead(path, 5 * STEP)
    with path.open("r+b") as f:
        f.seek(changed_at)
        f.write(b"changed")
    assert _read_from(path, digest, 0, STEP) == path.read_bytes()
    assert digest.hexdigest() == blake3.blake3(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [STEP // 2, 2 * STEP, 3 * STEP + 1])
def test_a_file_cut_or_grown_after_its_head_start_is_hashed_as_read(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(2 * STEP + 7))
    digest = _hashed_ahead(path, 3 * STEP)
    os.truncate(path, size)
    assert _read_from(path, digest, 0, 2 * STEP) == path.read_bytes()
    assert digest.hexdigest() == blake3.blake3(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("data_ahead", [False, True])
def test_a_hole_read_after_a_head_start_is_hashed_once(tmp_path: Path, data_ahead: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * STEP) if data_ahead else bytes(3 * STEP))
    digest = _hashed_ahead(path, 2 * STEP + 5)
    for offset in range(0, 3 * STEP, STEP):  # as the reader hashes a chunk that is all hole
        digest.zeros_now(STEP, offset)
    assert digest.hexdigest() == blake3.blake3(bytes(3 * STEP)).hexdigest()


def test_a_gap_in_a_digest_s_input_is_a_bug_not_a_wrong_digest() -> None:
    with pytest.raises(AssertionError, match="gap"):
        FileDigest().zeros_now(10, 5)


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
        return await head.claim(str(path), fd)
    finally:
        os.close(fd)


async def test_files_are_hashed_in_order_within_the_budget(tmp_path: Path) -> None:
    first, second, third = _files(tmp_path, 3 * STEP, 3 * STEP, STEP)
    head = HeadStart(_sources(first, second, third), 4 * STEP + 7)
    head.hashed.result(WAIT_S)
    whole, part = await _claimed(head, first), await _claimed(head, second)
    assert whole is not None and whole.fed == 3 * STEP
    assert whole.hexdigest() == blake3.blake3(first.read_bytes()).hexdigest()
    assert part is not None and part.fed == STEP + 7
    assert await _claimed(head, third) is None  # the budget was spent before it
    assert await _claimed(head, first) is None  # handed over once


async def test_a_file_replaced_or_written_since_starts_afresh_and_a_chmod_does_not_matter(tmp_path: Path) -> None:
    written, replaced, chmodded, other = _files(tmp_path, 2 * STEP, 2 * STEP, 2 * STEP, 2 * STEP)
    head = HeadStart(_sources(written, replaced, chmodded), 1 << 30)
    head.hashed.result(WAIT_S)
    with written.open("ab") as f:
        f.write(b"x")
    other.rename(replaced)
    chmodded.chmod(0o600)
    assert await _claimed(head, written) is None
    assert await _claimed(head, replaced) is None
    kept = await _claimed(head, chmodded)
    assert kept is not None and kept.fed == 2 * STEP


async def test_stop_ends_the_head_start_after_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (big,) = _files(tmp_path, 8 * STEP)
    stepped, release = threading.Event(), threading.Event()
    real_read = FileDigest.read_now

    def one_step(self: FileDigest, fd: int, buf: memoryview, offset: int, at: int | None = None) -> memoryview:
        view = real_read(self, fd, buf, offset, at)
        stepped.set()
        release.wait(WAIT_S)
        return view

    monkeypatch.setattr(FileDigest, "read_now", one_step)
    head = HeadStart(_sources(big), 1 << 30)
    assert stepped.wait(WAIT_S)
    head.stop()
    release.set()
    digest, _ = head.hashed.result(WAIT_S)[str(big)]
    assert digest.fed == STEP
    monkeypatch.undo()
    assert _read_from(big, digest, 0, 2 * STEP) == big.read_bytes()
    assert digest.hexdigest() == blake3.blake3(big.read_bytes()).hexdigest()


async def test_a_step_that_hangs_is_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (big,) = _files(tmp_path, 2 * STEP)
    stepped, release = threading.Event(), threading.Event()

    def hung(self: FileDigest, fd: int, buf: memoryview, offset: int, at: int | None = None) -> memoryview:
        stepped.set()
        release.wait(WAIT_S)
        return memoryview(buf)[:0]

    monkeypatch.setattr(FileDigest, "read_now", hung)
    monkeypatch.setattr(head_start, "STEP_WAIT_S", 0.05)
    head = HeadStart(_sources(big), 1 << 30)
    try:
        assert stepped.wait(WAIT_S)
        assert await _claimed(head, big) is None
        assert not head.hashed.done()
    finally:
        release.set()


async def test_a_file_gone_before_its_head_start_is_left_to_the_reader(tmp_path: Path) -> None:
    head = HeadStart(_sources(tmp_path / "gone"), 1 << 30)
    assert head.hashed.result(WAIT_S) == {}


async def test_a_fifo_put_in_a_file_s_place_is_neither_waited_on_nor_read(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer with bytes waiting: a read would take them
    try:
        os.write(writer, b"not for the head start")
        head = HeadStart(_sources(fifo), 1 << 30)
        assert head.hashed.result(WAIT_S) == {}
        assert os.read(writer, 100) == b"not for the head start"
    finally:
        os.close(writer)


def test_only_files_read_chunk_by_chunk_get_a_head_start(tmp_path: Path) -> None:
    small, large = _files(tmp_path, PACK_FILE_MAX_BYTES, PACK_FILE_MAX_BYTES + 1)
    (tmp_path / "dir").mkdir()
    sources = collect_sources([str(small), str(large), str(tmp_path / "dir"), "-"], None)
    assert [s.local for s in hashed_ahead(sources)] == [str(large)]


async def _sent(path: Path, head: HeadStart, chunk: int, after_first_chunk: str = "") -> tuple[bytes, bytes]:
    """The reader's bytes for ``path`` and the digest it ends the file with; ``after_first_chunk``
    is done to the file once the first chunk is queued (the reader then reads the next)."""
    batches: asyncio.Queue[AcceptedBatch | None] = asyncio.Queue()
    batches.put_nowait(AcceptedBatch(0, collect_sources([str(path)], None), Accepted(0, {})))
    batches.put_nowait(None)
    queue: asyncio.Queue[SendItem] = asyncio.Queue(maxsize=1)
    pool = BufferPool(4)
    reading = Reading(chunk, queue, TransferStats("send"), pool, None, head)
    reader = asyncio.ensure_future(read_sources(batches, reading, lambda: None))
    sent, digest = [], b""
    try:
        while (item := await asyncio.wait_for(queue.get(), WAIT_S)) is not None:
            if isinstance(item, Chunk):
                sent.append(bytes(item.payload))
                pool.put(item.payload)
                if len(sent) == 1 and after_first_chunk == "write, mtime kept":
                    st = path.stat()
                    with path.open("r+b") as f:
                        f.seek(3 * STEP)
                        f.write(b"written through a mapping")
                    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                elif len(sent) == 1 and after_first_chunk == "chmod":
                    path.chmod(0o600)
            elif isinstance(item, EndOfFile):
                digest = item.digest
    finally:
        reader.cancel()
    return b"".join(sent), digest


@pytest.mark.parametrize("meanwhile", ["", "write, mtime kept", "chmod"])
async def test_the_digest_a_file_ends_with_is_of_the_bytes_sent(tmp_path: Path, meanwhile: str) -> None:
    (path,) = _files(tmp_path, 5 * STEP + 5)
    head = HeadStart(_sources(path), 1 << 30)
    head.hashed.result(WAIT_S)  # all of it hashed ahead: hashing any of it again would give another digest
    before = path.read_bytes()
    sent, digest = await _sent(path, head, 2 * STEP, meanwhile)
    assert sent in (before, path.read_bytes())  # the write may come before or after the reader reads ahead
    assert digest == blake3.blake3(sent).digest()
