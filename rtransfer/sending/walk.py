"""The sender's files: command-line sources, the tree walk that lists them in batches, and
the name rules both sides apply (safe relative paths, links that stay inside)."""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from msgspec import Struct
from msgspec.structs import replace

from rtransfer.errors import LocalIOError, UsageError
from rtransfer.filters import NO_FILTERS, Filters
from rtransfer.integrity import content_digest, source_identity
from rtransfer.names import is_working_name, link_stays_inside, local_error, safe_relative_path, shown
from rtransfer.protocol.model import CONTENTS, MAX_BATCH_ENTRIES, Entry

# Files up to this size travel packed, several to a chunk, and are never resumed part-way
# (re-sending one costs less than journaling it); larger ones go chunk by chunk, resumable.
PACK_FILE_MAX_BYTES = 1024 * 1024
FIRST_BATCH_ENTRIES = 64  # the file list's first batch; each next one twice the one before, up to MAX_BATCH_ENTRIES


Ident = tuple[int, int]  # (st_dev, st_ino): which file, whatever name it has now

# O_PATH (Linux): a name opened only to look at it, or names up from it; no driver's open runs.
_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


class Source(Struct):
    """An entry and where it is read from; one per file of a tree (slotted, as Entry is).

    ``ident`` is the file (or directory) the walk listed, and ``within`` the directory it listed it
    in (None: named on the command line): the sender reads that file and no other that takes its
    name meanwhile (``open_listed``). ``follow``: a link named on the command line, followed as the
    user named it (in a tree, a link is listed as one)."""

    entry: Entry
    local: str | None  # None: standard input
    ident: Ident | None = None
    within: Ident | None = None
    follow: bool = False


def open_listed(source: Source, directory: bool = False, dir_fd: int | None = None, wait: bool = True) -> int:
    """A descriptor on what the walk listed as ``source``, and on nothing else.

    Anyone who can write where the tree is could otherwise swap a name between the walk and the
    read: for a link to a file the sender may read and its receiver may not, a link to another
    directory, a device (whose open alone can act: a watchdog starts counting, a tape rewinds) or a
    FIFO (the open would wait for a writer). So a name is looked up in the directory the walk listed
    it in (``open_within``; or ``dir_fd``, already that one), never through a link the command line
    didn't name, and only what is the listed file is opened for reading (``_open_checked``).

    A file under a lease (Samba's oplocks, knfsd's delegations; any owner can take one) is waited
    for until its holder lets go, up to the kernel's lease-break-time (45 s): on the event loop's
    thread, where nothing may wait, ``wait=False`` raises BlockingIOError instead."""
    assert source.local is not None
    parent = open_within(source) if dir_fd is None and source.within is not None else dir_fd
    try:
        name = source.local if parent is None else os.path.basename(source.local)
        return _open_checked(name, parent, source, directory, wait)
    finally:
        if parent is not None and dir_fd is None:
            os.close(parent)


def open_within(source: Source) -> int:
    """The directory the walk listed ``source`` in, open to look names up from (see ``open_listed``)."""
    assert source.local is not None
    where = os.path.dirname(source.local) or "."
    try:
        fd = os.open(where, _DIR_FLAGS)
    except OSError as exc:
        raise local_error(exc, where) from None
    return _kept_if_listed(fd, where, source.within, directory=True)


def _open_checked(name: str, dir_fd: int | None, source: Source, directory: bool, wait: bool) -> int:
    """Where it can (Linux), the name is first opened O_PATH, which reaches no driver and waits for
    nothing; only once that is the listed file is it opened for reading, through /proc (the same
    file, not the name again). Elsewhere, one non-blocking open, checked after."""
    path = source.local or ""
    how = os.O_CLOEXEC | (0 if source.follow else os.O_NOFOLLOW) | (os.O_DIRECTORY if directory else 0)
    try:
        if _reopens():
            held = os.open(name, how | _O_PATH, dir_fd=dir_fd)
            try:
                _check_listed(held, path, source.ident, directory)
                return _reopen(f"/proc/self/fd/{held}", os.O_RDONLY | os.O_CLOEXEC | (how & os.O_DIRECTORY), wait)
            finally:
                os.close(held)
        fd = _kept_if_listed(
            os.open(name, how | os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd), path, source.ident, directory
        )
        os.set_blocking(fd, True)
        return fd
    except OSError as exc:
        if isinstance(exc, BlockingIOError) and not wait:
            raise
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _replaced(path) from None
        raise local_error(exc, path) from None


def _reopen(path: str, flags: int, wait: bool) -> int:
    """Non-blocking first: a lease held on the file then says so (EWOULDBLOCK) instead of waiting."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except BlockingIOError:
        if not wait:
            raise
        return os.open(path, flags)
    os.set_blocking(fd, True)
    return fd


@functools.cache
def _reopens() -> bool:
    return bool(_O_PATH) and os.path.isdir("/proc/self/fd")


def _check_listed(fd: int, path: str, ident: Ident | None, directory: bool) -> None:
    """The transfer fails unless ``fd`` is what the walk listed as ``path``."""
    st = os.fstat(fd)
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok or not _is(st, ident):
        raise _replaced(path)


def _kept_if_listed(fd: int, path: str, ident: Ident | None, directory: bool) -> int:
    """``fd`` if it is what the walk listed as ``path``; else closed, and the transfer fails."""
    try:
        _check_listed(fd, path, ident, directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is(st: os.stat_result, ident: Ident | None) -> bool:
    return ident is None or (st.st_dev, st.st_ino) == ident


def _listed_stat(source: Source) -> os.stat_result:
    """What the walk listed as ``source`` (named on the command line) is now: a walk starts again
    from the roots after a reconnect, and one may be gone or swapped since."""
    assert source.local is not None
    try:
        st = os.stat(source.local, follow_symlinks=source.follow)
    except OSError as exc:
        raise local_error(exc, source.local) from None
    if not _is(st, source.ident):
        raise _replaced(source.local)
    return st


def _replaced(path: str) -> LocalIOError:
    return LocalIOError(f"{shown(path)}: replaced by another file while being sent")


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
        follow = os.path.islink(arg)
        if stat.S_ISDIR(st.st_mode):
            name = CONTENTS if arg.endswith("/") else root_name
            entry = Entry(name, "dir", None, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            sources.append(Source(entry, arg, _ident(st), follow=follow))
        elif arg.endswith("/"):
            raise UsageError(f"{arg}: not a directory")
        elif stat.S_ISREG(st.st_mode):
            source = Source(_file_entry(root_name, st), arg, _ident(st), follow=follow)
            _identify(source)
            sources.append(source)
        else:
            raise UsageError(f"{arg}: not a regular file or directory")
    if stdin_name is not None and "-" not in args:
        raise UsageError("--name applies only to a '-' (standard input) source")
    _check_unique(sources)
    return sources


def _ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino


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


def _file_entry(name: str, st: os.stat_result) -> Entry:
    return Entry(name, "file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def _identify(source: Source, dir_fd: int | None = None) -> None:
    """A file large enough to be resumed part-way gets its identity (``source_identity``), read from
    the file the walk listed. Only those: reading every small file's head doubled the walk's cost."""
    entry = source.entry
    if source.within is None or (entry.size or 0) > PACK_FILE_MAX_BYTES:  # named: readable, before any byte moves
        try:
            fd = open_listed(source, dir_fd=dir_fd, wait=False)
        except BlockingIOError:  # under a lease: sent whole, without an identity to resume it by
            return
        try:
            if (entry.size or 0) > PACK_FILE_MAX_BYTES:
                entry.identity = source_identity(fd, entry.size or 0, entry.mtime_ns or 0)
        except OSError as exc:
            raise local_error(exc, source.local or "") from None
        finally:
            os.close(fd)


def with_content_digests(batch: list[Source]) -> list[Source]:
    """--checksum: each file's entry carries its content digest (one read of every file, as rsync -c)."""
    return [replace(s, entry=replace(s.entry, digest=_content_digest(s))) if _readable(s) else s for s in batch]


def _readable(source: Source) -> bool:
    return source.entry.kind == "file" and source.local is not None


def _content_digest(source: Source) -> str:
    fd = open_listed(source)
    try:
        return content_digest(fd)
    except OSError as exc:
        raise local_error(exc, source.local or "") from None
    finally:
        os.close(fd)


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
                root = replace(root, entry=self._owned(root.entry, _listed_stat(root)))
        yield root
        if root.entry.kind != "dir":
            return
        stack = [(root, "" if root.entry.path == CONTENTS else root.entry.path + "/")]
        while stack:
            subdirs: list[tuple[Source, str]] = []
            for source in self._listed_in(*stack.pop()):
                yield source
                if source.entry.kind == "dir":
                    subdirs.append((source, source.entry.path + "/"))
            stack.extend(reversed(sorted(subdirs, key=lambda d: d[1])))

    def _listed_in(self, listed_dir: Source, prefix: str) -> Iterator[Source]:
        """One directory's entries, as it yields them, from the directory the walk listed (a name
        swapped for a link since is not followed: ``open_listed``)."""
        local = listed_dir.local
        assert local is not None
        fd = open_listed(listed_dir, directory=True)
        try:
            with os.scandir(fd) as it:
                for de in it:
                    path = os.path.join(local, de.name)
                    if de.name[0] == "." and is_working_name(de.name):
                        self.warn(f"skipping {shown(path)}: receivers keep such names for their working files")
                        continue
                    entry_path = prefix + de.name
                    st = de.stat(follow_symlinks=False)
                    if self.filters and self.filters.excluded(entry_path, stat.S_ISDIR(st.st_mode)):
                        continue
                    target = os.readlink(de.name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
                    listed = self._entry(entry_path, path, st, target)
                    if listed is not None:
                        source = Source(listed, path, _ident(st), listed_dir.ident)
                        if listed.kind == "file":
                            _identify(source, fd)
                        yield source
        except OSError as exc:
            raise local_error(exc, os.path.join(local, exc.filename) if exc.filename else local) from None
        finally:
            os.close(fd)

    def _entry(self, entry_path: str, local: str, st: os.stat_result, target: str | None) -> Entry | None:
        """``target``: a link's text, read where the walk found it."""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            entry = _file_entry(entry_path, st)
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
            assert target is not None
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
