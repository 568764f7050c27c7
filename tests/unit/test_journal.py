"""The resume journal: what a partial file may resume from, and syncing that never holds up the writes."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from rtransfer import sink as files
from rtransfer.journal import JournalRecord, boot_id, journal_path, read_journal, write_journal
from rtransfer.protocol.model import Entry
from rtransfer.sink import DirectorySink, plan_alone

MIB = 1 << 20


def test_after_a_restart_of_the_machine_only_synced_bytes_count() -> None:
    record = JournalRecord("v1", MIB, written_bytes=96 * MIB, durable_bytes=64 * MIB, boot="boot-a")
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
    ],
)
def test_a_journal_that_cannot_be_trusted_is_ignored(tmp_path: Path, obj: dict[str, object]) -> None:
    journal_path(tmp_path / "f").write_text(json.dumps(obj))
    assert read_journal(tmp_path / "f") is None


def test_a_journal_reads_back_as_written(tmp_path: Path) -> None:
    record = JournalRecord("v1", MIB, 5 * MIB, 4 * MIB, boot_id())
    write_journal(tmp_path / "f", record)
    assert read_journal(tmp_path / "f") == record


async def test_syncing_runs_beside_the_writes_and_the_journal_learns_what_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver must not stop writing while a sync runs: a synchronous one cost 2.2 s per GiB here."""
    monkeypatch.setattr(files, "FSYNC_EVERY_BYTES", 2 * MIB)
    release = threading.Event()
    synced: list[int] = []

    def slow_fdatasync(fd: int) -> None:
        synced.append(fd)
        assert release.wait(10)

    monkeypatch.setattr(files.os, "fdatasync", slow_fdatasync)
    sink = DirectorySink(tmp_path, overwrite=False, direct_io=False)
    plan_alone(sink, MIB, Entry("f", "file", 8 * MIB, identity="v1"))

    def journal() -> JournalRecord:
        record = read_journal(tmp_path / "f")
        assert record is not None
        return record

    for n in range(4):  # the journal is rewritten every MiB of an 8 MiB file; a sync starts at 2 MiB
        await asyncio.wait_for(sink.write(0, n * MIB, b"x" * MIB), 5)
    assert len(synced) == 1  # one sync at a time, still running: the writes went on
    assert (journal().written_bytes, journal().durable_bytes) == (4 * MIB, 0)
    release.set()
    await asyncio.wait_for(sink._settle_sync(0), 5)
    await sink.write(0, 4 * MIB, b"x" * MIB)
    assert (journal().written_bytes, journal().durable_bytes) == (5 * MIB, 2 * MIB)
    await sink.suspend()


@pytest.mark.parametrize(("boot", "kept"), [(boot_id(), 3 * MIB), ("an earlier boot", MIB)])
def test_the_receiver_resumes_from_what_the_journal_can_vouch_for(tmp_path: Path, boot: str, kept: int) -> None:
    files.partial_path(tmp_path / "f").write_bytes(b"x" * 3 * MIB)
    write_journal(tmp_path / "f", JournalRecord("v1", MIB, 3 * MIB, MIB, boot))
    sink = DirectorySink(tmp_path, overwrite=False)
    plan = plan_alone(sink, MIB, Entry("f", "file", 8 * MIB, identity="v1"))
    assert plan.start_offsets == {0: kept}
