"""Local files: walking sources, safe destination paths, partial files and atomic rename."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiofiles
import aiofiles.os

from rtransfer.direct_io import PartialWriter, direct_io_suits
from rtransfer.errors import LocalIOError, UsageError
from rtransfer.integrity import FileDigest, source_identity
from rtransfer.journal import (
    FSYNC_EVERY_BYTES,
    JournalRecord,
    boot_id,
    journal_interval_bytes,
    read_journal,
    remove_journal,
    write_journal,
)
from rtransfer.protocol.frames import Buffer, Entry, Manifest
from rtransfer.stdio import StdStream
from rtransfer.workers import in_worker

PARTIAL_SUFFIX = ".rtpart"
_DRIVE = re.compile(r"^[A-Za-z]:")


def local_error(exc: OSError, what: str | os.PathLike[str]) -> LocalIOError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return LocalIOError(f"{os.fspath(what)}: {reason}")


@dataclass(frozen=True)
class Source:
    entry: Entry
    local: Path | None  # None: standard input


def collect_sources(args: list[str], stdin_name: str | None, warn: Callable[[str], None]) -> list[Source]:
    """Turn command-line sources into transfer entries; fails before any byte moves."""
    sources: list[Source] = []
    for arg in args:
        if arg == "-":
            name = stdin_name or "stdin"
            sources.append(Source(Entry(safe_relative_path(name, UsageError).as_posix(), "file", None, 0o644), None))
            continue
        path = Path(arg)
        try:
            st = path.stat()
        except OSError as exc:
            raise local_error(exc, arg) from None
        root_name = path.resolve().name if path.name in ("", ".", "..") else path.name
        if stat.S_ISDIR(st.st_mode):
            sources.extend(_walk(path, root_name, warn))
        elif stat.S_ISREG(st.st_mode):
            sources.append(Source(_file_entry(root_name, path, st), path))
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


def _file_entry(name: str, path: Path, st: os.stat_result) -> Entry:
    """Reading the head for the identity also proves the file is readable, before any byte moves."""
    try:
        identity = source_identity(path, st)
    except OSError as exc:
        raise local_error(exc, path) from None
    return Entry(name, "file", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime, identity=identity)


def _walk(root: Path, root_name: str, warn: Callable[[str], None]) -> list[Source]:
    root_st = root.stat()
    out = [Source(Entry(root_name, "dir", None, stat.S_IMODE(root_st.st_mode), root_st.st_mtime), root)]

    def on_error(exc: OSError) -> None:
        raise local_error(exc, exc.filename or root)

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames.sort()
        base = Path(dirpath)
        rel = PurePosixPath(root_name, *base.relative_to(root).parts)
        for name in sorted(dirnames + filenames):
            full = base / name
            st = full.lstat()
            entry_path = (rel / name).as_posix()
            if stat.S_ISLNK(st.st_mode):
                if name in dirnames:
                    dirnames.remove(name)  # never descend through a link
                target = os.readlink(full)
                if link_stays_inside(entry_path, target):
                    out.append(Source(Entry(entry_path, "symlink", None, 0o777, None, target), full))
                else:
                    warn(f"skipping symbolic link {full}: it points outside the transfer")
            elif stat.S_ISDIR(st.st_mode):
                out.append(Source(Entry(entry_path, "dir", None, stat.S_IMODE(st.st_mode), st.st_mtime), full))
            elif stat.S_ISREG(st.st_mode):
                out.append(Source(_file_entry(entry_path, full, st), full))
            else:
                warn(f"skipping special file {full}")
    return out


def safe_relative_path(name: str, error: type[Exception] = LocalIOError) -> PurePosixPath:
    """A peer-supplied name as a relative path that cannot leave the destination."""
    if "\x00" in name or "\\" in name or name.startswith("/") or _DRIVE.match(name):
        raise error(f"refusing unsafe name {name!r}")
    parts = name.split("/")  # raw, not normalised: "a//b" or "./a" could alias another entry
    if any(part in ("", ".", "..") for part in parts):
        raise error(f"refusing unsafe name {name!r}")
    return PurePosixPath(*parts)


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


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


@dataclass(frozen=True)
class Plan:
    """Where each file starts: bytes already here of the same version, or whole and done."""

    start_offsets: dict[int, int]
    done: tuple[int, ...]


class DirectorySink:
    """Writes a transfer under DEST: each file into a hidden partial name, renamed once verified.

    Partial files are prefixes of their source with a journal beside them, so a
    later connection (or a later run) resumes them instead of starting over.
    """

    def __init__(self, root: Path, overwrite: bool, direct_io: bool = True) -> None:
        self.root = root
        self.overwrite = overwrite
        self.direct_io = direct_io
        self._entries: tuple[Entry, ...] = ()
        self._chunk_bytes = 0
        self._finals: dict[int, Path] = {}
        self._open: dict[int, PartialWriter] = {}
        self._written: dict[int, int] = {}
        self._journaled: dict[int, int] = {}
        self._durable: dict[int, int] = {}
        self._syncing: dict[int, asyncio.Task[None]] = {}

    def check(self) -> None:
        """Fail before listening if DEST can never work."""
        if self.root.exists() and not self.root.is_dir():
            raise LocalIOError(f"{self.root}: not a directory")
        if self.root.is_dir() and not os.access(self.root, os.W_OK | os.X_OK):
            raise LocalIOError(f"{self.root}: permission denied")

    def plan(self, manifest: Manifest) -> Plan:
        """Check every name and the free space, create directories, find what can resume."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            root = self.root.resolve(strict=True)
        except OSError as exc:
            raise local_error(exc, self.root) from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise LocalIOError(f"{self.root}: permission denied")
        self._entries, self._chunk_bytes = manifest.entries, manifest.chunk_bytes
        self._finals.clear()
        starts: dict[int, int] = {}
        done: list[int] = []
        for index, entry in enumerate(manifest.entries):
            final = root.joinpath(*safe_relative_path(entry.path).parts)
            self._refuse_links(root, final)
            if entry.kind == "dir":
                try:
                    final.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise local_error(exc, final) from None
                continue
            self._finals[index] = final
            if entry.kind == "symlink":
                if not link_stays_inside(entry.path, entry.target or ""):
                    raise LocalIOError(f"refusing link {entry.path!r} -> {entry.target!r}: it points outside DEST")
            elif self._already_here(final, entry):
                done.append(index)
                continue
            if (final.exists() or final.is_symlink()) and not self.overwrite:
                raise LocalIOError(f"{final}: already exists (use --overwrite to replace it)")
            if entry.kind == "file":
                starts[index], self._durable[index] = self._resume_point(final, entry)
        need = sum((e.size or 0) - starts.get(i, 0) for i, e in enumerate(manifest.entries) if i not in done)
        free = shutil.disk_usage(root).free
        if need > free:
            raise LocalIOError(f"{self.root}: not enough free space ({need} bytes needed, {free} available)")
        return Plan({i: n for i, n in starts.items() if n}, tuple(done))

    @staticmethod
    def _already_here(final: Path, entry: Entry) -> bool:
        """rsync's quick check: same size and mtime means this file arrived before."""
        try:
            st = final.lstat()
        except OSError:
            return False
        return (
            stat.S_ISREG(st.st_mode)
            and entry.size == st.st_size
            and entry.mtime is not None
            and abs(st.st_mtime - entry.mtime) < 1e-3
        )

    def _resume_point(self, final: Path, entry: Entry) -> tuple[int, int]:
        """Bytes of the partial file to keep, and how many of them are known synced to disk;
        a partial of another version is discarded."""
        part = partial_path(final)
        record = read_journal(final)
        keep = 0
        if record is not None and entry.identity is not None and record.identity == entry.identity:
            try:
                on_disk = part.stat().st_size
            except OSError:
                on_disk = -1
            resumable = record.resumable_bytes(boot_id())
            if record.chunk_bytes == self._chunk_bytes and 0 <= resumable <= on_disk:
                keep = resumable - resumable % self._chunk_bytes
        if keep == 0:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            remove_journal(final)
        return keep, min(record.durable_bytes, keep) if record is not None else 0

    @staticmethod
    def _refuse_links(root: Path, final: Path) -> None:
        """Never follow a symlink that already sits inside DEST out of it."""
        here = final
        while here != root:
            if here.is_symlink():
                raise LocalIOError(f"{here}: is a symbolic link; refusing to write through it")
            here = here.parent

    def display_path(self, index: int) -> str:
        return self._entries[index].path

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        """A resumed file's digest still covers the whole file: hash what is already here."""
        part = partial_path(self._finals[index])
        try:
            async with aiofiles.open(part, "rb") as f:
                await digest.hash_prefix(f.fileno(), size, part)
        except OSError as exc:
            raise local_error(exc, part) from None

    async def _open_at(self, index: int, offset: int) -> PartialWriter:
        final = self._finals[index]
        final.parent.mkdir(parents=True, exist_ok=True)
        direct = self.direct_io and direct_io_suits(self._entries[index].size or 0, self._chunk_bytes)
        handle = await PartialWriter.open(partial_path(final), offset, direct, self._chunk_bytes)
        self._open[index] = handle
        self._written[index] = self._journaled[index] = offset
        return handle

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.write(data)
            self._written[index] += len(data)
            written = self._written[index]
            if written - self._journaled[index] >= journal_interval_bytes(self._entries[index].size or 0):
                await self._journal(index)
        except OSError as exc:
            raise local_error(exc, self._finals[index]) from None

    async def _journal(self, index: int, sync: bool = True) -> None:
        identity = self._entries[index].identity
        if identity is None:
            return  # a stream cannot be resumed: its source cannot be read again
        handle = self._open[index]
        await handle.flush()
        written = self._written[index]
        if sync:
            self._sync_if_due(index, handle, written)
        record = JournalRecord(identity, self._chunk_bytes, written, self._durable[index], boot_id())
        await in_worker(write_journal, self._finals[index], record)
        self._journaled[index] = written

    def _sync_if_due(self, index: int, handle: PartialWriter, written: int) -> None:
        """Start an fdatasync every FSYNC_EVERY_BYTES in a worker, one at a time per file; writing goes on
        meanwhile. A sync that failed raises its error here, at the next journal."""
        task = self._syncing.get(index)
        if task is not None:
            if not task.done():
                return
            del self._syncing[index]
            task.result()
        if written - self._durable[index] >= FSYNC_EVERY_BYTES:
            self._syncing[index] = asyncio.create_task(self._sync(index, handle.fileno(), written))

    async def _sync(self, index: int, fd: int, upto: int) -> None:
        await in_worker(os.fdatasync, fd)
        self._durable[index] = upto

    async def _settle_sync(self, index: int) -> None:
        """Wait for the file's sync in flight, if any: its descriptor must stay open until it is done."""
        task = self._syncing.pop(index, None)
        if task is not None:
            await task

    async def finish(self, index: int, ok: bool) -> None:
        """Close the partial file; rename it into place only if its digest matched."""
        final = self._finals[index]
        part = partial_path(final)
        try:
            handle = self._open.pop(index, None)
            if handle is not None:
                try:
                    await self._settle_sync(index)
                finally:
                    await handle.close()
            elif not part.exists():
                part.touch()
            remove_journal(final)
            if not ok:
                await aiofiles.os.remove(part)
                return
            entry = self._entries[index]
            os.chmod(part, entry.mode)
            if entry.mtime is not None:
                os.utime(part, (entry.mtime, entry.mtime))
            await aiofiles.os.replace(part, final)
        except OSError as exc:
            raise local_error(exc, final) from None

    async def complete(self) -> None:
        """Links after every file (nothing is written through them), directory times and modes
        last, deepest first, as rsync and tar do: writing a directory's contents changes its
        mtime, and a read-only directory must not block its own contents."""
        for index, entry in enumerate(self._entries):
            if entry.kind == "symlink" and entry.target is not None:
                final = self._finals[index]
                try:
                    if final.is_symlink() or final.exists():
                        final.unlink()
                    final.symlink_to(entry.target)
                except OSError as exc:
                    raise local_error(exc, final) from None
        for entry in reversed(self._entries):
            if entry.kind == "dir":
                directory = self.root.joinpath(*PurePosixPath(entry.path).parts)
                try:
                    if entry.mtime is not None:
                        os.utime(directory, (entry.mtime, entry.mtime), follow_symlinks=False)
                    os.chmod(directory, entry.mode)
                except OSError as exc:
                    raise local_error(exc, entry.path) from None

    async def suspend(self) -> None:
        """The connection failed: keep what can resume (journal it), drop what cannot.

        Nothing is ever left under a final name."""
        for index, handle in list(self._open.items()):
            final = self._finals[index]
            resumable = self._entries[index].identity is not None
            with contextlib.suppress(OSError):
                await self._settle_sync(index)
            with contextlib.suppress(OSError):
                if resumable:
                    await self._journal(index, sync=False)
                await handle.close()
                if not resumable:
                    partial_path(final).unlink()
        self._open.clear()


class StdoutSink:
    """Writes the single incoming stream to standard output, in order, straight from the chunk buffers.

    Bytes reach stdout before the whole-file digest can be checked (as with curl);
    a mismatch still fails the run with exit 4.
    """

    def __init__(self) -> None:
        self._entries: tuple[Entry, ...] = ()
        self._out: StdStream | None = None

    def check(self) -> None:
        pass

    def plan(self, manifest: Manifest) -> Plan:
        files = [e for e in manifest.entries if e.kind == "file"]
        if len(files) != 1 or len(manifest.entries) != 1:
            raise LocalIOError("DEST '-' (standard output) takes exactly one incoming file")
        self._entries = manifest.entries
        return Plan({}, ())

    def display_path(self, index: int) -> str:
        return self._entries[index].path

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        raise LocalIOError("standard output cannot resume a transfer")

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            if self._out is None:
                self._out = StdStream(sys.stdout.fileno())
            await self._out.write_all(data)
        except OSError as exc:
            raise local_error(exc, "standard output") from None

    async def finish(self, index: int, ok: bool) -> None:
        pass

    async def complete(self) -> None:
        pass

    async def suspend(self) -> None:
        pass


Sink = DirectorySink | StdoutSink
