"""Entries without data (symbolic and hard links, FIFOs, device nodes), made under DEST at the end
of a transfer, once every file a hard link may name is in place; and what of an entry's owner,
group and mode bits this receiver keeps (``DestPolicy``: its own options, never the sender's)."""

from __future__ import annotations

import os
import stat

from msgspec import Struct

from rtransfer.names import shown
from rtransfer.protocol.model import Entry
from rtransfer.receiving.dest import DestDirs, lstat_or_none, placed

_FORMATS = {"fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
EUID, EGID = os.geteuid(), os.getegid()
IS_ROOT = EUID == 0
_SET_ID = stat.S_ISUID | stat.S_ISGID


class DestPolicy(Struct, frozen=True):
    """What this receiver lets a sender do in DEST. Whoever holds the code (or runs the far side
    of ssh) is the sender, so what rsync -a keeps because the person typing it named the source
    is here the receiver's to allow, under rsync's names."""

    overwrite: bool = False  # replace what DEST has under a listed name
    safe_links: bool = False  # refuse a symbolic link that points outside DEST
    delete: bool = False  # remove what the transfer's directories hold beyond its list (the sender may ask)
    delete_excluded: bool = False  # ... what the sender's rules exclude too
    dry_run: bool = False  # say what would be done; change nothing (the sender may ask)
    direct_io: bool = True  # large files bypass the page cache (direct_io.py)
    owner: bool = False  # -o, as root: owners as listed, and set-user-ID and set-group-ID bits kept
    group: bool = False  # -g, as root: groups as listed
    devices: bool = False  # --devices, as root: device nodes made (otherwise skipped, and said once)
    file_dest: bool = False  # over ssh, DEST with no trailing slash: one file sent where nothing is takes its name

    def mode(self, mode: int) -> int:
        """The mode bits kept: set-user-ID and set-group-ID only with ``owner``, as tar keeps them
        only with --same-owner (a setuid file of the receiving user's, made by anyone with the code,
        is no better than one of root's)."""
        return mode if self.owner else mode & ~_SET_ID

    def owners(self, entry: Entry) -> tuple[int, int]:
        """The (uid, gid) to give ``entry``, -1 for "as made"; both -1 unless root keeps them."""
        if not IS_ROOT or entry.uid is None or entry.gid is None:
            return -1, -1
        return (entry.uid if self.owner else -1), (entry.gid if self.group else -1)

    def own(self, entry: Entry, fd: int, new_group: int | None = None) -> None:
        """Owner and group by number through the descriptor, before the mode: a change of owner
        clears set-user-ID bits. ``new_group``: the file was just made here, in a directory that
        gives it that group; if it is already as listed, no call."""
        uid, gid = self.owners(entry)
        if (uid, gid) == (-1, -1) or (new_group is not None and uid in (-1, EUID) and gid in (-1, new_group)):
            return
        os.fchown(fd, uid, gid)

    def makes_devices(self) -> bool:
        return self.devices and IS_ROOT


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


def make(entry: Entry, name: str, dir_fd: int, dirs: DestDirs, policy: DestPolicy) -> None:
    """Make ``entry`` as ``name`` in ``dir_fd``, replacing what is there (the plan allowed it)."""
    if lstat_or_none(name, dir_fd) is not None:
        os.unlink(name, dir_fd=dir_fd)
    if entry.kind == "symlink":
        assert entry.target is not None
        os.symlink(entry.target, name, dir_fd=dir_fd)
        uid, gid = policy.owners(entry)
        if (uid, gid) != (-1, -1):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        if entry.mtime_ns is not None:
            os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        return
    if entry.kind == "hardlink":
        _link(entry, name, dir_fd, dirs)
        return  # the inode is the file's: its owner, mode and times are set there
    if entry.kind == "fifo":
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
    else:
        os.mknod(name, 0o600 | _FORMATS[entry.kind], entry.device or 0, dir_fd=dir_fd)
    _settle_node(entry, name, dir_fd, policy)


def _link(entry: Entry, name: str, dir_fd: int, dirs: DestDirs) -> None:
    """A hard link to a file of this transfer, checked again here: a link to a symbolic link
    would read wherever that one points, whatever --safe-links said of it."""
    assert entry.target is not None
    parent, target_name = placed(entry.target)
    target_dir = dirs.fd(parent)
    st = lstat_or_none(target_name, target_dir)
    if st is None or not stat.S_ISREG(st.st_mode):
        raise OSError(f"refusing hard link {shown(entry.path)}: {shown(entry.target)} is not a regular file here")
    os.link(target_name, name, src_dir_fd=target_dir, dst_dir_fd=dir_fd, follow_symlinks=False)


def _settle_node(entry: Entry, name: str, dir_fd: int, policy: DestPolicy) -> None:
    """A FIFO's or device node's owner, mode and times, through the node itself: an O_PATH descriptor
    (opening a device would open the device), named by /proc/self/fd for the calls that take no
    descriptor, so nothing swapped in at ``name`` meanwhile is ever followed."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != _FORMATS[entry.kind]:
            raise OSError(f"{shown(entry.path)}: replaced while being made")
        node = f"/proc/self/fd/{fd}"
        uid, gid = policy.owners(entry)
        if (uid, gid) != (-1, -1):
            os.chown(node, uid, gid)
        os.chmod(node, policy.mode(entry.mode))
        if entry.mtime_ns is not None:
            os.utime(node, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def new_file_group(dir_fd: int) -> int:
    """The group a file made in this directory gets: the directory's if it is set-group-ID."""
    st = os.fstat(dir_fd)
    return st.st_gid if st.st_mode & stat.S_ISGID else EGID
