"""Small files that travel packed, many to a chunk: each checked against its own digest, then
put in place under its name in one worker call (create, write, mode, mtime, rename)."""

from __future__ import annotations

import os

import blake3

from rtransfer.dest import NEW_FILE_FLAGS, PARTIAL_SUFFIX, DestDirs, placed
from rtransfer.protocol.model import Buffer, Entry
from rtransfer.protocol.pack import PackedFile
from rtransfer.specials import own


def check_packed(view: memoryview, packed: PackedFile) -> tuple[memoryview, str | None]:
    """A packed file's bytes, and their BLAKE3 hex digest if it matches the one the sender sent (else None)."""
    data = view[packed.start : packed.start + packed.size]
    hasher = blake3.blake3(data)
    return data, hasher.hexdigest() if hasher.digest() == packed.digest else None


def write_packed(
    root_fd: int, files: list[PackedFile], entries: list[Entry], payload: Buffer
) -> list[tuple[str, int, str | None]]:
    done: list[tuple[str, int, str | None]] = []
    with memoryview(payload) as view, DestDirs(root_fd) as dirs:
        for packed, entry in zip(files, entries, strict=True):
            data, digest_hex = check_packed(view, packed)
            if digest_hex is None:
                done.append((entry.path, packed.size, None))
                continue
            parent, name = placed(entry.path)
            dir_fd = dirs.fd(parent)
            part = f".{name}{PARTIAL_SUFFIX}"
            fd = os.open(part, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                own(entry, fd)
                os.fchmod(fd, entry.mode)
                if entry.mtime is not None:
                    os.utime(fd, (entry.mtime, entry.mtime))
            finally:
                os.close(fd)
            os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            done.append((entry.path, packed.size, digest_hex))
    return done
