"""Where a transfer lands: DEST on disk (DirectorySink) or standard output (StdoutSink)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiofiles
import aiofiles.os
import blake3

from rtransfer.delta import DELTA_MIN_BYTES, describe
from rtransfer.direct_io import PartialWriter, direct_io_suits
from rtransfer.errors import LocalIOError
from rtransfer.files import link_stays_inside, local_error, safe_relative_path
from rtransfer.integrity import FileDigest, content_digest
from rtransfer.journal import (
    FSYNC_EVERY_BYTES,
    JournalRecord,
    boot_id,
    journal_interval_bytes,
    read_journal,
    remove_journal,
    write_journal,
)
from rtransfer.listen import check_dest
from rtransfer.protocol.model import Basis, Buffer, Entry, EntryBatch, Manifest
from rtransfer.protocol.pack import PackedFile
from rtransfer.stdio import StdStream
from rtransfer.workers import in_cpu, in_worker

PARTIAL_SUFFIX = ".rtpart"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
# Threads creating a pack's files: creating a file is the file system's work, which a second
# thread overlaps; a third gained nothing on two cores (bench/README.md).
PACK_WRITERS = 2


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


# A copied range of the old copy is read, hashed and written in one worker call per this many bytes.
COPY_STEP_BYTES = 16 * 1024 * 1024
_COPY_BUFFER_BYTES = 1024 * 1024  # through a buffer this size, so each piece is hashed while in cache


@dataclass(frozen=True)
class Plan:
    """Where each file starts: bytes already here of the same version, or whole and done.

    ``plan`` finds what the names and sizes tell; ``examine`` reads what they cannot: files of
    the same size to compare by content (``compare``, --checksum) and old copies to describe
    for a delta (``old_copies``, which it turns into ``bases``)."""

    start_offsets: dict[int, int]
    done: tuple[int, ...]
    compare: tuple[int, ...] = ()
    old_copies: tuple[int, ...] = ()
    bases: dict[int, Basis] = field(default_factory=dict)


@dataclass
class _Draft:
    """A plan while a batch is walked: what resumes where, what is done, what to read first."""

    starts: dict[int, int] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    compare: list[int] = field(default_factory=list)
    old_copies: list[int] = field(default_factory=list)
    need: int = 0  # bytes still to write, against the free space


class DestDirs:
    """Directories under DEST, opened one name at a time from DEST's own descriptor, never
    following a link (``O_NOFOLLOW``): a link planted inside DEST, by an earlier transfer or
    anyone else, cannot lead a write outside it. Missing directories are created."""

    MAX_OPEN = 256  # descriptors kept open at once; past that the cache starts over

    def __init__(self, root_fd: int, created: set[str] | None = None) -> None:
        """``created`` collects the directories made here: nothing in them predates the transfer."""
        self._fds: dict[str, int] = {"": root_fd}
        self._created = created if created is not None else set()

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
            try:
                os.mkdir(name, 0o777, dir_fd=parent_fd)
                self._created.add(rel_dir)
            except FileExistsError:
                pass
            fd = self._open(name, parent_fd)
        if len(self._fds) > self.MAX_OPEN:
            self.close()
        self._fds[rel_dir] = fd
        return fd

    @staticmethod
    def _open(name: str, parent_fd: int) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
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


def _placed(entry_path: str) -> tuple[str, str]:
    """An entry's (parent directory, name), for an entry ``plan`` has already checked."""
    parent, _, name = entry_path.rpartition("/")
    return parent, name


def _check_packed(view: memoryview, packed: PackedFile) -> tuple[memoryview, str | None]:
    """A packed file's bytes, and their BLAKE3 hex digest if it matches the one the sender sent (else None)."""
    data = view[packed.start : packed.start + packed.size]
    hasher = blake3.blake3(data)
    return data, hasher.hexdigest() if hasher.digest() == packed.digest else None


def _copy_hashed(src: int, dst: int, offset: int, length: int, digest: FileDigest) -> None:
    """``length`` bytes of ``src`` from ``offset``, hashed and appended to ``dst`` (for a worker thread)."""
    buf = memoryview(bytearray(min(length, _COPY_BUFFER_BYTES)))
    done = 0
    while done < length:
        view = digest.read_now(src, buf[: min(len(buf), length - done)], offset + done)
        if not view:
            raise LocalIOError("the old copy shrank during the transfer")
        done += len(view)
        while view:
            view = view[os.write(dst, view) :]


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def plan_alone(sink: DirectorySink | StdoutSink, chunk_bytes: int, *entries: Entry) -> Plan:
    """Begin a transfer of just ``entries`` (one batch): for tests and tools."""
    sink.begin(Manifest("t" * 32, chunk_bytes, 1))
    return sink.plan(EntryBatch(0, entries, True))


class DirectorySink:
    """Writes a transfer under DEST: each file into a hidden partial name, renamed once verified.

    Large files are prefixes of their source with a journal beside them, so a later
    connection (or a later run) resumes them instead of starting over. Small files
    arrive whole in packs and are written a pack at a time, in PACK_WRITERS worker threads.
    Every name is checked once, when its batch is planned.
    What it keeps per file lasts until the file is in place; only directories and links,
    whose times, modes and targets are applied at the end, are kept for the whole transfer.
    """

    def __init__(self, root: Path, overwrite: bool, direct_io: bool = True, safe_links: bool = False) -> None:
        self.root = root
        self.overwrite = overwrite
        self.direct_io = direct_io
        self.safe_links = safe_links
        self._root_fd = -1
        self._chunk_bytes = 0
        self._delta = True  # the sender allows it (send --whole-file does not)
        self._files: dict[int, Entry] = {}  # accepted, not yet in place
        self._bases: dict[int, int] = {}  # delta: descriptor of the old copy, once a COPY needs it
        self._described: set[int] = set()  # delta: files whose old copy was described to the sender
        self._dirs: list[Entry] = []
        self._links: list[Entry] = []
        self._created: set[str] = set()  # directories this transfer made: no lstat for what is in them
        self._open: dict[int, PartialWriter] = {}
        self._written: dict[int, int] = {}
        self._journaled: dict[int, int] = {}
        self._durable: dict[int, int] = {}
        self._syncing: dict[int, asyncio.Task[None]] = {}

    def check(self) -> None:
        check_dest(self.root)

    def begin(self, manifest: Manifest) -> None:
        """A connection's transfer begins: make DEST, hold it open (everything below is reached from it)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self._root_fd < 0:
                self._root_fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise local_error(exc, self.root) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise LocalIOError(f"{self.root}: permission denied")
        self._chunk_bytes = manifest.chunk_bytes
        self._delta = manifest.delta
        self._files.clear()
        self._described.clear()
        self._created.clear()  # what an earlier connection wrote in them is there now
        self._dirs.clear()
        self._links.clear()

    def plan(self, batch: EntryBatch) -> Plan:
        """Check each name, create directories, find what is here already and what can resume."""
        draft = _Draft()
        try:
            with DestDirs(self._root_fd, self._created) as dirs:
                for index, entry in enumerate(batch.entries, batch.first):
                    if entry.kind == "dir":
                        dirs.fd(safe_relative_path(entry.path))
                        self._dirs.append(entry)
                        continue
                    parent, name = _placed(safe_relative_path(entry.path))
                    dir_fd = dirs.fd(parent)
                    st = None if parent in self._created else _lstat(name, dir_fd)
                    if entry.kind == "symlink":
                        self._plan_link(entry, st, name, dir_fd)
                    else:
                        self._plan_file(index, entry, st, draft)
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        if draft.need > free:
            raise LocalIOError(f"{self.root}: not enough free space ({draft.need} bytes needed, {free} available)")
        starts = {i: n for i, n in draft.starts.items() if n}
        return Plan(starts, tuple(draft.done), tuple(draft.compare), tuple(draft.old_copies))

    def _plan_link(self, entry: Entry, st: os.stat_result | None, name: str, dir_fd: int) -> None:
        if self.safe_links and not link_stays_inside(entry.path, entry.target or ""):
            link = f"{entry.path!r} -> {entry.target!r}"
            raise LocalIOError(f"refusing link {link}: it points outside DEST (--safe-links)")
        if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == entry.target:
            return  # already here
        self._refuse_existing(entry, st)
        self._links.append(entry)

    def _plan_file(self, index: int, entry: Entry, st: os.stat_result | None, draft: _Draft) -> None:
        size_here = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None
        if size_here is not None and entry.digest is not None and size_here == entry.size:
            draft.compare.append(index)  # --checksum: the content decides (examine)
        elif st is not None and entry.digest is None and self._already_here(st, entry):
            draft.done.append(index)
            return
        else:
            self._refuse_existing(entry, st)
        self._files[index] = entry
        if size_here is not None and self._delta and entry.identity and size_here >= DELTA_MIN_BYTES:
            draft.old_copies.append(index)
        if entry.identity is not None:
            draft.starts[index], self._durable[index] = self._resume_point(self._final(index), entry)
        draft.need += (entry.size or 0) - draft.starts.get(index, 0)

    async def examine(self, plan: Plan) -> Plan:
        """Read what ``plan`` left open, in a worker thread: a file whose content is already here is
        done (and takes the sender's mtime, so the quick check finds it next time); each remaining
        old copy is described, so the sender can send only what it lacks."""
        if not plan.compare and not plan.old_copies:
            return plan
        try:
            same = await in_cpu(self._same_content, plan.compare)
            for index in same:
                del self._files[index]
            described = [i for i in plan.old_copies if i not in same]
            bases = dict(zip(described, await in_cpu(self._describe, described), strict=True))
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        self._described.update(bases)
        starts = {i: n for i, n in plan.start_offsets.items() if i not in same}
        return replace(plan, start_offsets=starts, done=plan.done + tuple(same), bases=bases)

    def _same_content(self, indices: tuple[int, ...]) -> list[int]:
        same = []
        for index in indices:
            entry, final = self._files[index], self._final(index)
            if content_digest(final) == entry.digest:
                same.append(index)
                if entry.mtime is not None:
                    os.utime(final, (entry.mtime, entry.mtime), follow_symlinks=False)
            elif not self.overwrite:
                raise LocalIOError(f"{final}: already exists (use --overwrite to replace it)")
        return same

    def _describe(self, indices: list[int]) -> list[Basis]:
        return [describe(self._final(index)) for index in indices]

    def _refuse_existing(self, entry: Entry, st: os.stat_result | None) -> None:
        if st is None:
            return
        if not self.overwrite:
            raise LocalIOError(f"{self.root / entry.path}: already exists (use --overwrite to replace it)")
        if stat.S_ISDIR(st.st_mode):
            raise LocalIOError(f"{self.root / entry.path}: is a directory")

    @staticmethod
    def _already_here(st: os.stat_result, entry: Entry) -> bool:
        """rsync's quick check: same size and mtime means this file arrived before (with --checksum,
        the entry carries a digest, and the content decides instead: ``examine``)."""
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
            if 0 <= resumable <= on_disk:  # a prefix of the file, whatever chunk size wrote it
                keep = resumable - resumable % self._chunk_bytes
        if keep == 0:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            remove_journal(final)
        return keep, min(record.durable_bytes, keep) if record is not None else 0

    def _final(self, index: int) -> Path:
        return self.root.joinpath(self._files[index].path)

    def display_path(self, index: int) -> str:
        return self._files[index].path

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        """A resumed file's digest still covers the whole file: hash what is already here."""
        part = partial_path(self._final(index))
        try:
            async with aiofiles.open(part, "rb") as f:
                await digest.hash_prefix(f.fileno(), size, part)
        except OSError as exc:
            raise local_error(exc, part) from None

    async def _open_at(self, index: int, offset: int) -> PartialWriter:
        final = self._final(index)
        # A delta's writes follow the content, not the chunk size that direct I/O aligns to.
        fixed = index not in self._described
        direct = fixed and self.direct_io and direct_io_suits(self._files[index].size or 0, self._chunk_bytes)
        handle = await PartialWriter.open(partial_path(final), offset, direct, self._chunk_bytes)
        self._open[index] = handle
        self._written[index] = self._journaled[index] = offset
        return handle

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.write(data)
            await self._advance(index, len(data))
        except OSError as exc:
            raise local_error(exc, self._final(index)) from None

    async def _advance(self, index: int, n: int) -> None:
        """``n`` more bytes of the file are written: journal them when due."""
        self._written[index] += n
        if self._written[index] - self._journaled[index] >= journal_interval_bytes(self._files[index].size or 0):
            await self._journal(index)

    async def copy_from_basis(self, index: int, offset: int, ranges: list[tuple[int, int]], digest: FileDigest) -> int:
        """Take ``ranges`` (offset, length) of the old copy, in order, into the new file from ``offset``,
        hashing them on the way; the bytes taken. Each step is one worker call that reads, hashes
        and writes, while the bytes are in cache. An old copy changed since it was described shows
        in the whole-file digest."""
        final = self._final(index)
        taken = 0
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.flush()  # what the writer buffered goes first: the steps write to its descriptor
            src = self._bases.get(index)
            if src is None:
                src = self._bases[index] = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            for start, length in ranges:
                for step in range(0, length, COPY_STEP_BYTES):
                    want = min(COPY_STEP_BYTES, length - step)
                    await in_cpu(_copy_hashed, src, handle.fileno(), start + step, want, digest)
                    taken += want
                    await self._advance(index, want)
        except OSError as exc:
            raise local_error(exc, final) from None
        return taken

    def _close_basis(self, index: int) -> None:
        self._described.discard(index)
        fd = self._bases.pop(index, None)
        if fd is not None:
            os.close(fd)

    async def _journal(self, index: int, sync: bool = True) -> None:
        identity = self._files[index].identity
        if identity is None:
            return  # a stream cannot be resumed: its source cannot be read again
        handle = self._open[index]
        await handle.flush()
        written = self._written[index]
        if sync:
            self._sync_if_due(index, handle, written)
        record = JournalRecord(identity, self._chunk_bytes, written, self._durable[index], boot_id())
        await in_worker(write_journal, self._final(index), record)
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
        final = self._final(index)
        part = partial_path(final)
        entry = self._files.pop(index)
        self._close_basis(index)
        try:
            handle = self._open.pop(index, None)
            if handle is not None:
                try:
                    await self._settle_sync(index)
                finally:
                    await handle.close()
            elif not part.exists():
                part.touch()
            if entry.identity is not None:
                remove_journal(final)
            if not ok:
                await aiofiles.os.remove(part)
                return
            os.chmod(part, entry.mode)
            if entry.mtime is not None:
                os.utime(part, (entry.mtime, entry.mtime))
            await aiofiles.os.replace(part, final)
        except OSError as exc:
            raise local_error(exc, final) from None
        finally:
            for state in (self._written, self._journaled, self._durable):
                state.pop(index, None)

    async def write_pack(self, files: list[PackedFile], payload: Buffer) -> list[tuple[str, int, str | None]]:
        """Put a pack's files in place, in PACK_WRITERS worker-thread calls: per file, its digest
        checked, then create, write, mode, mtime, close and rename; no other call. A file whose digest fails
        gets no name; its hex digest comes back None (path, size and hex digest for each)."""
        entries = [self._files.pop(f.file_index) for f in files]
        writers = PACK_WRITERS if len(files) >= 2 * PACK_WRITERS else 1
        outcomes = await asyncio.gather(
            *(in_worker(self._write_pack, files[k::writers], entries[k::writers], payload) for k in range(writers)),
            return_exceptions=True,  # both threads are done with the payload before anyone reuses it
        )
        done: list[tuple[str, int, str | None]] = []
        for outcome in outcomes:
            if isinstance(outcome, OSError):
                raise local_error(outcome, outcome.filename or self.root)
            if isinstance(outcome, BaseException):
                raise outcome
            done.extend(outcome)
        return done

    def _write_pack(
        self, files: list[PackedFile], entries: list[Entry], payload: Buffer
    ) -> list[tuple[str, int, str | None]]:
        done: list[tuple[str, int, str | None]] = []
        with memoryview(payload) as view, DestDirs(self._root_fd) as dirs:
            for packed, entry in zip(files, entries, strict=True):
                data, digest_hex = _check_packed(view, packed)
                if digest_hex is None:
                    done.append((entry.path, packed.size, None))
                    continue
                parent, name = _placed(entry.path)
                dir_fd = dirs.fd(parent)
                part = f".{name}{PARTIAL_SUFFIX}"
                fd = os.open(part, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(fd, data[written:])
                    os.fchmod(fd, entry.mode)
                    if entry.mtime is not None:
                        os.utime(fd, (entry.mtime, entry.mtime))
                finally:
                    os.close(fd)
                os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                done.append((entry.path, packed.size, digest_hex))
        return done

    async def complete(self) -> None:
        """Links after every file (nothing is written through them), directory times and modes
        last, deepest first, as rsync and tar do: writing a directory's contents changes its
        mtime, and a read-only directory must not block its own contents."""
        try:
            await in_worker(self._complete)
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None

    def _complete(self) -> None:
        with DestDirs(self._root_fd) as dirs:
            for entry in self._links:
                parent, name = _placed(entry.path)
                dir_fd = dirs.fd(parent)
                if _lstat(name, dir_fd) is not None:
                    os.unlink(name, dir_fd=dir_fd)
                assert entry.target is not None
                os.symlink(entry.target, name, dir_fd=dir_fd)
                if entry.mtime is not None:
                    os.utime(name, (entry.mtime, entry.mtime), dir_fd=dir_fd, follow_symlinks=False)
            for entry in reversed(self._dirs):
                dir_fd = dirs.fd(entry.path)
                if entry.mtime is not None:
                    os.utime(dir_fd, (entry.mtime, entry.mtime))
                os.fchmod(dir_fd, entry.mode)

    async def suspend(self) -> None:
        """The connection failed: keep what can resume (journal it), drop what cannot.

        Nothing is ever left under a final name."""
        for index in list(self._bases):
            self._close_basis(index)
        for index, handle in list(self._open.items()):
            final = self._final(index)
            resumable = self._files[index].identity is not None
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
    a mismatch still fails the run with exit 4. A small file arrives packed, and is
    checked before its bytes are written.
    """

    def __init__(self) -> None:
        self._path = ""
        self._out: StdStream | None = None

    def check(self) -> None:
        pass

    def begin(self, manifest: Manifest) -> None:
        pass

    def plan(self, batch: EntryBatch) -> Plan:
        if batch.first != 0 or not batch.last or len(batch.entries) != 1 or batch.entries[0].kind != "file":
            raise LocalIOError("DEST '-' (standard output) takes exactly one incoming file")
        self._path = batch.entries[0].path
        return Plan({}, ())

    def display_path(self, index: int) -> str:
        return self._path

    async def examine(self, plan: Plan) -> Plan:
        return plan

    async def copy_from_basis(self, index: int, offset: int, ranges: list[tuple[int, int]], digest: FileDigest) -> int:
        raise LocalIOError("standard output has no old copy to take ranges from")

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        raise LocalIOError("standard output cannot resume a transfer")

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            if self._out is None:
                self._out = StdStream(sys.stdout.fileno())
            await self._out.write_all(data)
        except OSError as exc:
            raise local_error(exc, "standard output") from None

    async def write_pack(self, files: list[PackedFile], payload: Buffer) -> list[tuple[str, int, str | None]]:
        (packed,) = files
        data, digest_hex = _check_packed(memoryview(payload), packed)
        if digest_hex is not None:
            await self.write(packed.file_index, 0, data)
        return [(self._path, packed.size, digest_hex)]

    async def finish(self, index: int, ok: bool) -> None:
        pass

    async def complete(self) -> None:
        pass

    async def suspend(self) -> None:
        pass


Sink = DirectorySink | StdoutSink
