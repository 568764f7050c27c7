"""Where a transfer lands: DEST on disk (DirectorySink: planning each batch, partial files and
their journal, packs, the finishing touches) or standard output (stdout_sink.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import aiofiles
import aiofiles.os

from rtransfer import specials
from rtransfer.delete import Listed, extraneous
from rtransfer.delta import DELTA_MIN_BYTES, describe
from rtransfer.dest import DIR_FLAGS, PARTIAL_SUFFIX, DestDirs, lstat_or_none, partial_path, placed
from rtransfer.direct_io import PartialWriter, direct_io_suits
from rtransfer.errors import LocalIOError, UsageError
from rtransfer.files import CONTENTS, link_stays_inside, local_error, safe_relative_path
from rtransfer.filters import NO_FILTERS, parse_specs
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
from rtransfer.packs import write_packed
from rtransfer.plan import Draft, Plan
from rtransfer.protocol.model import Basis, Buffer, Entry, EntryBatch, Manifest
from rtransfer.protocol.pack import PackedFile
from rtransfer.stdout_sink import StdoutSink
from rtransfer.workers import in_cpu, in_slices, in_worker

# A copied range of the old copy is read, hashed and written in one worker call per this many bytes.
COPY_STEP_BYTES = 16 * 1024 * 1024
_COPY_BUFFER_BYTES = 1024 * 1024  # through a buffer this size, so each piece is hashed while in cache


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


def plan_alone(sink: DirectorySink | StdoutSink, chunk_bytes: int, *entries: Entry) -> Plan:
    """Begin a transfer of just ``entries`` (one batch): for tests and tools."""
    sink.begin(Manifest("t" * 32, chunk_bytes, 1))
    return sink.plan(EntryBatch(0, entries, True))


class DirectorySink:
    """Writes a transfer under DEST: each file into a hidden partial name, renamed once verified;
    a new directory, with all it holds, under a hidden name renamed once at the end.

    Large files are prefixes of their source with a journal beside them, so a later
    connection (or a later run) resumes them instead of starting over. Small files
    arrive whole in packs and are written a pack at a time, on the loop's thread in slices.
    Every name is checked once, when its batch is planned.
    What it keeps per file lasts until the file is in place; only directories and links,
    whose times, modes and targets are applied at the end, are kept for the whole transfer.
    """

    def __init__(
        self,
        root: Path,
        overwrite: bool,
        direct_io: bool = True,
        safe_links: bool = False,
        delete: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.root = root
        self.overwrite = overwrite
        self.direct_io = direct_io
        self.safe_links = safe_links
        self.delete = delete  # this side's own --delete; the sender may ask for it too (``begin``)
        self.dry_run = dry_run  # likewise
        self._deleting = False
        self._dry = False
        self._filters = NO_FILTERS
        self._listed = Listed()
        self.items: list[tuple[str, str]] = []  # (action, path): a dry run's verdicts and --delete's removals
        self._root_fd = -1
        # Directories kept open from batch to batch (planning) and pack to pack (writing), both on
        # the loop's thread, each connection's own from ``begin``: opening them again for each batch
        # and pack cost a receiver 5% of its time in a tree of small files.
        self._open_dirs = DestDirs(self._root_fd)
        self._chunk_bytes = 0
        self._delta = True  # the sender allows it (send --whole-file does not)
        self._files: dict[int, Entry] = {}  # accepted, not yet in place
        self._bases: dict[int, int] = {}  # delta: descriptor of the old copy, once a COPY needs it
        self._described: set[int] = set()  # delta: files whose old copy was described to the sender
        self._dirs: list[Entry] = []
        self._specials: list[Entry] = []  # links, FIFOs, devices: made at the end
        self._created: set[str] = set()  # directories this transfer made: no lstat for what is in them
        # A new subtree is made under a hidden name and renamed once, at the end: inside it, files
        # are written under their own names, with no rename each. Each new directory's path on disk:
        self._hidden: dict[str, str] = {}
        self._hidden_roots: list[tuple[str, str]] = []  # (hidden path, final path): renamed at the end
        self._open: dict[int, PartialWriter] = {}
        self._written: dict[int, int] = {}
        self._journaled: dict[int, int] = {}
        self._durable: dict[int, int] = {}
        self._syncing: dict[int, asyncio.Task[None]] = {}

    def check(self) -> None:
        check_dest(self.root)

    def begin(self, manifest: Manifest) -> None:
        """A connection's transfer begins: make DEST, hold it open (everything below is reached from it).
        A dry run makes nothing: a DEST not there yet is empty."""
        if manifest.delete and not (self.delete or self.overwrite):
            raise UsageError("the sender asks to --delete in DEST: run recv with --delete (or --overwrite) to allow it")
        self._dry = self.dry_run or manifest.dry_run
        self._deleting = self.delete or manifest.delete
        self._filters = parse_specs(manifest.filters)
        try:
            if not self._dry:
                self.root.mkdir(parents=True, exist_ok=True)
            if self._root_fd < 0 and (not self._dry or self.root.is_dir()):
                self._root_fd = os.open(self.root, DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            raise local_error(exc, self.root) from None
        self._open_dirs.close()
        self._open_dirs = DestDirs(self._root_fd, self._created)
        if not self._dry and not os.access(self.root, os.W_OK | os.X_OK):
            raise LocalIOError(f"{self.root}: permission denied")
        self._chunk_bytes = manifest.chunk_bytes
        self._delta = manifest.delta
        self._files.clear()
        self._described.clear()
        self._created.clear()  # what an earlier connection wrote in them is there now
        self._hidden.clear()
        self._hidden_roots.clear()
        self._dirs.clear()
        self._specials.clear()
        self._listed.clear()

    @property
    def dry(self) -> bool:
        return self._dry

    def plan(self, batch: EntryBatch) -> Plan:
        """Check each name, create directories, find what is here already and what can resume."""
        if self._dry:
            return self._preview(batch)
        draft = Draft()
        dirs = self._open_dirs
        try:
            for index, entry in enumerate(batch.entries, batch.first):
                if entry.kind == "dir":
                    dirs.make(self._place_dir(self._listed_dir(entry), dirs))
                    self._dirs.append(entry)
                    continue
                parent, name = self._listed_entry(entry)
                disk_parent = self._hidden.get(parent, parent)
                st = None if disk_parent in self._created else lstat_or_none(name, dirs.fd(disk_parent))
                if entry.kind == "file":
                    self._plan_file(index, entry, st, draft, ours=parent in self._hidden)
                elif st is None or not specials.already_here(entry, st, name, dirs.fd(disk_parent), dirs, self._hidden):
                    self._refuse_existing(entry, st)
                    self._specials.append(entry)
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        if draft.need > free:
            raise LocalIOError(f"{self.root}: not enough free space ({draft.need} bytes needed, {free} available)")
        starts = {i: n for i, n in draft.starts.items() if n}
        return Plan(starts, tuple(draft.done), tuple(draft.compare), tuple(draft.old_copies))

    def _place_dir(self, rel: str, dirs: DestDirs) -> str:
        """Where directory ``rel`` goes on disk: as it is if it is there already; under a hidden
        name if it is the top of a new subtree (one an interrupted run left is taken up again);
        inside its hidden parent otherwise."""
        if not rel:
            return rel
        parent, name = placed(rel)
        if parent in self._hidden:
            disk = self._hidden[rel] = f"{self._hidden[parent]}/{name}"
        elif lstat_or_none(name, dirs.fd(parent)) is not None:
            return rel
        else:
            disk = self._hidden[rel] = f"{parent}/.{name}{PARTIAL_SUFFIX}".lstrip("/")
            self._hidden_roots.append((disk, rel))
        return disk

    def _disk_path(self, path: str) -> str:
        """An entry's path on disk: inside a hidden subtree while the transfer runs."""
        parent, name, hidden = self._place_file(path)
        return f"{parent}/{name}" if hidden else path

    def _listed_dir(self, entry: Entry) -> str:
        """A directory entry's path under DEST ("" for a "src/" source's root), checked."""
        rel = "" if entry.path == CONTENTS else safe_relative_path(entry.path)
        if self._deleting:
            self._listed.directory(rel)
            if rel:
                self._listed.entry(*placed(rel))
        return rel

    def _listed_entry(self, entry: Entry) -> tuple[str, str]:
        """Any other entry's (parent, name), checked: its name, and a link's target, stay inside."""
        parent, name = placed(safe_relative_path(entry.path))
        if entry.kind == "hardlink":
            safe_relative_path(entry.target or "")
        elif entry.kind == "symlink" and self.safe_links and not link_stays_inside(entry.path, entry.target or ""):
            link = f"{entry.path!r} -> {entry.target!r}"
            raise LocalIOError(f"refusing link {link}: it points outside DEST (--safe-links)")
        if self._deleting:
            self._listed.entry(parent, name)
        return parent, name

    def _preview(self, batch: EntryBatch) -> Plan:
        """A dry run: what this batch would send or replace, said in ``items``; every file counts as
        done, so none is sent, and nothing here changes. What a real run would refuse, it refuses."""
        done = []
        try:
            with DestDirs(max(self._root_fd, 0), create=False) as dirs:
                for index, entry in enumerate(batch.entries, batch.first):
                    if entry.kind == "dir":
                        rel = self._listed_dir(entry)
                        self._dirs.append(entry)
                        if self._peek_dir(dirs, rel) is None:
                            self.items.append(("send", f"{entry.path}/"))
                        continue
                    parent, name = self._listed_entry(entry)
                    if entry.kind == "file":
                        done.append(index)
                    dir_fd = self._peek_dir(dirs, parent)
                    st = None if dir_fd is None else lstat_or_none(name, dir_fd)
                    if st is None:
                        self.items.append(("send", entry.path))
                    elif not self._same(entry, st, name, dirs):
                        self._refuse_existing(entry, st)
                        self.items.append(("replace", entry.path))
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        return Plan({}, tuple(done))

    def _peek_dir(self, dirs: DestDirs, rel: str) -> int | None:
        """A dry run's look at a directory under DEST: its descriptor, or None if it is not there."""
        if self._root_fd < 0:
            return None
        try:
            return dirs.fd(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _same(self, entry: Entry, st: os.stat_result, name: str, dirs: DestDirs) -> bool:
        parent_fd = dirs.fd(placed(entry.path)[0])
        if entry.kind != "file":
            return specials.already_here(entry, st, name, parent_fd, dirs)
        if entry.digest is not None:
            same_size = stat.S_ISREG(st.st_mode) and st.st_size == entry.size
            return same_size and content_digest(name, parent_fd) == entry.digest
        return self._already_here(st, entry)

    def _plan_file(self, index: int, entry: Entry, st: os.stat_result | None, draft: Draft, ours: bool = False) -> None:
        """``ours``: the file is in a hidden subtree, where what is there was left by an earlier
        run of this transfer, to be replaced without --overwrite."""
        size_here = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None
        if size_here is not None and entry.digest is not None and size_here == entry.size:
            draft.compare.append(index)  # --checksum: the content decides (examine)
        elif st is not None and entry.digest is None and self._already_here(st, entry):
            draft.done.append(index)
            return
        elif not ours:
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
        return self.root.joinpath(self._disk_path(self._files[index].path))

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
            specials.own(entry, str(part))
            os.chmod(part, entry.mode)
            if entry.mtime is not None:
                os.utime(part, (entry.mtime, entry.mtime))
            await aiofiles.os.replace(part, final)
        except OSError as exc:
            raise local_error(exc, final) from None
        finally:
            for state in (self._written, self._journaled, self._durable):
                state.pop(index, None)

    async def write_pack(
        self, files: list[PackedFile], payload: Buffer, check: bool = True
    ) -> list[tuple[str, int, str | None]]:
        """Put a pack's files in place on the loop's thread, a slice at a time: per file, its digest
        checked (see ``check_packed``), then create, write, mode, mtime, close and rename; no other
        call. A file whose digest fails gets no name; its hex digest comes back None (path, size and
        hex digest for each)."""
        entries = [self._files.pop(f.file_index) for f in files]
        places = [self._place_file(e.path) for e in entries]
        try:
            return await in_slices(write_packed(self._open_dirs, files, entries, places, payload, check))
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None

    def _place_file(self, path: str) -> tuple[str, str, bool]:
        """A packed file's directory on disk, its name, and whether it is written under that name
        at once (in a hidden subtree) rather than under a partial name renamed once it is written."""
        parent, name = placed(path)
        disk_parent = self._hidden.get(parent)
        return (parent, name, False) if disk_parent is None else (disk_parent, name, True)

    async def complete(self) -> list[str]:
        """Links, FIFOs and devices after every file (a hard link names one; nothing is written
        through a link), then --delete, then directory owners, times and modes, deepest first, as
        rsync and tar do: writing a directory's contents changes its mtime, and a read-only
        directory must not block its own contents. The warnings, for entries that could not be made."""
        try:
            return await in_worker(self._complete)
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None

    def _complete(self) -> list[str]:
        warnings: list[str] = []
        if self._dry:
            if self._deleting and self._root_fd >= 0:
                with DestDirs(self._root_fd, create=False) as dirs:
                    self.items.extend(("delete", p) for p in extraneous(dirs, self._listed, self._filters, False))
            return warnings
        self._open_dirs.close()
        self._unhide()
        with DestDirs(self._root_fd) as dirs:
            for entry in self._specials:
                parent, name = placed(entry.path)
                warning = specials.make(entry, name, dirs.fd(parent), dirs)
                if warning is not None:
                    warnings.append(warning)
            if self._deleting:
                self.items.extend(("delete", p) for p in extraneous(dirs, self._listed, self._filters, True))
            for entry in reversed(self._dirs):
                dir_fd = dirs.fd("" if entry.path == CONTENTS else entry.path)
                specials.own(entry, dir_fd)
                if entry.mtime is not None:
                    os.utime(dir_fd, (entry.mtime, entry.mtime))
                os.fchmod(dir_fd, entry.mode)
        return warnings

    def _unhide(self) -> None:
        """Each new subtree, complete, takes its name: one rename for all it holds."""
        with DestDirs(self._root_fd) as dirs:
            for hidden, final in self._hidden_roots:
                parent, name = placed(final)
                parent_fd = dirs.fd(parent)
                if lstat_or_none(name, parent_fd) is not None:
                    raise LocalIOError(f"{self.root / final}: appeared during the transfer (the new one is {hidden})")
                os.rename(placed(hidden)[1], name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        self._hidden.clear()
        self._hidden_roots.clear()

    async def suspend(self) -> None:
        """The connection failed: keep what can resume (journal it), drop what cannot.

        Nothing is ever left under a final name."""
        self._open_dirs.close()
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


Sink = DirectorySink | StdoutSink
