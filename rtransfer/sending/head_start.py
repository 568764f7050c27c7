"""Hashing the files named on the command line before the reader needs them.

A transfer first waits for its peer: ssh's login and the far side's start, a receiver yet to
type the code. Meanwhile those files are hashed (BLAKE3) on a thread of their own, and the
reader takes each digest where this left it: what was hashed ahead it only checks, a step at a
time, with xxh3 (integrity.FileDigest). Over ssh, a 1 GiB file's BLAKE3 otherwise took ~0.2 s of
CPU in the data's way, on a machine whose cores ssh's cipher was waiting for (bench/README.md).

It stops once data moves (``stop``): going on beside the reader would read each file twice. At
most an eighth of the machine's memory (and HEAD_START_MAX_BYTES) is hashed ahead, so that what
was read is still in the page cache when the reader comes to it; each MiB hashed ahead keeps
~2 KB (the digest's state before it). A file that was replaced or written to since (another
inode, size or mtime) starts afresh; a write that moved no timestamp is found by the reader's
check, which then hashes from that step on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future

from rtransfer.errors import RtransferError
from rtransfer.integrity import READ_STEP_BYTES, FileDigest
from rtransfer.sending.walk import PACK_FILE_MAX_BYTES, Source, open_listed
from rtransfer.workers import in_worker

HEAD_START_MAX_BYTES = 4 << 30
_FALLBACK_BUDGET_BYTES = 256 << 20
STEP_WAIT_S = 2.0  # a step reads READ_STEP_BYTES: milliseconds, even from a disk that seeks

Ahead = tuple[FileDigest, tuple[int, ...]]  # a file's digest fed from its start, and the file as it was then


def signature(fd: int) -> tuple[int, ...]:
    """Which file, and whether it was written to since (a chmod or a new link leaves these be)."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def budget_bytes() -> int:
    """An eighth of the machine's memory, at most HEAD_START_MAX_BYTES."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_BUDGET_BYTES
    return min(memory // 8, HEAD_START_MAX_BYTES)


class HeadStart:
    """Hashes ``sources`` in order, at most ``budget`` bytes in all, until ``stop``."""

    def __init__(self, sources: list[Source], budget: int) -> None:
        self._stopping = threading.Event()
        self.hashed: Future[dict[str, Ahead]] = Future()  # what was hashed, once hashing ends
        self._ahead: dict[str, Ahead] | None = None
        if sources and budget > 0:
            unique = list({s.local: s for s in sources}.values())
            threading.Thread(target=self._run, args=(unique, budget), daemon=True).start()
        else:
            self.hashed.set_result({})

    def _run(self, sources: list[Source], budget: int) -> None:
        ahead: dict[str, Ahead] = {}
        try:
            step = memoryview(bytearray(READ_STEP_BYTES))
            for source in sources:
                if self._stopping.is_set() or budget <= 0:
                    break
                with contextlib.suppress(OSError, RtransferError):  # the reader meets the error, and says it
                    # The listed file only (never a FIFO, a device or another one); a leased one is the reader's.
                    fd = open_listed(source, wait=False)
                    try:
                        digest, before = FileDigest(), signature(fd)
                        while not self._stopping.is_set() and budget > 0:
                            n = digest.hash_ahead(fd, step[: min(len(step), budget)])
                            if not n:
                                break
                            budget -= n
                        ahead[source.local or ""] = (digest, before)
                    finally:
                        os.close(fd)
        finally:
            self.hashed.set_result(ahead)

    def stop(self) -> None:
        """Data moves: hash no more (the step under way ends within a millisecond)."""
        self._stopping.set()

    async def claim(self, path: str, fd: int) -> FileDigest | None:
        """What was hashed of ``path``, if ``fd`` (the reader's) is that file as it was; once. A
        step that doesn't end (a file system that hangs) is left behind, with all it hashed."""
        self.stop()
        if self._ahead is None:
            try:
                self._ahead = await in_worker(self.hashed.result, STEP_WAIT_S)
            except TimeoutError:
                self._ahead = {}
        digest, before = self._ahead.pop(path, (None, ()))
        return digest if digest is not None and before == signature(fd) else None


def hashed_ahead(sources: list[Source]) -> list[Source]:
    """The sources worth a head start: regular files read chunk by chunk (small ones travel packed,
    hashed as they are read, in one go)."""
    return [
        s
        for s in sources
        if s.entry.kind == "file" and (s.entry.size or 0) > PACK_FILE_MAX_BYTES and s.local is not None
    ]
