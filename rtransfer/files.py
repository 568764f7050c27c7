"""The sender's files: command-line sources, the tree walk that lists them in batches, and
the name rules both sides apply (safe relative paths, links that stay inside)."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from rtransfer.errors import LocalIOError, UsageError
from rtransfer.integrity import content_digest, source_identity
from rtransfer.protocol.model import MAX_BATCH_ENTRIES, Entry

PARTIAL_SUFFIX = ".rtpart"
_DRIVE = re.compile(r"^[A-Za-z]:")


def local_error(exc: OSError, what: str | os.PathLike[str]) -> LocalIOError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return LocalIOError(f"{os.fspath(what)}: {reason}")


# Files up to this size travel packed, several to a chunk, and are never resumed part-way
# (re-sending one costs less than journaling it); larger ones go chunk by chunk, resumable.
PACK_FILE_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Source:
    entry: Entry
    local: str | None  # None: standard input


def collect_sources(args: list[str], stdin_name: str | None) -> list[Source]:
    """The command line's sources, checked before any byte moves; directories are walked
    later, batch by batch (``list_batches``)."""
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
            sources.append(Source(Entry(root_name, "dir", None, stat.S_IMODE(st.st_mode), st.st_mtime), arg))
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
    seen: set[str] = set()
    for s in sources:
        if s.entry.path in seen:
            raise UsageError(f"two sources would both be stored as {s.entry.path!r}")
        seen.add(s.entry.path)
    return sources


def _file_entry(name: str, path: str, st: os.stat_result) -> Entry:
    """Only a file large enough to be resumed part-way needs an identity (see PACK_FILE_MAX_BYTES):
    reading every small file's head for one doubled the walk's cost."""
    identity = source_identity(path, st) if st.st_size > PACK_FILE_MAX_BYTES else None
    return Entry(name, "file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime, identity=identity)


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


def list_batches(
    sources: list[Source], safe_links: bool, warn: Callable[[str], None], batch_entries: int = MAX_BATCH_ENTRIES
) -> Iterator[list[Source]]:
    """Every entry of every source, in batches: the walk is lazy, so memory does not grow with the tree."""
    batch: list[Source] = []
    for source in sources:
        for item in _walk(source, safe_links, warn):
            batch.append(item)
            if len(batch) == batch_entries:
                yield batch
                batch = []
    if batch:
        yield batch


def _walk(root: Source, safe_links: bool, warn: Callable[[str], None]) -> Iterator[Source]:
    """A directory's entries before its subdirectories' (each directory listed before what it holds).

    Files stream in the order the directory yields them; only subdirectory names wait on
    a stack, so one directory of a million files costs no more memory than a thousand."""
    yield root
    if root.entry.kind != "dir":
        return
    assert root.local is not None
    stack = [(root.local, root.entry.path)]
    while stack:
        local, rel = stack.pop()
        subdirs: list[tuple[str, str]] = []
        try:
            with os.scandir(local) as it:
                for de in it:
                    entry_path = f"{rel}/{de.name}"
                    st = de.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if stat.S_ISREG(mode):
                        yield Source(_file_entry(entry_path, de.path, st), de.path)
                    elif stat.S_ISDIR(mode):
                        yield Source(Entry(entry_path, "dir", None, stat.S_IMODE(mode), st.st_mtime), de.path)
                        subdirs.append((de.path, entry_path))
                    elif stat.S_ISLNK(mode):
                        target = os.readlink(de.path)
                        if safe_links and not link_stays_inside(entry_path, target):
                            warn(f"skipping symbolic link {de.path}: it points outside the transfer (--safe-links)")
                        else:
                            yield Source(Entry(entry_path, "symlink", None, 0o777, st.st_mtime, target), de.path)
                    else:
                        warn(f"skipping special file {de.path}")
        except OSError as exc:
            raise local_error(exc, exc.filename or local) from None
        stack.extend(reversed(sorted(subdirs)))


def safe_relative_path(name: str, error: type[Exception] = LocalIOError) -> str:
    """A peer-supplied name, checked to be a relative path that cannot leave the destination."""
    if "\x00" in name or "\\" in name or name.startswith("/") or _DRIVE.match(name):
        raise error(f"refusing unsafe name {name!r}")
    parts = name.split("/")  # raw, not normalised: "a//b" or "./a" could alias another entry
    if "" in parts or "." in parts or ".." in parts:
        raise error(f"refusing unsafe name {name!r}")
    return name


def link_stays_inside(link_path: str, target: str) -> bool:
    """Does a link at ``link_path`` (relative to the transfer root) resolve inside the root?"""
    if not target or target.startswith("/") or "\x00" in target or "\\" in target or _DRIVE.match(target):
        return False
    depth = len(PurePosixPath(link_path).parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True
