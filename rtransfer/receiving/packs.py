"""Small files that travel packed, many to a chunk: each checked against its own digest, then
put in place under its name (create, write, owner, mode, mtime, rename), one file a step, every
call through the file's own descriptor or its directory's."""

from __future__ import annotations

import os
from collections.abc import Iterator

import blake3

from rtransfer.protocol.model import Buffer, Entry
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving.dest import DestDirs, create_new, partial_name
from rtransfer.receiving.specials import DestPolicy, new_file_group


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# A new file takes its mode at creation, less this: only a mode the umask would cut needs a call.
_UMASK = _umask()


def check_packed(view: memoryview, packed: PackedFile, check: bool = True) -> tuple[memoryview, str | None]:
    """A packed file's bytes, and their BLAKE3 hex digest if it matches the one the sender sent (else None).

    Without ``check``, the sender's digest: a pack opened under the session's AES-GCM tag holds
    exactly the bytes the sender hashed. Hashing each small file again here held the GIL against
    the rest of the receiver, and cost a tree of small files 12% of its time (bench/README.md)."""
    data = view[packed.start : packed.start + packed.size]
    if not check:
        return data, packed.digest.hex()
    digest = blake3.blake3(data).digest()
    return data, digest.hex() if digest == packed.digest else None


def write_packed(
    dirs: DestDirs,
    files: list[PackedFile],
    entries: list[Entry],
    places: list[tuple[str, str, bool]],
    payload: Buffer,
    policy: DestPolicy,
    check: bool = True,
) -> Iterator[tuple[str, int, str | None]]:
    """Path, size and hex digest of each file once it is in place (None: its digest failed, and it
    has no name), one file a step (see ``workers.in_slices``).

    ``places``: each file's directory on disk, name, and whether it goes under that name at once
    (in a new subtree, itself under a hidden name until the end) or under a partial name first;
    either way a leftover there is the receiver's own (names.py) and is replaced, never written
    through. ``dirs``: the receiver's open directories, kept from pack to pack. ``check``: see
    ``check_packed``."""
    groups: dict[str, int] = {}  # directory -> the group a new file there gets
    with memoryview(payload) as view:
        for packed, entry, (parent, name, at_once) in zip(files, entries, places, strict=True):
            data, digest_hex = check_packed(view, packed, check)
            if digest_hex is None:
                yield entry.path, packed.size, None
                continue
            dirs.trim()
            dir_fd = dirs.fd(parent)
            part = name if at_once else partial_name(name)
            fd = create_new(part, dir_fd, entry.mode & 0o777)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                if entry.uid is not None:
                    if parent not in groups:
                        groups[parent] = new_file_group(dir_fd)
                    policy.own(entry, fd, new_group=groups[parent])
                mode = policy.mode(entry.mode)
                if mode & _UMASK or mode > 0o777:
                    os.fchmod(fd, mode)  # what the umask took, or special bits (after the owner: it clears them)
                if entry.mtime_ns is not None:
                    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
            if not at_once:
                os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            yield entry.path, packed.size, digest_hex
