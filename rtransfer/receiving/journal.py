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

It names the partial file's inode too: a file at the partial name is resumed only if it is
the one this receiver wrote (``vouches``), never one someone else put there (a link to a file
outside the transfer, say); anything else there is removed. Both live beside the file, reached
from its directory's descriptor (dest.py).
"""

from __future__ import annotations

import functools
import json
import os
import stat
from pathlib import Path

from msgspec import Struct
from msgspec.structs import asdict

from rtransfer.errors import LocalIOError
from rtransfer.receiving.dest import journal_name, read_small, remove, replace_file

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


class JournalRecord(Struct, frozen=True):
    identity: str
    chunk_bytes: int
    written_bytes: int
    durable_bytes: int
    boot: str
    device: int  # the partial file's, as fstat says
    inode: int

    def vouches(self, st: os.stat_result) -> bool:
        """Is ``st`` (the partial name's, not following a link) the file this journal is about?"""
        mine = (st.st_dev, st.st_ino) == (self.device, self.inode) and st.st_uid == os.geteuid()
        return mine and stat.S_ISREG(st.st_mode) and st.st_nlink == 1

    def resumable_bytes(self, current_boot: str) -> int:
        """All that was written if the machine has not restarted since; else only what was synced."""
        return self.written_bytes if self.boot == current_boot else self.durable_bytes


_JOURNAL_MAX_BYTES = 4096


def read_journal(dir_fd: int, name: str) -> JournalRecord | None:
    """The journal for file ``name``, or None if there is none or it cannot be trusted."""
    try:
        obj = json.loads(read_small(journal_name(name), dir_fd, _JOURNAL_MAX_BYTES) or b"null")
        record = JournalRecord(
            str(obj["identity"]),
            int(obj["chunk_bytes"]),
            int(obj["written_bytes"]),
            int(obj["durable_bytes"]),
            str(obj["boot"]),
            int(obj["device"]),
            int(obj["inode"]),
        )
    except (OSError, LocalIOError, ValueError, KeyError, TypeError):
        return None
    valid = record.chunk_bytes > 0 and 0 <= record.durable_bytes <= record.written_bytes
    return record if valid else None


def write_journal(dir_fd: int, name: str, record: JournalRecord) -> None:
    replace_file(journal_name(name), dir_fd, json.dumps(asdict(record)).encode())


def remove_journal(dir_fd: int, name: str) -> None:
    remove(journal_name(name), dir_fd)
