"""What the receiver decides for each batch of the file list, before any data: each name checked,
directories made, where each file starts, what is already here, what must be read first (a digest
to compare, an old copy to describe)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from typing import TypeVar

from msgspec import Struct, field
from msgspec.structs import replace

from rtransfer.delta import DELTA_MIN_BYTES, describe
from rtransfer.errors import LocalIOError
from rtransfer.integrity import content_digest
from rtransfer.names import link_stays_inside, local_error, refuse_working_names, safe_relative_path, shown
from rtransfer.protocol.model import CONTENTS, Basis, Entry, EntryBatch
from rtransfer.receiving import specials
from rtransfer.receiving.dest import DestDirs, lstat_or_none, mark, marked, open_existing, partial_name, placed, remove
from rtransfer.receiving.journal import boot_id, read_journal, remove_journal
from rtransfer.receiving.landing import Landing
from rtransfer.workers import in_cpu

# What the receiver keeps of the list until the transfer's end (directories and links to make then,
# a new subtree's names, linked files, --delete's names), in bytes of paths: a sender that lists far
# more is refused, as one over --max-files is, instead of growing this side's memory without bound.
MAX_HELD_NAME_BYTES = 64 * 1024 * 1024


class Plan(Struct, frozen=True):
    """Where each file starts: bytes already here of the same version, or whole and done.

    ``plan`` finds what the names and sizes tell; ``examine`` reads what they cannot: files of
    the same size to compare by content (``compare``, --checksum) and old copies to describe
    for a delta (``old_copies``, which it turns into ``bases``)."""

    start_offsets: dict[int, int]
    done: tuple[int, ...]
    compare: tuple[int, ...] = ()
    old_copies: tuple[int, ...] = ()
    bases: dict[int, Basis] = field(default_factory=dict)


class Draft(Struct):
    """A plan while a batch is walked: what resumes where, what is done, what to read first."""

    starts: dict[int, int] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    compare: list[int] = field(default_factory=list)
    old_copies: list[int] = field(default_factory=list)
    need: int = 0  # bytes still to write, against the free space


T = TypeVar("T")


def read_held(held: list[tuple[int, str]], read: Callable[[int], T]) -> list[T]:
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


MTIME_WINDOW_NS = 1_000_000  # rsync's quick check compares seconds; times now travel to the ns: 1 ms of slack


def already_here(st: os.stat_result, entry: Entry) -> bool:
    """rsync's quick check: same size and mtime means this file arrived before (with --checksum,
    the entry carries a digest, and the content decides instead: ``examine``)."""
    return (
        stat.S_ISREG(st.st_mode)
        and entry.size == st.st_size
        and entry.mtime_ns is not None
        and abs(st.st_mtime_ns - entry.mtime_ns) < MTIME_WINDOW_NS
    )


class Planner:
    """Every name is checked once, here, when its batch is planned; what the list asks of the end
    of the transfer is kept in the landing's ``ending``."""

    def __init__(self, land: Landing) -> None:
        self.land = land
        self._linked: set[str] = set()  # files listed as having more names: what a hard link may name
        self._replaced: set[str] = set()  # of those, the ones this transfer writes anew: their links are made again
        self._held_bytes = 0  # see MAX_HELD_NAME_BYTES

    def plan(self, batch: EntryBatch) -> Plan:
        """Check each name, create directories, find what is here already and what can resume."""
        land = self.land
        if land.dry:
            return self._preview(batch)
        draft = Draft()
        dirs = land.open_dirs
        try:
            for index, entry in enumerate(batch.entries, batch.first):
                dirs.trim()
                if entry.kind == "dir":
                    self._place_dir(self._listed_dir(entry), dirs)
                    land.ending.dirs.append(entry)
                    continue
                parent, name = self._listed_entry(entry)
                disk_parent = land.hidden.get(parent, parent)
                st = None if disk_parent in land.created else lstat_or_none(name, dirs.fd(disk_parent))
                if entry.kind == "file":
                    self._plan_file(index, entry, st, draft, (dirs.fd(disk_parent), name), parent in land.hidden)
                elif (
                    st is None
                    or entry.target in self._replaced
                    or not specials.already_here(entry, st, name, dirs.fd(disk_parent), dirs, land.hidden)
                ) and not self._conflicts(entry, st):
                    self._plan_special(entry)
            free = shutil.disk_usage(land.root).free
        except OSError as exc:
            raise local_error(exc, exc.filename or land.root) from None
        if draft.need > free:
            raise LocalIOError(f"{land.root}: not enough free space ({draft.need} bytes needed, {free} available)")
        starts = {i: n for i, n in draft.starts.items() if n}
        return Plan(starts, tuple(draft.done), tuple(draft.compare), tuple(draft.old_copies))

    def restart(self) -> None:
        self._linked.clear()
        self._replaced.clear()
        self._held_bytes = 0

    def _plan_special(self, entry: Entry) -> None:
        """Links and FIFOs are made at the end; a device node only where this receiver allows it."""
        if entry.kind in ("char", "block") and not self.land.policy.makes_devices():
            self.land.ending.devices_skipped += 1
            self.land.items.append(("skip", entry.path))
        else:
            self.land.ending.specials.append(entry)

    def _place_dir(self, rel: str, dirs: DestDirs) -> None:
        """Make directory ``rel`` where it goes on disk: as it is if it is there already; under a
        hidden name if it is the top of a new subtree; inside its hidden parent otherwise."""
        hidden, ending = self.land.hidden, self.land.ending
        if not rel:
            dirs.make(rel)
            if self.land.made_root:
                ending.made.add(rel)
            return
        parent, name = placed(rel)
        if parent in hidden:
            disk = hidden[rel] = f"{hidden[parent]}/{name}"
            dirs.make(disk)
        elif lstat_or_none(name, dirs.fd(parent)) is not None:
            dirs.make(rel)
            return  # there already: it keeps its own mode and owner, unless --overwrite
        else:
            disk = hidden[rel] = f"{parent}/{partial_name(name)}".lstrip("/")
            ending.hidden_roots.append((disk, rel))
            self._claim_hidden(parent, name, disk, dirs)
        ending.made.add(rel)

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
            root = self.land.root
            raise LocalIOError(
                f"{shown(str(root / disk))}: in the way of new directory {shown(str(root / parent / name))},"
                " and not made by rtransfer: remove it or move it away"
            )

    def _listed_dir(self, entry: Entry) -> str:
        """A directory entry's path under DEST ("" for a "src/" source's root), checked."""
        rel = "" if entry.path == CONTENTS else safe_relative_path(entry.path)
        refuse_working_names(rel)
        self._hold(entry)
        if self.land.deleting:
            self.land.ending.listed.directory(rel)
            if rel:
                self.land.ending.listed.entry(*placed(rel))
        return rel

    def _listed_entry(self, entry: Entry) -> tuple[str, str]:
        """Any other entry's (parent, name), checked: its name, and a link's target, stay inside;
        a hard link names a file this transfer listed as having more names (never a link, nor a
        file that was here before)."""
        parent, name = placed(safe_relative_path(entry.path))
        refuse_working_names(entry.path)
        deleting, policy = self.land.deleting, self.land.policy
        if entry.kind != "file" or entry.linked or deleting:
            self._hold(entry)
        if entry.kind == "hardlink":
            link = f"{shown(entry.path)!r} -> {shown(entry.target or '')!r}"
            if entry.target not in self._linked:
                raise LocalIOError(f"refusing hard link {link}: its target is not a linked file of this transfer")
            if entry.target == entry.path:  # made at the end, it would first remove the file it names
                raise LocalIOError(f"refusing hard link {link}: a name can't be a link to itself")
        elif entry.kind == "symlink" and policy.safe_links and not link_stays_inside(entry.path, entry.target):
            link = f"{shown(entry.path)!r} -> {shown(entry.target or '')!r}"
            raise LocalIOError(f"refusing link {link}: it points outside DEST (--safe-links)")
        elif entry.linked:
            self._linked.add(entry.path)
        if deleting:
            self.land.ending.listed.entry(parent, name)
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
        land = self.land
        done = []
        try:
            with DestDirs(max(land.root_fd, 0), create=False) as dirs:
                for index, entry in enumerate(batch.entries, batch.first):
                    dirs.trim()
                    if entry.kind == "dir":
                        rel = self._listed_dir(entry)
                        land.ending.dirs.append(entry)
                        if self._peek_dir(dirs, rel) is None:
                            land.items.append(("send", f"{entry.path}/"))
                        continue
                    parent, name = self._listed_entry(entry)
                    if entry.kind == "file":
                        done.append(index)
                    dir_fd = self._peek_dir(dirs, parent)
                    st = None if dir_fd is None else lstat_or_none(name, dir_fd)
                    if st is None:
                        land.items.append(("send", entry.path))
                    elif not self._same(entry, st, name, dirs) and not self._conflicts(entry, st):
                        land.items.append(("replace", entry.path))
        except OSError as exc:
            raise local_error(exc, exc.filename or land.root) from None
        return Plan({}, tuple(done))

    def _peek_dir(self, dirs: DestDirs, rel: str) -> int | None:
        """A dry run's look at a directory under DEST: its descriptor, or None if it is not there."""
        if self.land.root_fd < 0:
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
            (digest,) = read_held([(os.dup(parent_fd), name)], content_digest)
            return digest == entry.digest
        return already_here(st, entry)

    def _plan_file(
        self, index: int, entry: Entry, st: os.stat_result | None, draft: Draft, at: tuple[int, str], ours: bool
    ) -> None:
        """``at``: the file's directory and name on disk. ``ours``: the file is in a hidden subtree,
        where what is there was left by an earlier run of this transfer, to be replaced without
        --overwrite."""
        land = self.land
        size_here = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None
        if size_here is not None and entry.digest is not None and size_here == entry.size:
            draft.compare.append(index)  # --checksum: the content decides (examine)
            if ours:  # an earlier run's leftover in a hidden new subtree: replaced, never a conflict
                land.ours.add(index)
        elif st is not None and entry.digest is None and already_here(st, entry):
            draft.done.append(index)
            return
        elif not ours and self._conflicts(entry, st):
            draft.done.append(index)  # kept as it is: the sender skips it
            return
        land.files[index] = entry
        if entry.linked and st is not None:  # the names linked to what is here now must name the new file
            self._replaced.add(entry.path)
        if size_here is not None and land.delta and entry.identity and size_here >= DELTA_MIN_BYTES:
            draft.old_copies.append(index)
        if entry.identity is not None:
            land.resume[index] = self._resume_point(*at, entry)
            draft.starts[index] = land.resume[index][0]
        draft.need += (entry.size or 0) - draft.starts.get(index, 0)

    async def examine(self, plan: Plan) -> Plan:
        """Read what ``plan`` left open, in a worker thread: a file whose content is already here is
        done (and takes the sender's mtime, so the quick check finds it next time); each remaining
        old copy is described, so the sender can send only what it lacks."""
        if not plan.compare and not plan.old_copies:
            return plan
        files = self.land.files
        try:
            digests = await in_cpu(read_held, self._held(plan.compare), content_digest)
            same = [i for i, digest in zip(plan.compare, digests, strict=True) if digest == files[i].digest]
            for index in same:
                self._touch(index)
                del files[index]
            theirs = [i for i in plan.compare if i not in same and i not in self.land.ours]
            self.land.ours.difference_update(plan.compare)
            kept = [] if self.land.policy.overwrite else theirs
            for index in kept:  # changed, and kept as it is: the sender skips it
                self._conflict(files.pop(index))
            done = same + kept
            described = [i for i in plan.old_copies if i not in done]
            bases: dict[int, Basis] = dict(
                zip(described, await in_cpu(read_held, self._held(described), describe), strict=True)
            )
        except OSError as exc:
            raise local_error(exc, exc.filename or self.land.root) from None
        self.land.described.update(bases)
        starts = {i: n for i, n in plan.start_offsets.items() if i not in done}
        return replace(plan, start_offsets=starts, done=plan.done + tuple(done), bases=bases)

    def _held(self, indices: tuple[int, ...] | list[int]) -> list[tuple[int, str]]:
        """Each file's directory (a descriptor of its own, for a worker thread) and name."""
        held = []
        for index in indices:
            parent, name, _ = self.land.place_file(self.land.files[index].path)
            held.append((os.dup(self.land.open_dirs.fd(parent)), name))
        return held

    def _touch(self, index: int) -> None:
        """A file found whole by its content takes the sender's mtime (so the quick check finds it next
        time), through its own descriptor."""
        entry = self.land.files[index]
        if entry.mtime_ns is None:
            return
        parent, name, _ = self.land.place_file(entry.path)
        fd = open_existing(name, self.land.open_dirs.fd(parent))
        if fd is not None:
            try:
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)

    def _conflicts(self, entry: Entry, st: os.stat_result | None) -> bool:
        """Whether what is at ``entry``'s name, not as listed, is kept as it is (no --overwrite): it
        is named, the transfer goes on without it and exits 6 at the end (``Ending.conflicts``)."""
        if st is None:
            return False
        if not self.land.policy.overwrite:
            self._conflict(entry)
            return True
        if stat.S_ISDIR(st.st_mode):
            raise LocalIOError(f"{shown(str(self.land.root / entry.path))}: is a directory")
        return False

    def _conflict(self, entry: Entry) -> None:
        """The receiver's own file stays: nothing of the list may name it (a hard link), and it is held to
        the end (MAX_HELD_NAME_BYTES) for the links planned before it was found different."""
        self._hold(entry)
        self._linked.discard(entry.path)
        self.land.ending.kept.add(entry.path)
        self.land.ending.conflicts += 1
        self.land.items.append(("conflict", entry.path))

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
                keep = resumable - resumable % self.land.chunk_bytes
        if keep == 0:
            remove(part, dir_fd)
            remove_journal(dir_fd, name)
            return 0, 0, None
        assert record is not None and st is not None
        return keep, min(record.durable_bytes, keep), (st.st_dev, st.st_ino)
