"""Path rules for names and links that come from the peer."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtransfer.errors import LocalIOError
from rtransfer.names import link_stays_inside, safe_relative_path
from rtransfer.sending.packs import read_pack
from rtransfer.sending.walk import collect_sources, listing, next_batch, open_listed


@pytest.mark.parametrize(
    "name", ["a", "a/b/c", "dir/.hidden", "日本語/ファイル", "C:x", "a\\b", "bad\udcff.txt", "a\nb"]
)
def test_relative_names_are_accepted(name: str) -> None:
    assert safe_relative_path(name) == name


@pytest.mark.parametrize("name", ["", "/abs", "../up", "a/../../b", "a//b", "./a", "nul\x00", "a/."])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(LocalIOError, match="refusing unsafe name"):
        safe_relative_path(name)


def _safe_by_components(name: str) -> bool:
    """The rule, spelled out: no empty, "." or ".." component, no NUL (a backslash or a colon is a
    name's byte like any other, as POSIX has it)."""
    return "\x00" not in name and all(c not in ("", ".", "..") for c in name.split("/"))


@given(st.lists(st.sampled_from(["a", "b.c", ".", "..", "...", "", "C:", "x\\y", "\x00", ".d", "é"]), max_size=5))
def test_the_name_check_is_the_component_rule(parts: list[str]) -> None:
    name = "/".join(parts)
    try:
        safe_relative_path(name)
    except LocalIOError:
        assert not _safe_by_components(name), name
    else:
        assert _safe_by_components(name), name


@pytest.mark.parametrize(
    ("link", "target", "inside"),
    [
        ("a", "b", True),
        ("d/a", "../b", True),
        ("d/e/a", "../../b", True),
        ("a", "../b", False),
        ("d/a", "../../b", False),
        ("a", "/etc/passwd", False),
        ("d/a", "x/../../..", False),
        ("a", "", False),
    ],
)
def test_link_targets_must_stay_inside_the_transfer(link: str, target: str, inside: bool) -> None:
    assert link_stays_inside(link, target) is inside


def test_a_dest_whose_nearest_existing_parent_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before listening (as root every directory is writable, so the refusal is simulated)."""
    import os

    from rtransfer.receiving.dest import check_dest

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with pytest.raises(LocalIOError, match=r"permission denied \(in .*ro\)"):
        check_dest(tmp_path / "ro" / "sub" / "deeper")
    check_dest(tmp_path / "rw" / "sub")


def test_the_file_list_starts_with_small_batches(tmp_path: Path) -> None:
    """The first batch goes out once the next is listed too, and the receiver plans it before any
    data moves: small first batches start the data sooner, then they grow to the full size."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(1500):
        (src / f"f{i:04}").write_bytes(b"")
    entries = listing(collect_sources([str(src)], None), False, print)
    batches = list(iter(lambda: list(next_batch(entries)), []))
    assert [len(b) for b in batches] == [64, 128, 256, 512, 541]
    assert sorted(s.entry.path for b in batches for s in b) == ["src", *(f"src/f{i:04}" for i in range(1500))]


def test_a_directory_swapped_for_a_link_after_the_walk_listed_it_is_not_walked_into(tmp_path: Path) -> None:
    """The walk lists a directory, then lists what it holds: a link put in its place meanwhile
    (tests/e2e/test_source_swaps.py swaps the names the reader opens) must not be followed."""
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(b"not the sender's to give")
    entries = listing(collect_sources([str(src)], None), False, print)
    assert next(entries).entry.path == "src"
    assert next(entries).entry.path == "src/sub"
    (src / "sub").rmdir()
    (src / "sub").symlink_to(elsewhere)
    with pytest.raises(LocalIOError, match=r"src/sub: replaced by another file while being sent"):
        next(entries)


def test_a_root_gone_before_its_walk_is_a_local_error(tmp_path: Path) -> None:
    """A reconnect walks again from the roots: one removed since is one line (exit 6), as root too."""
    (tmp_path / "src" / "sub").mkdir(parents=True)
    sources = collect_sources([str(tmp_path / "src")], None)
    shutil.rmtree(tmp_path / "src")
    with pytest.raises(LocalIOError, match="No such file or directory"):
        list(listing(sources, False, print))


@pytest.mark.skipif(not hasattr(os, "O_PATH") or os.geteuid() != 0, reason="O_PATH (Linux); mknod needs root")
def test_a_device_renamed_over_a_listed_name_is_looked_at_but_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device's open alone can act (a watchdog starts counting, a tape rewinds): the name is
    opened O_PATH, which reaches no driver, and found not to be the listed file."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"listed")
    os.mknod(tmp_path / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    _, listed = list(listing(collect_sources([str(tmp_path / "src")], None), False, print))
    os.rename(tmp_path / "null", tmp_path / "src" / "f")
    opens: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, *args: object, **kwargs: object) -> int:
        opens.append((os.fsdecode(path), flags))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(LocalIOError, match=r"src/f: replaced by another file while being sent"):
        open_listed(listed)
    named = [flags for path, flags in opens if path.endswith("f") or path.startswith("/proc/")]
    assert named and all(flags & os.O_PATH for flags in named), opens


leases = pytest.mark.skipif(not hasattr(fcntl, "F_SETLEASE"), reason="leases are Linux's")


class LeaseHolder:
    """Another process holding a write lease on ``path``; on SIGIO (someone opens it) it lets go, or,
    ``stubborn``, keeps it until the kernel breaks it (lease-break-time, 45 s by default)."""

    def __init__(self, path: Path, stubborn: bool = False) -> None:
        args = [sys.executable, "-c", _LEASE_HOLDER, str(path), "1" if stubborn else ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "leased\n"

    def __enter__(self) -> LeaseHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


_LEASE_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
let_go = lambda *_: (fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK), sys.exit(0))
signal.signal(signal.SIGIO, signal.SIG_IGN if sys.argv[2] else let_go)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
signal.pause()
"""


@leases
def test_a_file_under_a_lease_is_waited_for_not_failed(tmp_path: Path) -> None:
    """Samba's oplocks and knfsd's delegations are leases: an open waits for the holder to let go
    (it is told, SIGIO), as any open does; a non-blocking one failed with EAGAIN."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"leased")
    _, listed = list(listing(collect_sources([str(tmp_path / "src")], None), False, print))
    with LeaseHolder(tmp_path / "src" / "f") as holder:
        fd = open_listed(listed)
        assert os.read(fd, 100) == b"leased"
        os.close(fd)
        assert holder.proc.wait(timeout=30) == 0


@leases
def test_on_the_event_loops_thread_a_lease_is_not_waited_for(tmp_path: Path) -> None:
    """Any owner can take a lease and keep it 45 s: where the event loop reads (packs, the walk), that
    would stall every connection. A pack says so, and is read again on a worker thread; a large file
    the walk finds leased is listed without an identity (sent whole, not resumed part-way)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"small")
    (src / "large").write_bytes(bytes(2 << 20))
    with LeaseHolder(src / "large", stubborn=True), LeaseHolder(src / "small", stubborn=True):
        entries = {s.entry.path: s for s in listing(collect_sources([str(src)], None), False, print)}
        assert entries["src/large"].entry.identity is None
        with pytest.raises(BlockingIOError):
            list(read_pack([(1, entries["src/small"])], bytearray(1 << 20)))
