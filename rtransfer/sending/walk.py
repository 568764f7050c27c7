"""The sender's files: command-line sources, the tree walk that lists them in batches, and
the name rules both sides apply (safe relative paths, links that stay inside)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from msgspec import Struct
from msgspec.structs import replace

from rtransfer.errors import UsageError
from rtransfer.filters import NO_FILTERS, Filters
from rtransfer.integrity import content_digest, source_identity
from rtransfer.names import is_working_name, link_stays_inside, local_error, safe_relative_path, shown
from rtransfer.protocol.model import CONTENTS, MAX_BATCH_ENTRIES, Entry

# Files up to this size travel packed, several to a chunk, and are never resumed part-way
# (re-sending one costs less than journaling it); larger ones go chunk by chunk, resumable.
PACK_FILE_MAX_BYTES = 1024 * 1024
FIRST_BATCH_ENTRIES = 64  # the file list's first batch; each next one twice the one before, up to MAX_BATCH_ENTRIES


class Source(Struct):
    """An entry and where it is read from; one per file of a tree (slotted, as Entry is)."""

    entry: Entry
    local: str | None  # None: standard input


def collect_sources(args: list[str], stdin_name: str | None) -> list[Source]:
    """The command line's sources, checked before any byte moves; directories are walked
    later, batch by batch (``listing``). A directory given with a trailing slash (``src/``)
    stands for what it holds, as rsync's: its entry is the transfer root, path "."."""
    sources: list[Source] = []
    for arg in args:
        if arg == "-":
            name = stdin_name or "stdin"
            sources.append(Source(Entry(safe_relative_path(name, UsageError), "file", None, 0o644), None))
            continue
        path = Path(arg)
        try:
            st = path.stat()
        except OSError as exc:
            raise local_error(exc, arg) from None
        root_name = path.resolve().name if path.name in ("", ".", "..") else path.name
        if stat.S_ISDIR(st.st_mode):
            name = CONTENTS if arg.endswith("/") else root_name
            sources.append(Source(Entry(name, "dir", None, stat.S_IMODE(st.st_mode), st.st_mtime_ns), arg))
        elif arg.endswith("/"):
            raise UsageError(f"{arg}: not a directory")
        elif stat.S_ISREG(st.st_mode):
            try:
                entry = _file_entry(root_name, arg, st)
                os.close(os.open(arg, os.O_RDONLY))  # readable, before any byte moves
            except OSError as exc:
                raise local_error(exc, arg) from None
            sources.append(Source(entry, arg))
        else:
            raise UsageError(f"{arg}: not a regular file or directory")
    if stdin_name is not None and "-" not in args:
        raise UsageError("--name applies only to a '-' (standard input) source")
    _check_unique(sources)
    return sources


def _check_unique(sources: list[Source]) -> None:
    """No two sources may land on one name: rtransfer does not merge them (a "src/" source's
    names are those it holds: listed only when there is another source to meet)."""
    if len(sources) < 2:
        return
    seen: dict[str, str] = {}
    for s in sources:
        names = [s.entry.path]
        if s.entry.path == CONTENTS:
            assert s.local is not None
            try:
                names = os.listdir(s.local)
            except OSError as exc:
                raise local_error(exc, s.local) from None
        for name in names:
            if name in seen:
                raise UsageError(f"two sources would both be stored as {name!r} ({seen[name]} and {s.local or '-'})")
            seen[name] = s.local or "-"


def _file_entry(name: str, path: str, st: os.stat_result) -> Entry:
    """Only a file large enough to be resumed part-way needs an identity (see PACK_FILE_MAX_BYTES):
    reading every small file's head for one doubled the walk's cost."""
    identity = source_identity(path, st) if st.st_size > PACK_FILE_MAX_BYTES else None
    return Entry(name, "file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, identity=identity)


def with_content_digests(batch: list[Source]) -> list[Source]:
    """--checksum: each file's entry carries its content digest (one read of every file, as rsync -c)."""
    try:
        return [
            Source(replace(s.entry, digest=content_digest(s.local)), s.local)
            if s.entry.kind == "file" and s.local is not None
            else s
            for s in batch
        ]
    except OSError as exc:
        raise local_error(exc, exc.filename or "a source") from None


def listing(
    sources: list[Source],
    safe_links: bool,
    warn: Callable[[str], None],
    batch_entries: int = MAX_BATCH_ENTRIES,
    filters: Filters = NO_FILTERS,
) -> Iterator[Source | None]:
    """Every entry of every source, with None after each batch (take one with ``next_batch``): the
    walk is lazy, so memory does not grow with the tree, and it goes one entry a step, so the
    sender's event loop can walk in slices (``workers.in_slices``).

    The first batches are small and double up to ``batch_entries``: the first one goes out once
    the batch after it is listed too (to know whether it is the last), and the receiver plans it
    before any byte of data moves, so a small one starts the data sooner."""
    walk = Walk(safe_links, warn, filters, owners=os.geteuid() == 0)
    size, listed = min(FIRST_BATCH_ENTRIES, batch_entries), 0
    for source in sources:
        for item in walk.entries(source):
            yield item
            listed += 1
            if listed == size:
                yield None
                size, listed = min(2 * size, batch_entries), 0


def next_batch(entries: Iterator[Source | None]) -> Iterator[Source]:
    """The entries of ``listing`` up to its next batch's end (none once it is over)."""
    for item in entries:
        if item is None:
            return
        yield item


_SPECIAL_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


class Walk:
    """The tree walk of one transfer: the rules that select entries, and the files with more than
    one name seen so far (a later name of one is listed as a hard link to the first)."""

    def __init__(self, safe_links: bool, warn: Callable[[str], None], filters: Filters, owners: bool) -> None:
        self.safe_links = safe_links
        self.warn = warn
        self.filters = filters
        self.owners = owners  # as root: list each entry's owner and group
        self._inodes: dict[tuple[int, int], str] = {}

    def entries(self, root: Source) -> Iterator[Source]:
        """A directory's entries before its subdirectories' (each directory listed before what it holds).

        Files stream in the order the directory yields them; only subdirectory names wait on
        a stack, so one directory of a million files costs no more memory than a thousand."""
        if root.local is not None:
            if root.entry.path != CONTENTS and self.filters.excluded(root.entry.path, root.entry.kind == "dir"):
                return
            if self.owners:
                root = Source(self._owned(root.entry, os.stat(root.local)), root.local)
        yield root
        if root.entry.kind != "dir":
            return
        assert root.local is not None
        stack = [(root.local, "" if root.entry.path == CONTENTS else root.entry.path + "/")]
        while stack:
            local, prefix = stack.pop()
            subdirs: list[tuple[str, str]] = []
            try:
                with os.scandir(local) as it:
                    for de in it:
                        if de.name[0] == "." and is_working_name(de.name):
                            self.warn(f"skipping {shown(de.path)}: receivers keep such names for their working files")
                            continue
                        entry_path = prefix + de.name
                        st = de.stat(follow_symlinks=False)
                        if self.filters and self.filters.excluded(entry_path, stat.S_ISDIR(st.st_mode)):
                            continue
                        listed = self._entry(entry_path, de.path, st)
                        if listed is not None:
                            yield Source(listed, de.path)
                            if listed.kind == "dir":
                                subdirs.append((de.path, entry_path + "/"))
            except OSError as exc:
                raise local_error(exc, exc.filename or local) from None
            stack.extend(reversed(sorted(subdirs)))

    def _entry(self, entry_path: str, local: str, st: os.stat_result) -> Entry | None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            entry = _file_entry(entry_path, local, st)
            if st.st_nlink > 1:
                first = self._inodes.setdefault((st.st_dev, st.st_ino), entry_path)
                if first != entry_path:
                    return self._owned(
                        Entry(entry_path, "hardlink", None, stat.S_IMODE(mode), st.st_mtime_ns, first), st
                    )
                entry.linked = True  # its other names follow as hard links to it: the receiver allows only such
            return self._owned(entry, st)
        if stat.S_ISDIR(mode):
            return self._owned(Entry(entry_path, "dir", None, stat.S_IMODE(mode), st.st_mtime_ns), st)
        if stat.S_ISLNK(mode):
            target = os.readlink(local)
            if self.safe_links and not link_stays_inside(entry_path, target):
                self.warn(f"skipping symbolic link {shown(local)}: it points outside the transfer (--safe-links)")
                return None
            return self._owned(Entry(entry_path, "symlink", None, 0o777, st.st_mtime_ns, target), st)
        kind = _SPECIAL_KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            self.warn(f"skipping special file {shown(local)} (a socket)")
            return None
        device = st.st_rdev if kind != "fifo" else None
        return self._owned(Entry(entry_path, kind, None, stat.S_IMODE(mode), st.st_mtime_ns, device=device), st)

    def _owned(self, entry: Entry, st: os.stat_result) -> Entry:
        """The owner and group of an entry just made here (set in place: nothing else holds it yet)."""
        if self.owners:
            entry.uid, entry.gid = st.st_uid, st.st_gid
        return entry
