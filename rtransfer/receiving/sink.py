"""Where a transfer lands: DEST on disk (DirectorySink: planning each batch, partial files and
their journal, packs, the finishing touches) or standard output (stdout_sink.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from rtransfer.delta import DELTA_MIN_BYTES, describe
from rtransfer.errors import LocalIOError, UsageError
from rtransfer.filters import NO_FILTERS, parse_specs
from rtransfer.integrity import FileDigest, content_digest
from rtransfer.names import link_stays_inside, local_error, refuse_working_names, safe_relative_path, shown
from rtransfer.protocol.model import CONTENTS, Basis, Buffer, Entry, EntryBatch, Manifest
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving import specials
from rtransfer.receiving.delete import Deletion, Listed
from rtransfer.receiving.dest import (
    DIR_FLAGS,
    DestDirs,
    Spot,
    check_dest,
    lstat_or_none,
    mark,
    marked,
    marker_name,
    open_existing,
    partial_name,
    placed,
    remove,
)
from rtransfer.receiving.direct_io import PartialWriter, direct_io_suits
from rtransfer.receiving.journal import (
    FSYNC_EVERY_BYTES,
    JournalRecord,
    boot_id,
    journal_interval_bytes,
    read_journal,
    remove_journal,
    write_journal,
)
from rtransfer.receiving.packs import write_packed
from rtransfer.receiving.plan import Draft, Plan
from rtransfer.receiving.specials import DestPolicy
from rtransfer.receiving.stdout import StdoutSink
from rtransfer.workers import in_cpu, in_slices, in_worker

# What the receiver keeps of the list until the transfer's end (directories and links to make then,
# a new subtree's names, linked files, --delete's names), in bytes of paths: a sender that lists far
# more is refused, as one over --max-files is, instead of growing this side's memory without bound.
MAX_HELD_NAME_BYTES = 64 * 1024 * 1024
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


T = TypeVar("T")


def _read_held(held: list[tuple[int, str]], read: Callable[[int], T]) -> list[T]:
    """For a worker thread: ``read(fd)`` of each (directory descriptor, name), a regular file
    opened as dest.open_existing does; the directory descriptors are closed, whatever happens."""
    results = []
    try:
        for dir_fd, name in held:
            fd = open_existing(name, dir_fd)
            if fd is None:
                raise FileNotFoundError(2, "no longer there", name)
            try:
                results.append(read(fd))
            finally:
                os.close(fd)
    finally:
        for dir_fd, _ in held:
            os.close(dir_fd)
    return results


def _inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class DirectorySink:
    """Writes a transfer under DEST: each file into a hidden partial name, renamed once verified;
    a new directory, with all it holds, under a hidden name renamed once at the end.

    Large files are prefixes of their source with a journal beside them, so a later
    connection (or a later run) resumes them instead of starting over. Small files
    arrive whole in packs and are written a pack at a time, on the loop's thread in slices.
    Every name is checked once, when its batch is planned, and every file is reached from its
    directory's descriptor, never by a path a link could redirect.
    What it keeps per file lasts until the file is in place; only directories and links,
    whose times, modes and targets are applied at the end, are kept for the whole transfer.
    """

    def __init__(self, root: Path, policy: DestPolicy) -> None:
        self.root = root
        self.policy = policy  # this side's own options; the sender may ask for --delete and --dry-run too (begin)
        self.deleting = False
        self._dry = False
        self._delete_excluded = False
        self._filters = NO_FILTERS
        self._listed = Listed()
        self.items: list[tuple[str, str]] = []  # (action, path): a dry run's verdicts, --delete's removals, skips
        self.warnings: list[str] = []
        self._root_fd = -1
        self._made_root = False  # DEST did not exist: this run made it, and may give it the listed mode
        # Directories kept open from batch to batch (planning) and pack to pack (writing), both on
        # the loop's thread, each connection's own from ``begin``: opening them again for each batch
        # and pack cost a receiver 5% of its time in a tree of small files.
        self._open_dirs = DestDirs(self._root_fd)
        self._chunk_bytes = 0
        self._delta = True  # the sender allows it (send --whole-file does not)
        self._files: dict[int, Entry] = {}  # accepted, not yet in place
        self._linked: set[str] = set()  # files listed as having more names: what a hard link may name
        self._resume: dict[int, tuple[int, tuple[int, int] | None]] = {}  # start, and the partial file's inode
        self._spots: dict[int, Spot] = {}  # large files being written: directory and name
        self._bases: dict[int, int] = {}  # delta: descriptor of the old copy, once a COPY needs it
        self._described: set[int] = set()  # delta: files whose old copy was described to the sender
        self._dirs: list[Entry] = []
        self._made: set[str] = set()  # directories of the list this transfer made: only theirs take the listed mode
        self._held_bytes = 0  # see MAX_HELD_NAME_BYTES
        self._specials: list[Entry] = []  # links, FIFOs, devices: made at the end
        self._devices_skipped = 0
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
        policy = self.policy
        if manifest.delete and not (policy.delete or policy.overwrite):
            raise UsageError("the sender asks to --delete in DEST: run recv with --delete (or --overwrite) to allow it")
        self._dry = policy.dry_run or manifest.dry_run
        self.deleting = policy.delete or policy.delete_excluded or manifest.delete
        self._delete_excluded = policy.delete_excluded or manifest.delete_excluded
        self._filters = parse_specs(manifest.filters)
        self._open_root()
        self._open_dirs.close()
        self._open_dirs = DestDirs(self._root_fd, self._created)
        if not self._dry and not os.access(self.root, os.W_OK | os.X_OK):
            raise LocalIOError(f"{shown(str(self.root))}: permission denied")
        self._chunk_bytes = manifest.chunk_bytes
        self._delta = manifest.delta
        for state in (self._files, self._linked, self._described, self._created, self._hidden, self._made):
            state.clear()  # what an earlier connection wrote is on disk now, planned afresh from there
        for listed in (self._hidden_roots, self._dirs, self._specials):
            listed.clear()
        self._listed.clear()
        self._devices_skipped = 0
        self._held_bytes = 0

    def _open_root(self) -> None:
        try:
            if not self._dry:
                with contextlib.suppress(FileExistsError):
                    self.root.mkdir(parents=True)
                    self._made_root = True
            if self._root_fd < 0 and (not self._dry or self.root.is_dir()):
                self._root_fd = os.open(self.root, DIR_FLAGS & ~os.O_NOFOLLOW)  # DEST itself is the user's word
        except OSError as exc:
            raise local_error(exc, self.root) from None

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
                dirs.trim()
                if entry.kind == "dir":
                    self._place_dir(self._listed_dir(entry), dirs)
                    self._dirs.append(entry)
                    continue
                parent, name = self._listed_entry(entry)
                disk_parent = self._hidden.get(parent, parent)
                st = None if disk_parent in self._created else lstat_or_none(name, dirs.fd(disk_parent))
                if entry.kind == "file":
                    self._plan_file(index, entry, st, draft, (dirs.fd(disk_parent), name), parent in self._hidden)
                elif st is None or not specials.already_here(entry, st, name, dirs.fd(disk_parent), dirs, self._hidden):
                    self._refuse_existing(entry, st)
                    self._plan_special(entry)
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        if draft.need > free:
            raise LocalIOError(f"{self.root}: not enough free space ({draft.need} bytes needed, {free} available)")
        starts = {i: n for i, n in draft.starts.items() if n}
        return Plan(starts, tuple(draft.done), tuple(draft.compare), tuple(draft.old_copies))

    def _plan_special(self, entry: Entry) -> None:
        """Links and FIFOs are made at the end; a device node only where this receiver allows it."""
        if entry.kind in ("char", "block") and not self.policy.makes_devices():
            self._devices_skipped += 1
            self.items.append(("skip", entry.path))
        else:
            self._specials.append(entry)

    def _place_dir(self, rel: str, dirs: DestDirs) -> None:
        """Make directory ``rel`` where it goes on disk: as it is if it is there already; under a
        hidden name if it is the top of a new subtree; inside its hidden parent otherwise."""
        if not rel:
            dirs.make(rel)
            if self._made_root:
                self._made.add(rel)
            return
        parent, name = placed(rel)
        if parent in self._hidden:
            disk = self._hidden[rel] = f"{self._hidden[parent]}/{name}"
            dirs.make(disk)
        elif lstat_or_none(name, dirs.fd(parent)) is not None:
            dirs.make(rel)
            return  # there already: it keeps its own mode and owner, unless --overwrite
        else:
            disk = self._hidden[rel] = f"{parent}/{partial_name(name)}".lstrip("/")
            self._hidden_roots.append((disk, rel))
            self._claim_hidden(parent, name, disk, dirs)
        self._made.add(rel)

    def _claim_hidden(self, parent: str, name: str, disk: str, dirs: DestDirs) -> None:
        """A new subtree's hidden directory: made now and vouched for by a marker beside it, or one an
        interrupted run of this receiver made (its marker says so), taken up again. Anything else at
        that name is someone else's: the transfer stops rather than write into it."""
        parent_fd = dirs.fd(parent)
        made = lstat_or_none(partial_name(name), parent_fd) is None
        dirs.make(disk)
        if made:
            mark(name, parent_fd, dirs.fd(disk))
        elif not marked(name, parent_fd, dirs.fd(disk)):
            raise LocalIOError(
                f"{shown(str(self.root / disk))}: in the way of new directory {shown(str(self.root / parent / name))},"
                " and not made by rtransfer: remove it or move it away"
            )

    def _disk_path(self, path: str) -> str:
        """An entry's path on disk: inside a hidden subtree while the transfer runs."""
        parent, name, hidden = self._place_file(path)
        return f"{parent}/{name}" if hidden else path

    def _listed_dir(self, entry: Entry) -> str:
        """A directory entry's path under DEST ("" for a "src/" source's root), checked."""
        rel = "" if entry.path == CONTENTS else safe_relative_path(entry.path)
        refuse_working_names(rel)
        self._hold(entry)
        if self.deleting:
            self._listed.directory(rel)
            if rel:
                self._listed.entry(*placed(rel))
        return rel

    def _listed_entry(self, entry: Entry) -> tuple[str, str]:
        """Any other entry's (parent, name), checked: its name, and a link's target, stay inside;
        a hard link names a file this transfer listed as having more names (never a link, nor a
        file that was here before)."""
        parent, name = placed(safe_relative_path(entry.path))
        refuse_working_names(entry.path)
        if entry.kind != "file" or entry.linked or self.deleting:
            self._hold(entry)
        if entry.kind == "hardlink":
            if entry.target not in self._linked:
                link = f"{shown(entry.path)!r} -> {shown(entry.target or '')!r}"
                raise LocalIOError(f"refusing hard link {link}: its target is not a linked file of this transfer")
        elif entry.kind == "symlink" and self.policy.safe_links and not link_stays_inside(entry.path, entry.target):
            link = f"{shown(entry.path)!r} -> {shown(entry.target or '')!r}"
            raise LocalIOError(f"refusing link {link}: it points outside DEST (--safe-links)")
        elif entry.linked:
            self._linked.add(entry.path)
        if self.deleting:
            self._listed.entry(parent, name)
        return parent, name

    def _hold(self, entry: Entry) -> None:
        """Count what the end of the transfer keeps of ``entry`` (see MAX_HELD_NAME_BYTES)."""
        self._held_bytes += len(entry.path) + len(entry.target or "")
        if self._held_bytes > MAX_HELD_NAME_BYTES:
            raise LocalIOError(
                f"the transfer lists more directories, links and names to keep until its end than this receiver"
                f" holds ({MAX_HELD_NAME_BYTES >> 20} MiB of names)"
            )

    def _preview(self, batch: EntryBatch) -> Plan:
        """A dry run: what this batch would send or replace, said in ``items``; every file counts as
        done, so none is sent, and nothing here changes. What a real run would refuse, it refuses."""
        done = []
        try:
            with DestDirs(max(self._root_fd, 0), create=False) as dirs:
                for index, entry in enumerate(batch.entries, batch.first):
                    dirs.trim()
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
            if not (stat.S_ISREG(st.st_mode) and st.st_size == entry.size):
                return False
            (digest,) = _read_held([(os.dup(parent_fd), name)], content_digest)
            return digest == entry.digest
        return self._already_here(st, entry)

    def _plan_file(
        self, index: int, entry: Entry, st: os.stat_result | None, draft: Draft, at: tuple[int, str], ours: bool
    ) -> None:
        """``at``: the file's directory and name on disk. ``ours``: the file is in a hidden subtree,
        where what is there was left by an earlier run of this transfer, to be replaced without
        --overwrite."""
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
            start, self._durable[index], inode = self._resume_point(*at, entry)
            draft.starts[index] = start
            self._resume[index] = (start, inode)
        draft.need += (entry.size or 0) - draft.starts.get(index, 0)

    async def examine(self, plan: Plan) -> Plan:
        """Read what ``plan`` left open, in a worker thread: a file whose content is already here is
        done (and takes the sender's mtime, so the quick check finds it next time); each remaining
        old copy is described, so the sender can send only what it lacks."""
        if not plan.compare and not plan.old_copies:
            return plan
        try:
            digests = await in_cpu(_read_held, self._held(plan.compare), content_digest)
            same = [i for i, digest in zip(plan.compare, digests, strict=True) if digest == self._files[i].digest]
            self._refuse_changed([i for i in plan.compare if i not in same])
            for index in same:
                self._touch(index)
                del self._files[index]
            described = [i for i in plan.old_copies if i not in same]
            bases: dict[int, Basis] = dict(
                zip(described, await in_cpu(_read_held, self._held(described), describe), strict=True)
            )
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        self._described.update(bases)
        starts = {i: n for i, n in plan.start_offsets.items() if i not in same}
        return replace(plan, start_offsets=starts, done=plan.done + tuple(same), bases=bases)

    def _held(self, indices: tuple[int, ...] | list[int]) -> list[tuple[int, str]]:
        """Each file's directory (a descriptor of its own, for a worker thread) and name."""
        held = []
        for index in indices:
            parent, name, _ = self._place_file(self._files[index].path)
            held.append((os.dup(self._open_dirs.fd(parent)), name))
        return held

    def _refuse_changed(self, indices: list[int]) -> None:
        if indices and not self.policy.overwrite:
            path = self.root / self._files[indices[0]].path
            raise LocalIOError(f"{shown(str(path))}: already exists (use --overwrite to replace it)")

    def _touch(self, index: int) -> None:
        """A file found whole by its content takes the sender's mtime (so the quick check finds it next
        time), through its own descriptor."""
        entry = self._files[index]
        if entry.mtime is None:
            return
        parent, name, _ = self._place_file(entry.path)
        fd = open_existing(name, self._open_dirs.fd(parent))
        if fd is not None:
            try:
                os.utime(fd, (entry.mtime, entry.mtime))
            finally:
                os.close(fd)

    def _refuse_existing(self, entry: Entry, st: os.stat_result | None) -> None:
        if st is None:
            return
        if not self.policy.overwrite:
            raise LocalIOError(f"{shown(str(self.root / entry.path))}: already exists (use --overwrite to replace it)")
        if stat.S_ISDIR(st.st_mode):
            raise LocalIOError(f"{shown(str(self.root / entry.path))}: is a directory")

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

    def _resume_point(self, dir_fd: int, name: str, entry: Entry) -> tuple[int, int, tuple[int, int] | None]:
        """Bytes of the partial file to keep, how many of them are known synced to disk, and the
        partial file's inode. Only a partial file its journal vouches for, of this version of the
        source, is kept; anything else at the partial name is removed, never opened."""
        part = partial_name(name)
        record = read_journal(dir_fd, name)
        st = lstat_or_none(part, dir_fd)
        keep = 0
        if record is not None and st is not None and record.identity == entry.identity and record.vouches(st):
            resumable = record.resumable_bytes(boot_id())
            if 0 <= resumable <= st.st_size:  # a prefix of the file, whatever chunk size wrote it
                keep = resumable - resumable % self._chunk_bytes
        if keep == 0:
            remove(part, dir_fd)
            remove_journal(dir_fd, name)
            return 0, 0, None
        assert record is not None and st is not None
        return keep, min(record.durable_bytes, keep), (st.st_dev, st.st_ino)

    def _spot(self, index: int) -> Spot:
        spot = self._spots.get(index)
        if spot is None:
            parent, name, _ = self._place_file(self._files[index].path)
            spot = self._spots[index] = Spot(self._open_dirs.fd(parent), name)
        return spot

    def display_path(self, index: int) -> str:
        return self._files[index].path

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        """A resumed file's digest still covers the whole file: hash what is already here, from the
        partial file the plan vouched for."""
        spot, (_, inode) = self._spot(index), self._resume[index]
        try:
            fd = open_existing(spot.part, spot.dir_fd)
            if fd is None or _inode(fd) != inode:
                if fd is not None:
                    os.close(fd)
                raise LocalIOError(f"{shown(spot.part)}: changed since the transfer planned to resume it")
            try:
                await digest.hash_prefix(fd, size, spot.part)
            finally:
                os.close(fd)
        except OSError as exc:
            raise local_error(exc, self.root / self._disk_path(self._files[index].path)) from None

    async def _open_at(self, index: int, offset: int) -> PartialWriter:
        # A delta's writes follow the content, not the chunk size that direct I/O aligns to.
        fixed = index not in self._described
        direct = fixed and self.policy.direct_io and direct_io_suits(self._files[index].size or 0, self._chunk_bytes)
        inode = self._resume.get(index, (0, None))[1] if offset else None
        handle = await PartialWriter.open(self._spot(index), offset, direct, self._chunk_bytes, inode)
        self._open[index] = handle
        self._written[index] = self._journaled[index] = offset
        return handle

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.write(data)
            await self._advance(index, len(data))
        except OSError as exc:
            raise local_error(exc, self._shown(index)) from None

    async def skip(self, index: int, offset: int, n: int) -> None:
        """``n`` zeros of a sparse source, as a hole."""
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.skip(n)
            await self._advance(index, n)
        except OSError as exc:
            raise local_error(exc, self._shown(index)) from None

    def _shown(self, index: int) -> str:
        return str(self.root / self._files[index].path)

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
        taken = 0
        try:
            handle = self._open.get(index) or await self._open_at(index, offset)
            await handle.flush()  # what the writer buffered goes first: the steps write to its descriptor
            src = self._bases.get(index)
            if src is None:
                spot = self._spot(index)
                src = self._bases[index] = open_existing(spot.name, spot.dir_fd) or -1
                if src < 0:
                    raise LocalIOError("the old copy is gone")
            for start, length in ranges:
                for step in range(0, length, COPY_STEP_BYTES):
                    want = min(COPY_STEP_BYTES, length - step)
                    await in_cpu(_copy_hashed, src, handle.fileno(), start + step, want, digest)
                    taken += want
                    await self._advance(index, want)
        except OSError as exc:
            raise local_error(exc, self._shown(index)) from None
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
        device, inode = handle.inode
        record = JournalRecord(identity, self._chunk_bytes, written, self._durable[index], boot_id(), device, inode)
        spot = self._spot(index)
        await in_worker(write_journal, spot.dir_fd, spot.name, record)
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
        """Close the partial file, its owner, mode and times set through its descriptor; rename it
        into place only if its digest matched."""
        entry = self._files[index]
        self._close_basis(index)
        try:
            handle = self._open.pop(index, None) or await self._open_at(index, self._resume.get(index, (0, None))[0])
            try:
                await self._settle_sync(index)
                if ok:
                    await handle.settle(entry, self.policy)
            finally:
                await handle.close()
            spot = self._spot(index)
            if entry.identity is not None:
                remove_journal(spot.dir_fd, spot.name)
            if ok:
                os.replace(spot.part, spot.name, src_dir_fd=spot.dir_fd, dst_dir_fd=spot.dir_fd)
            else:
                remove(spot.part, spot.dir_fd)
        except OSError as exc:
            raise local_error(exc, self._shown(index)) from None
        finally:
            self._forget(index)

    def _forget(self, index: int) -> None:
        del self._files[index]
        spot = self._spots.pop(index, None)
        if spot is not None:
            spot.close()
        for state in (self._written, self._journaled, self._durable, self._resume):
            state.pop(index, None)

    async def write_pack(
        self, files: list[PackedFile], payload: Buffer, check: bool = True
    ) -> list[tuple[str, int, str | None]]:
        """Put a pack's files in place on the loop's thread, a slice at a time: per file, its digest
        checked (see ``check_packed``), then create, write, owner, mode, mtime, close and rename;
        no other call. A file whose digest fails gets no name; its hex digest comes back None (path,
        size and hex digest for each)."""
        entries = [self._files.pop(f.file_index) for f in files]
        places = [self._place_file(e.path) for e in entries]
        try:
            packed = write_packed(self._open_dirs, files, entries, places, payload, self.policy, check)
            return await in_slices(packed)
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None

    def _place_file(self, path: str) -> tuple[str, str, bool]:
        """A file's directory on disk, its name, and whether it is written under that name at once
        (in a hidden subtree) rather than under a partial name renamed once it is written."""
        parent, name = placed(path)
        disk_parent = self._hidden.get(parent)
        return (parent, name, False) if disk_parent is None else (disk_parent, name, True)

    async def complete(self) -> list[str]:
        """Links, FIFOs and devices after every file (a hard link names one; nothing is written
        through a link), then --delete, then directory owners, times and modes, deepest first, as
        rsync and tar do: writing a directory's contents changes its mtime, and a read-only
        directory must not block its own contents. The warnings, for what was not made as listed."""
        try:
            await in_worker(self._complete)
        except OSError as exc:
            raise local_error(exc, exc.filename or self.root) from None
        if self._devices_skipped:
            nodes = "a device node" if self._devices_skipped == 1 else f"{self._devices_skipped} device nodes"
            self.warnings.append(f"skipped {nodes}: recv --devices, as root, makes them")
        warnings, self.warnings = self.warnings, []
        return warnings

    def _complete(self) -> None:
        if self._dry:
            if self.deleting and self._root_fd >= 0:
                with DestDirs(self._root_fd, create=False) as dirs:
                    self._delete(dirs, remove=False)
            return
        self._open_dirs.close()
        self._unhide()
        with DestDirs(self._root_fd) as dirs:
            for entry in self._specials:
                dirs.trim()
                parent, name = placed(entry.path)
                specials.make(entry, name, dirs.fd(parent), dirs, self.policy)
            if self.deleting:
                self._delete(dirs, remove=True)
            for entry in reversed(self._dirs):
                dirs.trim()
                rel = "" if entry.path == CONTENTS else entry.path
                dir_fd = dirs.fd(rel)
                ours = rel in self._made or self.policy.overwrite  # one that was here keeps its mode and owner
                if ours:
                    self.policy.own(entry, dir_fd)
                if entry.mtime is not None:
                    os.utime(dir_fd, (entry.mtime, entry.mtime))
                if ours:
                    os.fchmod(dir_fd, self.policy.mode(entry.mode))

    def _delete(self, dirs: DestDirs, remove: bool) -> None:
        deletion = Deletion(self._filters, remove, self.warnings.append, self._delete_excluded)
        self.items.extend(("delete", p) for p in deletion.run(dirs, self._listed))

    def _unhide(self) -> None:
        """Each new subtree, complete, takes its name: one rename for all it holds."""
        with DestDirs(self._root_fd) as dirs:
            for hidden, final in self._hidden_roots:
                dirs.trim()
                parent, name = placed(final)
                parent_fd = dirs.fd(parent)
                if lstat_or_none(name, parent_fd) is not None:
                    there = shown(str(self.root / final))
                    raise LocalIOError(f"{there}: appeared during the transfer (the new one is {shown(hidden)})")
                os.rename(placed(hidden)[1], name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                remove(marker_name(name), parent_fd)
        self._hidden.clear()
        self._hidden_roots.clear()

    async def suspend(self) -> None:
        """The connection failed: keep what can resume (journal it), drop what cannot.

        Nothing is ever left under a final name."""
        self._open_dirs.close()
        for index in list(self._bases):
            self._close_basis(index)
        for index, handle in list(self._open.items()):
            resumable = self._files[index].identity is not None
            with contextlib.suppress(OSError):
                await self._settle_sync(index)
            with contextlib.suppress(OSError):
                if resumable:
                    await self._journal(index, sync=False)
                await handle.close()
                if not resumable:
                    remove(self._spot(index).part, self._spot(index).dir_fd)
        self._open.clear()
        for spot in self._spots.values():
            spot.close()
        self._spots.clear()


Sink = DirectorySink | StdoutSink
