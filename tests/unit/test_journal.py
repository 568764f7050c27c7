"""The resume journal: what a partial file may resume from, what it vouches for, and syncing that
never holds up the writes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtransfer.protocol.model import Entry
from rtransfer.receiving import write as files
from rtransfer.receiving.journal import JournalRecord, boot_id, read_journal, write_journal
from rtransfer.receiving.sink import DirectorySink
from rtransfer.receiving.specials import DestPolicy
from tests.unit.harness import plan_alone

MIB = 1 << 20


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def record_for(path: Path, written: int, durable: int, boot: str, identity: str = "v1") -> JournalRecord:
    st = path.stat()
    return JournalRecord(identity, MIB, written, durable, boot, st.st_dev, st.st_ino)


def test_after_a_restart_of_the_machine_only_synced_bytes_count() -> None:
    record = JournalRecord("v1", MIB, written_bytes=96 * MIB, durable_bytes=64 * MIB, boot="boot-a", device=1, inode=2)
    assert record.resumable_bytes("boot-a") == 96 * MIB  # a killed process: the page cache kept the rest
    assert record.resumable_bytes("boot-b") == 64 * MIB  # a crash: only what fdatasync covered


def test_the_boot_is_named_by_the_system() -> None:
    assert boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.parametrize(
    "obj",
    [
        {"identity": "v1", "chunk_bytes": MIB, "written_bytes": MIB},  # an older journal: nothing known durable
        {"identity": "v1", "chunk_bytes": MIB, "written_bytes": MIB, "durable_bytes": 2 * MIB, "boot": "b"},
        {"identity": "v1", "chunk_bytes": 0, "written_bytes": MIB, "durable_bytes": 0, "boot": "b"},
        {"identity": "v1", "chunk_bytes": MIB, "written_bytes": MIB, "durable_bytes": 0, "boot": "b"},  # no inode
    ],
)
def test_a_journal_that_cannot_be_trusted_is_ignored(tmp_path: Path, dir_fd: int, obj: dict[str, object]) -> None:
    (tmp_path / ".f.rtjournal").write_text(json.dumps(obj))
    assert read_journal(dir_fd, "f") is None


def test_a_journal_reads_back_as_written(tmp_path: Path, dir_fd: int) -> None:
    record = JournalRecord("v1", MIB, 5 * MIB, 4 * MIB, boot_id(), 3, 4)
    write_journal(dir_fd, "f", record)
    assert read_journal(dir_fd, "f") == record


def test_a_journal_is_never_read_through_a_link_nor_from_a_fifo(tmp_path: Path, dir_fd: int) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(json.dumps({"identity": "v1"}))
    (tmp_path / ".f.rtjournal").symlink_to(elsewhere)
    assert read_journal(dir_fd, "f") is None
    os.mkfifo(tmp_path / ".g.rtjournal")
    assert read_journal(dir_fd, "g") is None  # at once: a FIFO is not opened to wait for a writer


def test_a_journal_is_written_beside_a_link_planted_at_its_next_name_not_through_it(
    tmp_path: Path, dir_fd: int
) -> None:
    """The journal's next version is made where rsync would make a temporary file: a link planted at
    that name (finding 3 of the trust issue, which made a root receiver write outside DEST) is replaced."""
    outside = tmp_path / "OUTSIDE"
    (tmp_path / ".f.rtjournal.tmp").symlink_to(outside)
    write_journal(dir_fd, "f", JournalRecord("v1", MIB, MIB, 0, boot_id(), 1, 2))
    assert not outside.exists()
    assert read_journal(dir_fd, "f") is not None


async def test_syncing_runs_beside_the_writes_and_the_journal_learns_what_it_covered(
    tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver must not stop writing while a sync runs: a synchronous one cost 2.2 s per GiB here."""
    monkeypatch.setattr(files, "FSYNC_EVERY_BYTES", 2 * MIB)
    release = threading.Event()
    synced: list[int] = []

    def slow_fdatasync(fd: int) -> None:
        synced.append(fd)
        assert release.wait(10)

    monkeypatch.setattr(files.os, "fdatasync", slow_fdatasync)
    sink = DirectorySink(tmp_path, DestPolicy(direct_io=False))
    plan_alone(sink, MIB, Entry("f", "file", 8 * MIB, identity="v1"))

    def journal() -> JournalRecord:
        record = read_journal(dir_fd, "f")
        assert record is not None
        return record

    for n in range(4):  # the journal is rewritten every MiB of an 8 MiB file; a sync starts at 2 MiB
        await asyncio.wait_for(sink.write(0, n * MIB, b"x" * MIB), 5)
    assert len(synced) == 1  # one sync at a time, still running: the writes went on
    assert (journal().written_bytes, journal().durable_bytes) == (4 * MIB, 0)
    partial = (tmp_path / ".f.rtpart").stat()
    assert (journal().device, journal().inode) == (partial.st_dev, partial.st_ino)
    release.set()
    await asyncio.wait_for(sink.partials._settle_sync(0), 5)
    await sink.write(0, 4 * MIB, b"x" * MIB)
    assert (journal().written_bytes, journal().durable_bytes) == (5 * MIB, 2 * MIB)
    await sink.suspend()


@pytest.mark.parametrize(("boot", "kept"), [(boot_id(), 3 * MIB), ("an earlier boot", MIB)])
def test_the_receiver_resumes_from_what_the_journal_can_vouch_for(
    tmp_path: Path, dir_fd: int, boot: str, kept: int
) -> None:
    (tmp_path / ".f.rtpart").write_bytes(b"x" * 3 * MIB)
    write_journal(dir_fd, "f", record_for(tmp_path / ".f.rtpart", 3 * MIB, MIB, boot))
    sink = DirectorySink(tmp_path, DestPolicy())
    plan = plan_alone(sink, MIB, Entry("f", "file", 8 * MIB, identity="v1"))
    assert plan.start_offsets == {0: kept}


def test_a_partial_file_the_journal_does_not_name_is_removed_not_resumed(tmp_path: Path, dir_fd: int) -> None:
    """Another file at the partial name (here: a hard link to a file outside the transfer, with a
    journal written for a file that was there before) is someone else's: removed, never written."""
    (tmp_path / ".f.rtpart").write_bytes(b"x" * 3 * MIB)
    write_journal(dir_fd, "f", record_for(tmp_path / ".f.rtpart", 3 * MIB, 3 * MIB, boot_id()))
    (tmp_path / ".f.rtpart").unlink()
    important = tmp_path / "important.txt"
    important.write_bytes(b"y" * 3 * MIB)
    os.link(important, tmp_path / ".f.rtpart")
    sink = DirectorySink(tmp_path, DestPolicy())
    plan = plan_alone(sink, MIB, Entry("f", "file", 8 * MIB, identity="v1"))
    assert plan.start_offsets == {}
    assert not (tmp_path / ".f.rtpart").exists() and not (tmp_path / ".f.rtjournal").exists()
    assert important.read_bytes() == b"y" * 3 * MIB and important.stat().st_nlink == 1


def test_a_partial_file_with_another_name_too_is_not_resumed(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / ".f.rtpart").write_bytes(b"x" * 3 * MIB)
    write_journal(dir_fd, "f", record_for(tmp_path / ".f.rtpart", 3 * MIB, 3 * MIB, boot_id()))
    os.link(tmp_path / ".f.rtpart", tmp_path / "other")
    plan = plan_alone(DirectorySink(tmp_path, DestPolicy()), MIB, Entry("f", "file", 8 * MIB, identity="v1"))
    assert plan.start_offsets == {}
    assert (tmp_path / "other").read_bytes() == b"x" * 3 * MIB


async def test_modes_and_times_go_through_the_file_never_a_name_swapped_meanwhile(tmp_path: Path) -> None:
    """Finding 10: modes and times were set by path after the files were written, and chmod follows
    links: a local user who can write in DEST could swap the partial name for a link meanwhile."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    outside.chmod(0o600)
    os.utime(outside, (1, 1))
    out = tmp_path / "out"
    sink = DirectorySink(out, DestPolicy(direct_io=False))
    plan_alone(sink, MIB, Entry("f", "file", 2 * MIB, 0o755, 1234000000000, identity="v1"))
    await sink.write(0, 0, b"y" * MIB)
    await sink.write(0, MIB, b"y" * MIB)
    os.rename(out / ".f.rtpart", out / "moved")  # the race: the name now leads outside
    os.symlink(outside, out / ".f.rtpart")
    await sink.finish(0, ok=True)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600 and outside.stat().st_mtime == 1
    assert stat.S_IMODE((out / "moved").stat().st_mode) == 0o755 and (out / "moved").stat().st_mtime == 1234.0
