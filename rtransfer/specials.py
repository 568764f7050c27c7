"""Entries without data (symbolic and hard links, FIFOs, device nodes), made under DEST at the end
of a transfer, once every file a hard link may name is in place; and owners, kept by number
when this side runs as root (as rsync -a does there)."""

from __future__ import annotations

import os
import stat

from rtransfer.dest import DestDirs, lstat_or_none, placed
from rtransfer.protocol.model import Entry

_FORMATS = {"fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
EUID, EGID = os.geteuid(), os.getegid()
IS_ROOT = EUID == 0


def already_here(
    entry: Entry, st: os.stat_result, name: str, dir_fd: int, dirs: DestDirs, on_disk: dict[str, str] | None = None
) -> bool:
    """Is what DEST has under this name already the entry, as listed? ``on_disk``: where the
    directories of a new subtree are while the transfer runs (under a hidden name)."""
    if entry.kind == "symlink":
        return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == entry.target
    if entry.kind == "hardlink":
        assert entry.target is not None
        parent, target_name = placed(entry.target)
        target = lstat_or_none(target_name, dirs.fd((on_disk or {}).get(parent, parent)))
        return target is not None and (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino)
    if stat.S_IFMT(st.st_mode) != _FORMATS[entry.kind]:
        return False
    return entry.device is None or st.st_rdev == entry.device


def make(entry: Entry, name: str, dir_fd: int, dirs: DestDirs) -> str | None:
    """Make ``entry`` as ``name`` in ``dir_fd``, replacing what is there; a warning if it can't be."""
    if entry.kind in ("char", "block") and not IS_ROOT:
        return f"skipping device node {entry.path}: only root can make one"
    if lstat_or_none(name, dir_fd) is not None:
        os.unlink(name, dir_fd=dir_fd)
    if entry.kind == "symlink":
        assert entry.target is not None
        os.symlink(entry.target, name, dir_fd=dir_fd)
    elif entry.kind == "hardlink":
        assert entry.target is not None
        parent, target_name = placed(entry.target)
        os.link(target_name, name, src_dir_fd=dirs.fd(parent), dst_dir_fd=dir_fd, follow_symlinks=False)
        return None  # the inode is the file's: its owner, mode and times are set there
    elif entry.kind == "fifo":
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
    else:
        os.mknod(name, 0o600 | _FORMATS[entry.kind], entry.device or 0, dir_fd=dir_fd)
    own(entry, name, dir_fd)
    if entry.kind != "symlink":
        os.chmod(name, entry.mode, dir_fd=dir_fd)
    if entry.mtime is not None:
        os.utime(name, (entry.mtime, entry.mtime), dir_fd=dir_fd, follow_symlinks=False)
    return None


def new_file_group(dir_fd: int) -> int:
    """The group a file made in this directory gets: the directory's if it is set-group-ID."""
    st = os.fstat(dir_fd)
    return st.st_gid if st.st_mode & stat.S_ISGID else EGID


def own(entry: Entry, name: str | int, dir_fd: int | None = None, new_group: int | None = None) -> None:
    """The entry's owner and group, by number, if listed and this side is root (a name or a
    descriptor). Before its mode: a change of owner clears set-user-ID bits. ``new_group``: the
    file was just made, in a directory that gives it that group; if it is already as listed, no call."""
    if IS_ROOT and entry.uid is not None and entry.gid is not None:
        if entry.uid == EUID and entry.gid == new_group:
            return
        if isinstance(name, int):
            os.fchown(name, entry.uid, entry.gid)
        else:
            os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
