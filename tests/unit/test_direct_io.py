"""Direct-I/O writes of partial files: same bytes as a buffered write, with O_DIRECT really in use."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

from rtransfer.buffers import BufferPool
from rtransfer.protocol.messages import DATA_HEADER
from rtransfer.protocol.model import Entry
from rtransfer.receiving import direct_io
from rtransfer.receiving.dest import Spot
from rtransfer.receiving.direct_io import ALIGN, DIRECT_MIN_BYTES, PartialWriter, direct_io_suits, zero_runs
from rtransfer.receiving.sink import DirectorySink
from rtransfer.receiving.specials import DestPolicy
from tests.unit.harness import plan_alone

CHUNK = 16 * ALIGN


def _direct_flag(writer: PartialWriter) -> bool:
    return bool(fcntl.fcntl(writer.fileno(), fcntl.F_GETFL) & os.O_DIRECT)


def _accepts_misaligned_direct_writes(path: Path) -> bool:
    """Block devices refuse them (EINVAL); a file system may copy them instead."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    try:
        os.write(fd, memoryview(mmap.mmap(-1, 2 * ALIGN))[1 : 1 + ALIGN])
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    finally:
        os.close(fd)
    return True


async def _open_direct_or_skip(path: Path, offset: int = 0) -> PartialWriter:
    """Skip only where the file system itself refuses O_DIRECT; anywhere else the writer must use it."""
    try:
        os.close(os.open(path.with_name("probe"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        pytest.skip("the file system under the test's temporary directory refuses O_DIRECT")
    return await partial_writer(path, offset, direct=True)


async def partial_writer(path: Path, offset: int = 0, direct: bool = False) -> PartialWriter:
    """A writer of partial file ``path`` (".NAME.rtpart"), resuming at ``offset`` the file there."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        spot = Spot(dir_fd, path.name.removeprefix(".").removesuffix(".rtpart"))
    finally:
        os.close(dir_fd)
    inode = (path.stat().st_dev, path.stat().st_ino) if offset else None
    writer = await PartialWriter.open(spot, offset, direct=direct, chunk_bytes=CHUNK, inode=inode)
    assert writer.direct is direct
    return writer


async def test_chunks_go_direct_and_the_unaligned_tail_through_the_cache(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 100)
    path = tmp_path / ".f.rtpart"
    writer = await _open_direct_or_skip(path)
    for start in range(0, len(data), CHUNK):
        before_tail = len(data) - start >= CHUNK
        await writer.write(memoryview(data)[start : start + CHUNK])
        assert _direct_flag(writer) is before_tail
    await writer.close()
    assert path.read_bytes() == data


async def test_chunks_from_the_buffer_pool_reach_the_disk_without_a_copy(tmp_path: Path) -> None:
    body = BufferPool(2).get(DATA_HEADER.size + CHUNK)  # as the receiver's decoder lays out a DATA frame
    payload = memoryview(body)[DATA_HEADER.size :]
    payload[:] = data = os.urandom(CHUNK)
    writer = await _open_direct_or_skip(tmp_path / ".f.rtpart")
    await writer.write(payload)
    assert writer.zero_copy
    # One byte past a page boundary is misaligned for any block size (a bytes object
    # may happen to sit on a 512-byte boundary, which a 512-byte-sector disk accepts).
    misaligned = memoryview(mmap.mmap(-1, CHUNK + ALIGN))[1 : 1 + CHUNK]
    misaligned[:] = data
    await writer.write(misaligned)
    assert writer.zero_copy is _accepts_misaligned_direct_writes(tmp_path / "probe")
    await writer.close()
    assert (tmp_path / ".f.rtpart").read_bytes() == data * 2


async def test_resume_truncates_to_the_offset_and_continues(tmp_path: Path) -> None:
    path = tmp_path / ".f.rtpart"
    path.write_bytes(b"a" * CHUNK + b"stale bytes past the resume point")
    writer = await _open_direct_or_skip(path, offset=CHUNK)
    await writer.write(b"b" * CHUNK)
    await writer.close()
    assert path.read_bytes() == b"a" * CHUNK + b"b" * CHUNK


async def test_a_file_system_without_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct_io, "_try_direct", lambda fd: False)  # as fcntl refuses O_DIRECT there (EINVAL)
    writer = await partial_writer(tmp_path / ".f.rtpart")
    await writer.write(b"x" * CHUNK)
    await writer.close()
    assert (tmp_path / ".f.rtpart").read_bytes() == b"x" * CHUNK


async def test_a_device_refusing_the_alignment_falls_back_without_losing_the_chunk(tmp_path: Path) -> None:
    writer = await _open_direct_or_skip(tmp_path / ".f.rtpart")
    real_write = writer._handle.write
    calls: list[int] = []

    async def picky(data: Any) -> int:
        calls.append(len(data))
        if _direct_flag(writer):
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(await real_write(data))

    writer._handle.write = picky
    await writer.write(b"y" * CHUNK)
    await writer.close()
    assert not writer.direct
    assert calls == [CHUNK] * 3  # as it came, copied into an aligned buffer, then through the cache
    assert (tmp_path / ".f.rtpart").read_bytes() == b"y" * CHUNK


async def test_short_writes_are_finished(tmp_path: Path) -> None:
    writer = await partial_writer(tmp_path / ".f.rtpart")
    real_write = writer._handle.write

    async def short(data: Any) -> int:
        return int(await real_write(memoryview(data)[:ALIGN]))

    writer._handle.write = short
    await writer.write(b"z" * CHUNK)
    await writer.close()
    assert (tmp_path / ".f.rtpart").read_bytes() == b"z" * CHUNK


def test_only_large_files_in_whole_blocks_go_direct() -> None:
    assert direct_io_suits(DIRECT_MIN_BYTES, 1 << 20)
    assert not direct_io_suits(DIRECT_MIN_BYTES - 1, 1 << 20)
    assert not direct_io_suits(DIRECT_MIN_BYTES, (1 << 20) + 1)


@pytest.mark.parametrize("direct_io", [True, False])
async def test_the_receiver_writes_large_files_direct_unless_told_to_buffer(tmp_path: Path, direct_io: bool) -> None:
    await (await _open_direct_or_skip(tmp_path / "probe-file")).close()
    sink = DirectorySink(tmp_path / "out", DestPolicy(direct_io=direct_io))
    plan_alone(sink, CHUNK, Entry("big", "file", DIRECT_MIN_BYTES, identity="v1"))
    await sink.write(0, 0, b"x" * CHUNK)
    assert _direct_flag(sink.partials._open[0]) is direct_io
    await sink.suspend()


def test_zero_blocks_are_found_a_block_at_a_time() -> None:
    data = bytearray(8 << 20)
    for mib in range(8):
        data[mib << 20] = 1
    assert zero_runs(memoryview(data), 0) == [((m << 20) + ALIGN, (m + 1) << 20) for m in range(8)]
    assert zero_runs(memoryview(bytes(3 * ALIGN)), 100) == [(ALIGN - 100, 3 * ALIGN - 100)]  # whole blocks of the file
    assert zero_runs(memoryview(os.urandom(1 << 20)), 0) == []
    almost = bytearray(2 * ALIGN)
    almost[ALIGN + 4000] = 7  # zero at its head, not all through
    assert zero_runs(memoryview(almost), 0) == [(0, ALIGN)]


async def test_zero_blocks_of_a_chunk_become_holes(tmp_path: Path) -> None:
    data = bytearray(4 << 20)
    for mib in range(4):
        data[mib << 20] = 1
    writer = await partial_writer(tmp_path / ".f.rtpart")
    await writer.write(memoryview(data))
    await writer.close()
    assert (tmp_path / ".f.rtpart").read_bytes() == data
    assert (tmp_path / ".f.rtpart").stat().st_blocks * 512 <= 16 * ALIGN  # four blocks of data, not 4 MiB
