"""Where a transfer lands: DEST on disk (DirectorySink) or standard output (stdout.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from msgspec.structs import replace

from rtransfer.errors import LocalIOError, UsageError
from rtransfer.filters import parse_specs
from rtransfer.integrity import FileDigest
from rtransfer.names import local_error, shown
from rtransfer.protocol.model import Buffer, EntryBatch, Manifest
from rtransfer.protocol.pack import PackedFile
from rtransfer.receiving.dest import DIR_FLAGS, DestDirs, check_dest, unwritable
from rtransfer.receiving.finish import devices_warning, finish_transfer
from rtransfer.receiving.landing import Landing
from rtransfer.receiving.packs import write_packed
from rtransfer.receiving.plan import Plan, Planner
from rtransfer.receiving.specials import DestPolicy
from rtransfer.receiving.stdout import StdoutSink
from rtransfer.receiving.write import PartialFiles
from rtransfer.workers import in_slices, in_worker


class DirectorySink:
    """Writes a transfer under DEST: each file into a hidden partial name, renamed once verified;
    a new directory, with all it holds, under a hidden name renamed once at the end.

    Each batch is planned first (plan.py); large files are written as resumable prefixes
    (write.py); small files arrive whole in packs and are written a pack at a time, on the loop's
    thread in slices (packs.py); the end makes links and sets directories (finish.py). Every file
    is reached from its directory's descriptor, never by a path a link could redirect."""

    def __init__(self, root: Path, policy: DestPolicy) -> None:
        self.land = Landing(root, policy)
        self.planner = Planner(self.land)
        self.partials = PartialFiles(self.land)

    @property
    def items(self) -> list[tuple[str, str]]:
        """(action, path): a dry run's verdicts, --delete's removals, skipped device nodes, what was
        here already and kept (a conflict)."""
        return self.land.items

    @property
    def conflicts(self) -> int:
        return self.land.ending.conflicts

    @property
    def dry(self) -> bool:
        return self.land.dry

    def check(self) -> None:
        check_dest(self.land.root, self.land.policy.file_dest)

    def begin(self, manifest: Manifest) -> None:
        """A connection's transfer begins: make DEST, hold it open (everything below is reached from it).
        A dry run makes nothing: a DEST not there yet is empty."""
        land, policy = self.land, self.land.policy
        if manifest.delete and not (policy.delete or policy.overwrite):
            raise UsageError("the sender asks to --delete in DEST: run recv with --delete (or --overwrite) to allow it")
        land.dry = policy.dry_run or manifest.dry_run
        land.deleting = policy.delete or policy.delete_excluded or manifest.delete
        land.delete_excluded = policy.delete_excluded or manifest.delete_excluded
        land.filters = parse_specs(manifest.filters)
        self._name_the_file(manifest)
        land.deleting = land.deleting and land.named is None  # one file: no directory of the transfer to trim
        self._open_root()
        land.open_dirs.close()
        land.restart()
        self.planner.restart()
        land.open_dirs = DestDirs(land.root_fd, land.created)
        why = "" if land.dry else unwritable(land.root)
        if why:
            raise LocalIOError(f"{shown(str(land.root))}: {why}")
        land.chunk_bytes = manifest.chunk_bytes
        land.delta = manifest.delta

    def _name_the_file(self, manifest: Manifest) -> None:
        """scp's and rsync's rule, over ssh: one file sent to a DEST that is not a directory (nothing
        there, or a file) and whose parent is, takes DEST's name."""
        land = self.land
        chosen = land.named is not None or not (land.policy.file_dest and manifest.one_file)
        if not chosen and not land.root.is_dir() and land.root.parent.is_dir():
            land.named, land.root = land.root.name, land.root.parent

    def _open_root(self) -> None:
        land = self.land
        try:
            if not land.dry:
                with contextlib.suppress(FileExistsError):
                    land.root.mkdir(parents=True)
                    land.made_root = True
            if land.root_fd < 0 and (not land.dry or land.root.is_dir()):
                land.root_fd = os.open(land.root, DIR_FLAGS & ~os.O_NOFOLLOW)  # DEST itself is the user's word
        except OSError as exc:
            raise local_error(exc, land.root) from None

    def plan(self, batch: EntryBatch) -> Plan:
        if self.land.named is not None:
            batch = _named(batch, self.land.named)
        return self.planner.plan(batch)

    async def examine(self, plan: Plan) -> Plan:
        return await self.planner.examine(plan)

    def display_path(self, index: int) -> str:
        return self.land.files[index].path

    async def hash_prefix(self, index: int, size: int, digest: FileDigest) -> None:
        await self.partials.hash_prefix(index, size, digest)

    async def write(self, index: int, offset: int, data: Buffer) -> None:
        await self.partials.write(index, offset, data)

    async def skip(self, index: int, offset: int, n: int) -> None:
        await self.partials.skip(index, offset, n)

    async def copy_from_basis(self, index: int, offset: int, ranges: list[tuple[int, int]], digest: FileDigest) -> int:
        return await self.partials.copy_from_basis(index, offset, ranges, digest)

    async def finish(self, index: int, ok: bool) -> None:
        await self.partials.finish(index, ok)

    async def write_pack(
        self, files: list[PackedFile], payload: Buffer, check: bool = True
    ) -> list[tuple[str, int, str | None]]:
        """Put a pack's files in place on the loop's thread, a slice at a time: per file, its digest
        checked (see ``check_packed``), then create, write, owner, mode, mtime, close and rename;
        no other call. A file whose digest fails gets no name; its hex digest comes back None (path,
        size and hex digest for each)."""
        land = self.land
        entries = [land.files.pop(f.file_index) for f in files]
        places = [land.place_file(e.path) for e in entries]
        try:
            packed = write_packed(land.open_dirs, files, entries, places, payload, land.policy, check)
            return await in_slices(packed)
        except OSError as exc:
            raise local_error(exc, exc.filename or land.root) from None

    async def complete(self) -> list[str]:
        """The end of the transfer (finish.py); the warnings, for what was not made as listed."""
        land = self.land
        try:
            await in_worker(finish_transfer, land)
        except OSError as exc:
            raise local_error(exc, exc.filename or land.root) from None
        devices = devices_warning(land)
        if devices:
            land.warnings.append(devices)
        warnings, land.warnings = land.warnings, []
        return warnings

    async def suspend(self) -> None:
        """The connection failed: keep what can resume, drop what cannot."""
        self.land.open_dirs.close()
        await self.partials.suspend()


Sink = DirectorySink | StdoutSink


def _named(batch: EntryBatch, name: str) -> EntryBatch:
    """The one file of a transfer that announced one, under DEST's name (``_name_the_file``)."""
    if batch.first != 0 or not batch.last or len(batch.entries) != 1 or batch.entries[0].kind != "file":
        raise LocalIOError("the sender announced one file and listed something else")
    return EntryBatch(0, (replace(batch.entries[0], path=name),), True)
