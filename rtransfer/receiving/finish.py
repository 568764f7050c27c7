"""The end of a transfer into DEST, once every file is in place: new subtrees take their names,
links, FIFOs and devices are made (a hard link names a file; nothing is written through a link),
--delete runs, then directory owners, times and modes are set, deepest first, as rsync and tar
do: writing a directory's contents changes its mtime, and a read-only directory must not block
its own contents."""

from __future__ import annotations

import os

from rtransfer.errors import LocalIOError
from rtransfer.names import shown
from rtransfer.protocol.model import CONTENTS
from rtransfer.receiving import specials
from rtransfer.receiving.delete import Deletion
from rtransfer.receiving.dest import DestDirs, lstat_or_none, marker_name, placed, remove
from rtransfer.receiving.landing import Landing


def finish_transfer(land: Landing) -> None:
    """For a worker thread: the end, or, in a dry run, what --delete would remove."""
    if land.dry:
        if land.deleting and land.root_fd >= 0:
            with DestDirs(land.root_fd, create=False) as dirs:
                _delete(land, dirs, remove=False)
        return
    land.open_dirs.close()
    _unhide(land)
    policy, ending = land.policy, land.ending
    with DestDirs(land.root_fd) as dirs:
        for entry in ending.specials:
            dirs.trim()
            if entry.kind == "hardlink" and entry.target in ending.kept:
                land.warnings.append(f"{shown(entry.path)}: not linked to {shown(entry.target)}, which was kept")
                continue
            parent, name = placed(entry.path)
            specials.make(entry, name, dirs.fd(parent), dirs, policy)
        if land.deleting:
            _delete(land, dirs, remove=True)
        for entry in reversed(ending.dirs):
            dirs.trim()
            rel = "" if entry.path == CONTENTS else entry.path
            dir_fd = dirs.fd(rel)
            ours = rel in ending.made or policy.overwrite  # one that was here keeps its mode and owner
            if ours:
                policy.own(entry, dir_fd)
            if entry.mtime_ns is not None:
                os.utime(dir_fd, ns=(entry.mtime_ns, entry.mtime_ns))
            if ours:
                os.fchmod(dir_fd, policy.mode(entry.mode))


def devices_warning(land: Landing) -> str | None:
    skipped = land.ending.devices_skipped
    if not skipped:
        return None
    nodes = "a device node" if skipped == 1 else f"{skipped} device nodes"
    return f"skipped {nodes}: recv --devices, as root, makes them"


def _delete(land: Landing, dirs: DestDirs, remove: bool) -> None:
    deletion = Deletion(land.filters, remove, land.warnings.append, land.delete_excluded)
    land.items.extend(("delete", p) for p in deletion.run(dirs, land.ending.listed))


def _unhide(land: Landing) -> None:
    """Each new subtree, complete, takes its name: one rename for all it holds."""
    with DestDirs(land.root_fd) as dirs:
        for hidden, final in land.ending.hidden_roots:
            dirs.trim()
            parent, name = placed(final)
            parent_fd = dirs.fd(parent)
            if lstat_or_none(name, parent_fd) is not None:
                there = shown(str(land.root / final))
                raise LocalIOError(f"{there}: appeared during the transfer (the new one is {shown(hidden)})")
            os.rename(placed(hidden)[1], name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            remove(marker_name(name), parent_fd)
    land.hidden.clear()
    land.ending.hidden_roots.clear()
