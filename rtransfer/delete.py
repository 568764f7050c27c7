"""--delete: make each directory of the transfer hold only what the transfer listed, as rsync
--delete-after does. Only directories the transfer listed are looked in; what the sender's rules
exclude is kept; a link found there is removed itself, never followed, and a directory is removed
through descriptors (``shutil.rmtree`` with ``dir_fd``), so nothing outside DEST is reached."""

from __future__ import annotations

import os
import shutil

from rtransfer.dest import DestDirs
from rtransfer.filters import Filters


class Listed:
    """The names each of the transfer's directories got, kept only when --delete asks for them."""

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {}  # directory ("" for DEST itself) -> its names in the list

    def directory(self, path: str) -> None:
        self.names.setdefault(path, set())

    def entry(self, parent: str, name: str) -> None:
        self.names.setdefault(parent, set()).add(name)

    def clear(self) -> None:
        self.names.clear()


def extraneous(dirs: DestDirs, listed: Listed, filters: Filters, remove: bool) -> list[str]:
    """What the transfer's directories hold beyond the list (a directory's path ends in "/"),
    removed if ``remove``. A directory that is not there (a dry run's new one) holds nothing."""
    found: list[str] = []
    for rel, names in listed.names.items():
        try:
            fd = dirs.fd(rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        prefix = f"{rel}/" if rel else ""
        with os.scandir(os.dup(fd)) as it:  # scandir closes what it is given
            extra = [(de.name, de.is_dir(follow_symlinks=False)) for de in it if de.name not in names]
        for name, is_dir in sorted(extra):
            if filters.excluded(prefix + name, is_dir):
                continue
            if remove:
                if is_dir:
                    shutil.rmtree(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            found.append(prefix + name + ("/" if is_dir else ""))
    return found
