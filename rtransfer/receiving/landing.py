"""What planning, writing and finishing share while a transfer lands in DEST: one connection's
view of DEST (its options, its open directories, the files on their way), and what the end of the
transfer will do (``Ending``)."""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct, field

from rtransfer.filters import NO_FILTERS, Filters
from rtransfer.protocol.model import Entry
from rtransfer.receiving.delete import ListedNames
from rtransfer.receiving.dest import DestDirs, placed
from rtransfer.receiving.specials import DestPolicy


class Ending(Struct):
    """What the list asks of the transfer's end, kept from batch to batch: directories and links,
    whose times, modes and targets come last, new subtrees to rename, --delete's names."""

    dirs: list[Entry] = field(default_factory=list)
    specials: list[Entry] = field(default_factory=list)  # links, FIFOs, devices: made at the end
    made: set[str] = field(default_factory=set)  # directories of the list this transfer made: only theirs take its mode
    hidden_roots: list[tuple[str, str]] = field(default_factory=list)  # (hidden path, final path)
    listed: ListedNames = field(default_factory=ListedNames)
    devices_skipped: int = 0
    conflicts: int = 0  # files here already, different, kept (no --overwrite): skipped, exit 6 at the end
    kept: set[str] = field(default_factory=set)  # their paths: a hard link of the list never names one


class Landing(Struct):
    """DEST as one connection's transfer finds it; ``begin`` sets it afresh for each connection,
    since what an earlier one wrote is on disk by then."""

    root: Path
    policy: DestPolicy  # this side's own options; the sender may ask for --delete and --dry-run too
    root_fd: int = -1
    made_root: bool = False  # DEST did not exist: this run made it, and may give it the listed mode
    named: str | None = None  # scp's rule: DEST is the one file's name, ``root`` its directory
    ours: set[int] = field(default_factory=set)  # --checksum: files to compare that are an earlier run's leftovers
    dry: bool = False
    deleting: bool = False
    delete_excluded: bool = False
    filters: Filters = NO_FILTERS
    chunk_bytes: int = 0
    delta: bool = True  # the sender allows it (send --whole-file does not)
    # Directories kept open from batch to batch (planning) and pack to pack (writing), both on the
    # loop's thread: opening them again for each batch and pack cost a receiver 5% of its time in
    # a tree of small files.
    open_dirs: DestDirs = field(default_factory=lambda: DestDirs(-1))
    files: dict[int, Entry] = field(default_factory=dict)  # accepted, not yet in place
    # A resuming file's start, the bytes of it known synced, and its partial file's inode.
    resume: dict[int, tuple[int, int, tuple[int, int] | None]] = field(default_factory=dict)
    described: set[int] = field(default_factory=set)  # delta: files whose old copy was described
    created: set[str] = field(default_factory=set)  # directories this transfer made: no lstat for what is in them
    # A new subtree is made under a hidden name and renamed once, at the end: inside it, files are
    # written under their own names, with no rename each. Each new directory's path on disk:
    hidden: dict[str, str] = field(default_factory=dict)
    ending: Ending = field(default_factory=Ending)
    items: list[tuple[str, str]] = field(default_factory=list)  # a dry run's verdicts, --delete's removals, skips
    warnings: list[str] = field(default_factory=list)

    def place_file(self, path: str) -> tuple[str, str, bool]:
        """A file's directory on disk, its name, and whether it is written under that name at once
        (in a hidden subtree) rather than under a partial name renamed once it is written."""
        parent, name = placed(path)
        disk_parent = self.hidden.get(parent)
        return (parent, name, False) if disk_parent is None else (disk_parent, name, True)

    def disk_path(self, path: str) -> str:
        """An entry's path on disk: inside a hidden subtree while the transfer runs."""
        parent, name, hidden = self.place_file(path)
        return f"{parent}/{name}" if hidden else path

    def shown(self, index: int) -> str:
        return str(self.root / self.files[index].path)

    def restart(self) -> None:
        """A new connection's transfer: planned afresh from what is on disk."""
        self.files.clear()
        self.resume.clear()
        self.described.clear()
        self.created.clear()
        self.hidden.clear()
        self.ours.clear()
        self.ending = Ending()
