"""Small files read into packs, many to a chunk: each read whole and hashed as soon as it is read,
one file a step (the walk's order keeps a directory's files together, so each open looks up one
name from its directory's descriptor)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3

from rtransfer.errors import LocalIOError
from rtransfer.protocol.model import WritableBuffer
from rtransfer.protocol.pack import PackedFile, table_bytes, write_table
from rtransfer.sending.walk import Ident, Source, open_listed, open_within


def read_pack(small: list[tuple[int, Source]], buf: WritableBuffer, wait: bool = False) -> Iterator[PackedFile]:
    """Read whole small files ``(index, source)`` into ``buf`` as a pack (protocol/pack.py), each hashed as soon as it
    is read, one file a step (see ``workers.in_slices``); the pack's table is written after the last.
    Each is the file the walk listed (``walk.open_listed``); one under a lease raises BlockingIOError
    unless ``wait`` (on a worker thread: see ``reader._queue_pack``).

    A file that is no longer the size it was listed with fails the transfer, as a large
    one does: what arrives is always a whole version of the file."""
    view = memoryview(buf)
    start = table_bytes(len(small))
    files: list[PackedFile] = []
    probe = bytearray(1)
    with _Parents(wait) as parents:
        for index, source in small:
            path, size = source.local or "", source.entry.size or 0  # packable: both set
            fd = parents.open(source)
            try:
                got = 0
                while True:  # a short read from a regular file is its end: one call per file, as a rule
                    want = size - got + 1
                    n = os.readv(fd, [view[start + got : start + size], probe])
                    got += n
                    if n == 0 or n < want or got > size:
                        break
            finally:
                os.close(fd)
            if got != size:
                raise LocalIOError(f"{path}: changed while being sent ({size} bytes expected, {got} or more read)")
            packed = PackedFile(index, size, blake3.blake3(view[start : start + size]).digest(), start)
            files.append(packed)
            yield packed
            start += size
    write_table(view, files)


class _Parents:
    """The directory of the file opened last, kept open for the next: the files of a directory
    are listed together, so each open looks up one name, not every directory of its path."""

    def __init__(self, wait: bool) -> None:
        self._wait = wait
        self._where: tuple[str, Ident | None] = ("", None)
        self._fd = -1

    def open(self, source: Source) -> int:
        """The file the walk listed as ``source`` (``walk.open_listed``)."""
        if source.within is None:  # named on the command line
            return open_listed(source, wait=self._wait)
        where = (os.path.dirname(source.local or ""), source.within)
        if where != self._where or self._fd < 0:
            self.close()
            self._fd = open_within(source)
            self._where = where
        return open_listed(source, dir_fd=self._fd, wait=self._wait)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> _Parents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
