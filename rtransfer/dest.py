"""DEST on disk, reached without ever following a link: its directories opened one name at a
time from DEST's own descriptor, and the hidden partial name each file is written under."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from rtransfer.errors import LocalIOError

PARTIAL_SUFFIX = ".rtpart"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


class DestDirs:
    """Directories under DEST, opened one name at a time from DEST's own descriptor, never
    following a link (``O_NOFOLLOW``): a link planted inside DEST, by an earlier transfer or
    anyone else, cannot lead a write outside it. Missing directories are created."""

    MAX_OPEN = 256  # descriptors kept open at once; past that the cache starts over

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
        if len(self._fds) > self.MAX_OPEN:
            self.close()
        self._fds[rel_dir] = fd
        return fd

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
                    f"{name}: is a symbolic link or not a directory; refusing to write through it"
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
