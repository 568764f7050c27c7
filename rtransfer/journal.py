"""Resume state kept beside each partial file: which version of the source it holds, and how much.

The partial file is always a prefix of the source (chunks are written in order),
so the journal needs only the source's identity and two byte counts:

- ``written_bytes``: what reached the file. The journal is rewritten (write +
  rename, no fsync) every 1/64 of the file; that survives a killed process,
  since the page cache does, but not a machine crash.
- ``durable_bytes``: what an ``fdatasync`` of the file had covered when the journal
  was written. The receiver syncs every ``FSYNC_EVERY_BYTES`` in the background,
  never holding up its writes (waiting for each sync slowed a buffered transfer
  noticeably). Whichever version of the journal
  a crash leaves, its durable count was true when it was written.

The journal also names the boot it was written in: after a reboot only the
durable bytes are trusted. Whatever is resumed, the whole-file BLAKE3 check at
the end still stands between the partial file and its final name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

JOURNAL_SUFFIX = ".rtjournal"
FSYNC_EVERY_BYTES = 256 * 1024 * 1024


def journal_interval_bytes(file_bytes: int) -> int:
    """How often to rewrite the journal: 1/64 of the file, within 1 to 32 MiB.

    Each rewrite costs the writer a file write and a rename, so rewriting every chunk
    would cost a noticeable share of the CPU on a large file, while a journal that lags
    by 1/64 of the file costs at most that much re-sent after a kill (with the chunks in flight, about
    as much again over several connections, the two kept a kill's re-sending under 10%)."""
    return min(32 << 20, max(1 << 20, file_bytes // 64))


@functools.cache
def boot_id() -> str:
    """This boot of the machine ("" where the system does not say: then every journal counts as this boot's)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class JournalRecord:
    identity: str
    chunk_bytes: int
    written_bytes: int
    durable_bytes: int
    boot: str

    def resumable_bytes(self, current_boot: str) -> int:
        """All that was written if the machine has not restarted since; else only what was synced."""
        return self.written_bytes if self.boot == current_boot else self.durable_bytes


def journal_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{JOURNAL_SUFFIX}")


def read_journal(final: Path) -> JournalRecord | None:
    """The journal for ``final``, or None if there is none or it cannot be trusted."""
    try:
        obj = json.loads(journal_path(final).read_text("utf-8"))
        record = JournalRecord(
            str(obj["identity"]),
            int(obj["chunk_bytes"]),
            int(obj["written_bytes"]),
            int(obj["durable_bytes"]),
            str(obj["boot"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    valid = record.chunk_bytes > 0 and 0 <= record.durable_bytes <= record.written_bytes
    return record if valid else None


def write_journal(final: Path, record: JournalRecord) -> None:
    path = journal_path(final)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)


def remove_journal(final: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        journal_path(final).unlink()
