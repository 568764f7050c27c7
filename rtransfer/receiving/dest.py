"""DEST on disk, reached without ever following a link: its directories opened one name at a
time from DEST's own descriptor, and the working names beside each file that belong to the
receiver alone (names.py: a partial file, its journal, a new subtree's hidden directory and the
marker that vouches for it). A peer can never list such a name; what is found at one is this
receiver's only when its own records say so, and is removed otherwise."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from rtransfer.errors import LocalIOError
from rtransfer.names import JOURNAL_SUFFIX, MARKER_SUFFIX, PARTIAL_SUFFIX, shown

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A new file is made here and now, or not at all: a name that leads anywhere already (a link, a
# file with other names, a FIFO) is never opened for writing.
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A file that is there already, opened without following a link or waiting (a FIFO found there
# would hold an open for reading until a writer came, and no signal ends that wait).
EXISTING_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MARKER_MAX_BYTES = 256


NAME_MAX = 255  # bytes in one name, on the file systems rtransfer writes to


def working_name(name: str, suffix: str) -> str:
    """``.NAME`` + ``suffix``: what the receiver keeps beside file ``name``. For a name too long to
    carry it (with ".tmp" after it, within NAME_MAX), a digest of the name stands in, itself shaped
    as a working name (``..DIGEST.rtpart``), so that no name a peer may list gives the same one."""
    raw = name.encode("utf-8", "surrogateescape")
    if 1 + len(raw) + len(suffix) + len(".tmp") <= NAME_MAX:
        return f".{name}{suffix}"
    return f"..{hashlib.blake2b(raw, digest_size=16).hexdigest()}{PARTIAL_SUFFIX}{suffix}"


def partial_name(name: str) -> str:
    return working_name(name, PARTIAL_SUFFIX)


def journal_name(name: str) -> str:
    return working_name(name, JOURNAL_SUFFIX)


def marker_name(name: str) -> str:
    return working_name(name, MARKER_SUFFIX)


def remove(name: str, dir_fd: int) -> None:
    """Remove a file-like leftover at ``name``, if any (a link itself, never what it points to)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise LocalIOError(f"{shown(name)}: a directory where rtransfer keeps a working file; remove it") from None


def create_new(name: str, dir_fd: int, mode: int = 0o600) -> int:
    """A file made at ``name`` by this call (``NEW_FILE_FLAGS``); the caller has decided that
    whatever was there is a leftover of its own, removed first."""
    try:
        return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        remove(name, dir_fd)
        return os.open(name, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)


def open_existing(name: str, dir_fd: int, flags: int = os.O_RDONLY) -> int | None:
    """A regular file that is there already (None if nothing is), opened as ``EXISTING_FLAGS``
    say; anything else at ``name`` is refused."""
    try:
        fd = os.open(name, flags | EXISTING_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link; a FIFO with no reader; a directory
            raise LocalIOError(f"{shown(name)}: not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LocalIOError(f"{shown(name)}: not a regular file")
    return fd


def read_small(name: str, dir_fd: int, limit: int) -> bytes | None:
    """A small regular file's bytes (a journal, a marker): None if it is missing or larger."""
    fd = open_existing(name, dir_fd)
    if fd is None:
        return None
    with open(fd, "rb", buffering=0) as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def replace_file(name: str, dir_fd: int, data: bytes) -> None:
    """``name`` holds ``data``, whole or not at all: written beside it, then renamed over it."""
    tmp = f"{name}.tmp"
    fd = create_new(tmp, dir_fd)
    with open(fd, "wb", buffering=0) as f:
        f.write(data)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def mark(name: str, parent_fd: int, dir_fd: int) -> None:
    """Vouch for the hidden directory ``dir_fd`` of new subtree ``name``: the marker beside it names
    its inode, which nobody can give another directory."""
    st = os.fstat(dir_fd)
    replace_file(marker_name(name), parent_fd, json.dumps([st.st_dev, st.st_ino]).encode())


def marked(name: str, parent_fd: int, dir_fd: int) -> bool:
    """Is ``dir_fd`` the hidden directory this receiver's marker vouches for?"""
    try:
        data = read_small(marker_name(name), parent_fd, _MARKER_MAX_BYTES)
        device, inode = json.loads(data or b"null")
    except (LocalIOError, ValueError, TypeError):
        return False
    st = os.fstat(dir_fd)
    return (st.st_dev, st.st_ino) == (device, inode)


def check_dest(root: Path, may_be_file: bool = False) -> None:
    """Fail before listening if DEST can never work: not a directory (unless ``may_be_file``: one
    file may land under its name, DestPolicy.file_dest), or neither it nor (when it does not exist
    yet) the nearest directory above it that does can be written."""
    if may_be_file and root.is_file():
        root = root.parent
    if root.exists() and not root.is_dir():
        raise LocalIOError(f"{root}: not a directory")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise LocalIOError(f"{root}: {existing} is not a directory")
    why = unwritable(existing)
    if why:
        raise LocalIOError(f"{root}: {why}" + ("" if existing == root else f" (in {existing})"))


def unwritable(directory: Path) -> str:
    """Why this user can't make entries in ``directory`` ("" if it can). ``access`` only says
    whether: a read-only file system is said as such, not as a permission (as rsync says EROFS)."""
    if os.access(directory, os.W_OK | os.X_OK):
        return ""
    return "read-only file system" if os.statvfs(directory).f_flag & os.ST_RDONLY else "permission denied"


class Spot:
    """Where one large file goes: its directory, held by a descriptor of its own (worker threads use
    it while the loop's cache of directories may close its own), and its name."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd = os.dup(dir_fd)
        self.name = name
        self.part = partial_name(name)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


class DestDirs:
    """Directories under DEST, opened one name at a time from DEST's own descriptor, never
    following a link (``O_NOFOLLOW``): a link planted inside DEST, by an earlier transfer or
    anyone else, cannot lead a write outside it. Missing directories are created.

    A descriptor ``fd`` returns stays open until the next ``trim``, which its owner calls between
    entries (never while it holds one: a cache that closed descriptors on its own, when full,
    closed one its caller was still using)."""

    MAX_OPEN = 256  # descriptors kept open from entry to entry; past that ``trim`` starts over

    def __init__(self, root_fd: int, created: set[str] | None = None, create: bool = True) -> None:
        """``created`` collects the directories made here: nothing in them predates the transfer.
        Without ``create`` (a dry run), a missing directory is FileNotFoundError."""
        self._fds: dict[str, int] = {"": root_fd}
        self._created = created if created is not None else set()
        self._create = create

    def fd(self, rel_dir: str) -> int:
        """The directory ``rel_dir`` ("a/b", or "" for DEST), created if missing."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        parent, _, name = rel_dir.rpartition("/")
        parent_fd = self.fd(parent)
        try:
            fd = self._open(name, parent_fd)
        except FileNotFoundError:
            if not self._create:
                raise
            self._mkdir(name, parent_fd, rel_dir)
            fd = self._open(name, parent_fd)
        self._fds[rel_dir] = fd
        return fd

    def trim(self) -> None:
        """Between entries: past MAX_OPEN descriptors, close them all (but DEST's)."""
        if len(self._fds) > self.MAX_OPEN:
            self.close()

    def make(self, rel_dir: str) -> None:
        """``rel_dir`` made if missing, without opening it: in a directory made here, nothing
        predates the transfer, so a new subtree costs one mkdir a directory (no lookup first),
        and only a directory that gets subdirectories is ever opened."""
        if rel_dir in self._created:
            return
        parent, _, name = rel_dir.rpartition("/")
        fresh = bool(rel_dir) and parent in self._created and self._create
        if not (fresh and self._mkdir(name, self.fd(parent), rel_dir)):
            self.fd(rel_dir)  # not new, or someone else made it meanwhile: opened, so checked not to be a link

    def _mkdir(self, name: str, parent_fd: int, rel_dir: str) -> bool:
        """Whether this call made the directory."""
        try:
            os.mkdir(name, 0o777, dir_fd=parent_fd)
        except FileExistsError:
            return False
        self._created.add(rel_dir)
        return True

    @staticmethod
    def _open(name: str, parent_fd: int) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LocalIOError(
                    f"{shown(name)}: is a symbolic link or not a directory; refusing to write through it"
                ) from None
            raise

    def close(self) -> None:
        root = self._fds.pop("")
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {"": root}

    def __enter__(self) -> DestDirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def placed(entry_path: str) -> tuple[str, str]:
    """An entry's (parent directory, name), for an entry ``plan`` has already checked."""
    parent, _, name = entry_path.rpartition("/")
    return parent, name


def lstat_or_none(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
