"""What a transfer is made of, shared by the protocol, the file walker and the pipeline.

These types say nothing about the wire: the codec (writing.py, reading.py) turns them into
bytes, and files.py, integrity.py and the sinks use them without importing it.
"""

from __future__ import annotations

from typing import Protocol

from msgspec import Struct

Buffer = bytes | bytearray | memoryview
WritableBuffer = bytearray | memoryview

DIGEST_BYTES = 32  # a file's BLAKE3 digest
CONTENT_DIGEST_BYTES = 16  # --checksum: a listed file's BLAKE3, cut to 128 bits (it only decides a skip)
MAX_BATCH_ENTRIES = 1024  # entries in one batch of the file list
CONTENTS = "."  # the path of a "src/" source's own entry: what it holds lands in DEST itself


class Entry(Struct):
    """One item of a transfer: a path relative to the transfer root. Changed only through ``replace``
    once listed; not frozen, since the walk fills in a file's hard links and owner as it finds them."""

    path: str
    kind: str  # "file", "dir", "symlink", "hardlink", "fifo", "char" or "block"
    size: int | None = None  # None: a stream whose length is known only at its end
    mode: int = 0o644
    mtime_ns: int | None = None  # nanoseconds, as the file system keeps them
    target: str | None = None  # symlinks: the link text; hard links: the path of the entry they share data with
    identity: str | None = None  # version of a file's data (size, mtime, head digest); None: a stream
    digest: str | None = None  # --checksum: the hex BLAKE3 of its content (CONTENT_DIGEST_BYTES)
    uid: int | None = None  # owner and group by number, listed only by a sender running as root
    gid: int | None = None
    device: int | None = None  # "char" and "block": the device number (st_rdev)
    linked: bool = False  # a file with more names, listed later as hard links to this one


class Manifest(Struct, frozen=True):
    """What a transfer is, before its file list: the list follows in batches."""

    transfer_id: str
    chunk_bytes: int
    window: int  # chunks in flight on each connection
    streams: int = 1  # connections the sender opens for this transfer
    delta: bool = True  # the receiver may describe its old copy of a file, for the sender to send only changes
    filters: tuple[str, ...] = ()  # the sender's rules ("+ PAT"/"- PAT"): --delete keeps what they exclude
    delete: bool = False  # the sender asks the receiver to delete what the transfer's directories hold beyond it
    delete_excluded: bool = False  # ... what its rules exclude there too (the receiver must allow --delete)
    dry_run: bool = False  # the receiver says what it would do, and writes nothing
    one_file: bool = False  # the transfer is one file: over ssh, a DEST that isn't there may be its name (scp's rule)


def reorder_span(manifest: Manifest) -> int:
    """Chunks a transfer may have claimed beyond its oldest undelivered one, which is what the
    receiver may hold out of order: each connection's window. (Twice that, so the others keep busy
    while one recovers a loss, measured no faster over a lossy 100 ms path: bench/README.md.)"""
    return manifest.window * manifest.streams


Basis = tuple[tuple[int, bytes], ...]  # delta: the receiver's old copy of a file, (length, digest) per chunk


class Signature(Struct, frozen=True):
    """Part of the receiver's old copy of file ``file_index``, cut at content-defined boundaries
    (delta.py): its chunks from ``offset`` on, each as (length, digest). A large copy takes several."""

    file_index: int
    offset: int
    chunks: tuple[tuple[int, bytes], ...]


class EntryBatch(Struct, frozen=True):
    """Entries ``first``, ``first + 1``, ... of the file list; ``last`` ends the list.

    The list streams while data flows (as rsync's incremental recursion does), so
    neither side ever holds all of it and the first byte does not wait for the walk."""

    first: int
    entries: tuple[Entry, ...]
    last: bool


class Buffers(Protocol):
    """Where large frame buffers come from and go back to: the driver's pool, or fresh memory."""

    def get(self, size: int) -> WritableBuffer: ...
    def put(self, buf: WritableBuffer) -> None: ...


class FreshBuffers:
    def get(self, size: int) -> WritableBuffer:
        return bytearray(size)

    def put(self, buf: WritableBuffer) -> None:
        pass


FRESH_BUFFERS = FreshBuffers()
