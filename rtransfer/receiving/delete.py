"""--delete: make each directory of the transfer hold only what the transfer listed, as rsync
--delete-after does. Only directories the transfer listed are looked in; what the sender's rules
exclude is kept (unless --delete-excluded), inside a directory being removed too, which then
stays, as rsync's "cannot delete non-empty directory". A link found there is removed itself,
never followed, and every directory is entered through its parent's descriptor, so nothing
outside DEST is reached."""

from __future__ import annotations

import os
from collections.abc import Callable

from rtransfer.filters import Filters
from rtransfer.names import shown
from rtransfer.receiving.dest import DIR_FLAGS, DestDirs


class ListedNames:
    """The names each of the transfer's directories got, kept only when --delete asks for them."""

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {}  # directory ("" for DEST itself) -> its names in the list
        self.directories: set[str] = set()  # those the list holds: only they are looked in

    def directory(self, path: str) -> None:
        self.names.setdefault(path, set())
        self.directories.add(path)

    def entry(self, parent: str, name: str) -> None:
        self.names.setdefault(parent, set()).add(name)

    def clear(self) -> None:
        self.names.clear()
        self.directories.clear()


class Deletion:
    """One --delete pass: what it removes (or, not ``remove``, would), each path said once, a
    directory's ending in "/"; ``warn`` hears of a directory kept for what the rules protect in it."""

    def __init__(self, filters: Filters, remove: bool, warn: Callable[[str], None], excluded_too: bool) -> None:
        self.filters = filters
        self.remove = remove
        self.warn = warn
        self.excluded_too = excluded_too  # --delete-excluded: the rules protect nothing
        self.found: list[str] = []

    def run(self, dirs: DestDirs, listed: ListedNames) -> list[str]:
        """Every listed directory's extra names, as rsync's: ``send src`` trims DEST/src, never DEST
        (nor, for one file sent, the directory it lands in). A directory that is not there (a dry
        run's new one) holds nothing."""
        for rel, names in listed.names.items():
            if rel not in listed.directories:
                continue
            dirs.trim()
            try:
                fd = dirs.fd(rel)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name, is_dir in _entries(fd):
                if name not in names:
                    self._extra(fd, name, f"{rel}/{name}" if rel else name, is_dir)
        return self.found

    def _protected(self, path: str, is_dir: bool) -> bool:
        return not self.excluded_too and self.filters.excluded(path, is_dir)

    def _extra(self, parent_fd: int, name: str, path: str, is_dir: bool) -> bool:
        """Remove one extra name (a directory, with what it holds first); whether it is gone."""
        if self._protected(path, is_dir):
            return False
        if not is_dir:
            if self.remove:
                os.unlink(name, dir_fd=parent_fd)
            self.found.append(path)
            return True
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        try:
            emptied = all([self._extra(fd, n, f"{path}/{n}", d) for n, d in _entries(fd)])
        finally:
            os.close(fd)
        if not emptied:
            self.warn(f"cannot delete non-empty directory: {shown(path)} (it holds what the rules exclude)")
            return False
        if self.remove:
            os.rmdir(name, dir_fd=parent_fd)
        self.found.append(path + "/")
        return True


def _entries(fd: int) -> list[tuple[str, bool]]:
    """A directory's names, sorted, each with whether it is a directory (not following a link)."""
    with os.scandir(os.dup(fd)) as it:  # scandir closes what it is given
        return sorted((de.name, de.is_dir(follow_symlinks=False)) for de in it)
