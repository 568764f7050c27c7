"""The real ``recv`` against a hostile but authenticated sender (tests/hostile.py: the real sender,
listing whatever a test gives it), as root in CI. Each case is one of the trust issue's findings,
run twice in a row where the attack needed two runs. After every run:

- nothing outside DEST changed;
- nothing that was in DEST changed, unless the receiver said --overwrite;
- no device node, no setuid or setgid file, and nothing owned by anyone else exists in DEST,
  unless the receiver allowed it (--devices, -o, -g);
- the receiver ended with at most one error, a documented exit code, and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Proc, Receiver

REPO = Path(__file__).resolve().parents[2]
WORKING_SUFFIXES = (".rtpart", ".rtjournal", ".rtjournal.tmp", ".rtmark", ".rtmark.tmp")  # names.py, spelled out
EXIT_CODES = {0, 3, 4, 5, 6}
MIB = 1 << 20
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners, devices and setuid need a root receiver")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything under ``root`` as it is: kind, mode, owner, inode, size, content or link target."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                what: object = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = st.st_rdev
            key = os.fsencode(path.relative_to(root)).decode("utf-8", "surrogateescape")
            found[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink, st.st_size, what)
    return found


@dataclass(eq=False)
class World:
    """A receiver's DEST with files already in it, and a world outside it that must never change."""

    root: Path
    dest: Path = field(init=False)
    outside: Path = field(init=False)
    dest_mode: int = field(init=False)

    def __post_init__(self) -> None:
        self.dest = self.root / "dest"
        self.outside = self.root / "outside"
        (self.outside / "dir").mkdir(parents=True)
        (self.outside / "secret").write_text("outside DEST")
        (self.outside / "dir" / "passwd").write_text("root:x:0:0")
        self.dest.mkdir()
        self.dest_mode = self.dest.stat().st_mode
        (self.dest / "important.txt").write_text("the receiver's own")
        (self.dest / "old").mkdir()
        (self.dest / "old" / "notes.txt").write_text("also the receiver's")

    def attack(self, spec: list[dict[str, Any]], recv: tuple[str, ...] = (), send: tuple[str, ...] = ()) -> Run:
        """One run of the hostile sender against a real receiver; the checks above, after it."""
        outside, before = snapshot(self.outside), snapshot(self.dest)
        spec_file = self.root / "spec.json"
        spec_file.write_text(json.dumps(spec))
        rx = Receiver(self.dest, *recv)
        try:
            sender = subprocess.run(
                [sys.executable, "-m", "tests.hostile", "send", str(self.root), rx.address, "--json", *send],
                env={**os.environ, "RTRANSFER_HOSTILE": str(spec_file)},
                cwd=REPO,
                capture_output=True,
                timeout=120,
            )
            code = rx.finish(timeout_s=120)
        finally:
            rx.kill()
        run = Run(code, rx, sender)
        assert snapshot(self.outside) == outside, "something outside DEST changed"
        self.check(before, recv, run)
        return run

    def check(self, before: dict[str, tuple[object, ...]], recv: tuple[str, ...], run: Run) -> None:
        after = snapshot(self.dest)
        if "--overwrite" not in recv:
            kept = {p: was for p, was in before.items() if p in after or "--delete" not in recv}  # --delete: removed
            changed = {p for p, was in kept.items() if after.get(p) != was and not _moved_into_place(p, after)}
            changed |= {
                p for p, was in kept.items() if stat.S_ISDIR(int(was[0])) and not _same_directory(was, after.get(p))
            }  # type: ignore[call-overload]
            if self.dest.stat().st_mode != self.dest_mode:
                changed.add(".")
            assert not changed, f"existing entries changed without --overwrite: {changed}"
        for path, (mode, uid, gid, *_) in after.items():
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) or "--devices" in recv, f"device node {path}"
            assert not mode & (stat.S_ISUID | stat.S_ISGID) or "-o" in recv, f"setuid or setgid {path}"
            assert uid == os.geteuid() or "-o" in recv, f"{path} belongs to {uid}"
            assert gid == os.getegid() or "-g" in recv, f"{path} belongs to group {gid}"
        assert run.code in EXIT_CODES, run.stderr
        assert len(run.rx.events("error")) <= 1
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr


def _moved_into_place(path: str, after: dict[str, tuple[object, ...]]) -> bool:
    """A directory's times and size change as the transfer adds to it (its mode and owner must not,
    and its contents are checked); what sits at one of the receiver's working names is its own."""
    return (path in after and stat.S_ISDIR(int(after[path][0]))) or _working(path.rpartition("/")[2])  # type: ignore[call-overload]


def _same_directory(was: tuple[object, ...], now: tuple[object, ...] | None) -> bool:
    return now is not None and was[:3] == now[:3]  # mode (with its kind), owner, group


def _working(name: str) -> bool:
    return name.startswith(".") and name.endswith(WORKING_SUFFIXES)


@dataclass
class Run:
    code: int
    rx: Proc
    sender: subprocess.CompletedProcess[bytes]

    @property
    def stderr(self) -> str:
        return "\n".join(self.rx.other_lines) + self.sender.stderr.decode(errors="replace")

    @property
    def error(self) -> str:
        errors = self.rx.events("error")
        return str(errors[0]["message"]) if errors else ""


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_hard_link_planted_at_a_partial_name_never_leads_a_write(world: World) -> None:
    """Finding 1: run 1 planted .x.rtpart as a hard link to important.txt; run 2 sent x, and
    important.txt read PWNED."""
    first = world.attack([{"path": ".x.rtpart", "kind": "hardlink", "target": "important.txt"}])
    assert first.code == 6 and "working files" in first.error
    second = world.attack([{"path": "x", "kind": "file", "content": "PWNED"}])
    assert second.code == 0
    assert (world.dest / "x").read_text() == "PWNED"
    assert (world.dest / "important.txt").read_text() == "the receiver's own"


def test_a_hard_link_to_itself_is_refused_before_anything_is_written(world: World) -> None:
    """A second review: a file listed as linked, then a hard link of the same name to it, made the
    receiver (with --overwrite) write the file, then remove it at the end to make the link."""
    file = {"path": "important.txt", "kind": "file", "content": "new", "linked": True}
    run = world.attack(
        [file, {"path": "important.txt", "kind": "hardlink", "target": "important.txt"}], ("--overwrite",)
    )
    assert run.code == 6 and "a link to itself" in run.error
    assert (world.dest / "important.txt").read_text() == "the receiver's own"


@as_root
def test_a_hidden_directory_planted_by_a_sender_is_never_taken_for_the_receivers(world: World) -> None:
    """Finding 1: .sub.rtpart/f, a hard link to important.txt, then sub/f with mode 04755 and another
    owner: important.txt became setuid and changed owner."""
    world.attack(
        [
            {"path": ".sub.rtpart", "kind": "dir", "mode": 0o755},
            {"path": ".sub.rtpart/f", "kind": "hardlink", "target": "important.txt"},
        ]
    )
    assert not (world.dest / ".sub.rtpart").exists()
    run = world.attack(
        [
            {"path": "sub", "kind": "dir", "mode": 0o755},
            {"path": "sub/f", "kind": "file", "content": "PWNED", "mode": 0o4755, "uid": 1234, "gid": 1234},
        ]
    )
    assert run.code == 0
    assert stat.S_IMODE((world.dest / "sub" / "f").stat().st_mode) == 0o755


def test_a_fifo_at_a_partial_name_never_holds_the_receiver(world: World) -> None:
    """Finding 1: a FIFO planted as .y.rtpart hung the next run's receiver in open(), deaf to SIGTERM."""
    os.mkfifo(world.dest / ".y.rtpart")  # as a local user, or an older receiver, might leave one
    os.mkfifo(world.dest / ".y.rtjournal")
    run = world.attack([{"path": "y", "kind": "file", "content": "y" * (3 * MIB)}])
    assert run.code == 0 and (world.dest / "y").stat().st_size == 3 * MIB
    first = world.attack([{"path": ".z.rtpart", "kind": "fifo"}])
    assert first.code == 6


@as_root
def test_a_root_receiver_makes_no_device_no_setuid_file_no_foreign_owner_by_default(world: World) -> None:
    """Finding 2: a default recv made brw-rw-rw- loop0, crw-rw-rw- mem and -rwsr-sr-x root rootshell."""
    spec = [
        {"path": "mem", "kind": "char", "mode": 0o666, "device": os.makedev(1, 1)},
        {"path": "loop0", "kind": "block", "mode": 0o666, "device": os.makedev(7, 0)},
        {"path": "rootshell", "kind": "file", "content": "#!/bin/sh\n", "mode": 0o6755, "uid": 0, "gid": 0},
        {"path": "theirs", "kind": "file", "content": "x", "mode": 0o644, "uid": 4321, "gid": 4321},
        {"path": "d", "kind": "dir", "mode": 0o2755, "uid": 4321, "gid": 4321},
    ]
    run = world.attack(spec)
    assert run.code == 0
    assert not (world.dest / "mem").exists() and not (world.dest / "loop0").exists()
    assert stat.S_IMODE((world.dest / "rootshell").stat().st_mode) == 0o755
    allowed = world.attack(spec[:2], recv=("--devices", "--overwrite"))
    assert allowed.code == 0 and stat.S_ISCHR((world.dest / "mem").lstat().st_mode)


@pytest.mark.parametrize("planted", [".big.rtjournal.tmp", ".big.rtjournal", ".big.rtpart"])
def test_a_link_at_a_working_name_never_leads_a_write_outside_dest(world: World, planted: str) -> None:
    """Finding 3: a symlink named .big.rtjournal.tmp (sent by an unmodified sender, or left by
    anyone) made a root receiver create /x/OUTSIDE, holding journal JSON."""
    sent = world.attack([{"path": planted, "kind": "symlink", "target": str(world.outside / "OUTSIDE")}])
    assert sent.code == 6
    (world.dest / planted).symlink_to(world.outside / "OUTSIDE")
    run = world.attack([{"path": "big", "kind": "file", "content": "b" * (20 * MIB)}], send=("--chunk-size", "1M"))
    assert run.code == 0 and (world.dest / "big").stat().st_size == 20 * MIB
    assert not (world.outside / "OUTSIDE").exists()


def test_safe_links_holds_against_a_hard_link_to_a_symlink(world: World) -> None:
    """Finding 6: a symlink a/s -> ../outside/secret stays inside DEST at its own depth; a hard link
    h -> a/s then made DEST/h read outside."""
    run = world.attack(
        [
            {"path": "a", "kind": "dir", "mode": 0o755},
            {"path": "a/s", "kind": "symlink", "target": "../outside/secret"},
            {"path": "h", "kind": "hardlink", "target": "a/s"},
        ],
        recv=("--safe-links",),
    )
    assert run.code == 6 and "not a linked file of this transfer" in run.error
    assert not (world.dest / "h").exists() and not (world.dest / "h").is_symlink()


def test_a_hard_link_may_name_only_a_linked_file_of_the_transfer(world: World) -> None:
    run = world.attack([{"path": "h", "kind": "hardlink", "target": "important.txt"}])
    assert run.code == 6 and "not a linked file" in run.error
    fine = world.attack(
        [
            {"path": "first", "kind": "file", "content": "shared", "linked": True},
            {"path": "second", "kind": "hardlink", "target": "first"},
        ]
    )
    assert fine.code == 0 and (world.dest / "first").stat().st_ino == (world.dest / "second").stat().st_ino


def test_a_senders_rules_cannot_pin_the_receivers_cpu(world: World) -> None:
    """Finding 9: with --delete, every name in DEST is matched against the sender's rules, and
    - **a**a**a**a**a**a**b took 0.27 s on a 50-character name, growing as n^6 (hours at 255)."""
    (world.dest / ("a" * 255)).write_text("matched, and deleted")
    run = world.attack(
        [{"path": ".", "kind": "dir"}, {"path": "kept", "kind": "file", "content": "k"}],  # DEST itself: trimmed
        recv=("--delete",),
        send=("--exclude", "**a**a**a**a**a**a**b", "--delete"),
    )
    assert run.code == 0 and not (world.dest / ("a" * 255)).exists()


@pytest.mark.parametrize("name", ["..", "a/../..", "/etc/x", ".q.rtmark", "d/.e.rtjournal.tmp", "x\x00y"])
def test_names_that_leave_dest_or_take_the_receivers_are_refused(world: World, name: str) -> None:
    run = world.attack([{"path": name, "kind": "file", "content": "x"}])
    assert run.code == 6


def test_directories_that_were_there_keep_their_mode_and_owner(world: World) -> None:
    """A sender listing DEST itself (a "src/" source) or an existing directory with mode 0777 made
    them world-writable without --overwrite; DEST defaults to the current directory."""
    run = world.attack([{"path": ".", "kind": "dir", "mode": 0o777}, {"path": "old", "kind": "dir", "mode": 0o1777}])
    assert run.code == 0
    assert stat.S_IMODE(world.dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((world.dest / "old").stat().st_mode) == 0o755


def test_safe_links_holds_against_a_chain_of_links(world: World) -> None:
    """d/x -> .. stays inside, and so does l -> d/x/../outside/secret read as text; together they
    reach outside (rsync's CVE-2024-12088): a ".." after a name is refused."""
    run = world.attack(
        [
            {"path": "d", "kind": "dir", "mode": 0o755},
            {"path": "d/x", "kind": "symlink", "target": ".."},
            {"path": "l", "kind": "symlink", "target": "d/x/../outside/secret"},
        ],
        recv=("--safe-links",),
    )
    assert run.code == 6 and "points outside DEST" in run.error
    assert not (world.dest / "l").is_symlink()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo"])
def test_the_farthest_times_a_sender_can_list_are_set_or_refused_not_a_crash(world: World, kind: str) -> None:
    """Times travel as nanoseconds in 64 bits (a double lost them): every one is a time the system
    holds, so the worst a sender can list is a file system's refusal, said as such."""
    for mtime_ns in (2**63 - 1, -(2**63)):
        entry: dict[str, Any] = {"path": "x", "kind": kind, "mtime_ns": mtime_ns}
        entry |= {"target": "y"} if kind == "symlink" else {"content": "x"} if kind == "file" else {}
        run = world.attack([entry])
        assert run.code in (0, 6) and "Traceback" not in run.error, run.error
    assert {p.name for p in world.dest.iterdir()} <= {"important.txt", "old", "x"}


def test_names_kept_until_the_end_are_bounded_by_bytes_not_by_what_the_wire_carried(world: World) -> None:
    """Paths share their directory on the wire: 34 KB of list stood for 1.3 GB of paths the receiver
    kept for the end (links to make then). A path is at most 4096 bytes, and what is kept is bounded."""
    deep = "/".join(["d" * 200] * 19)  # 3,819 bytes
    spec: list[dict[str, Any]] = [{"path": "/".join(["d" * 200] * (i + 1)), "kind": "dir"} for i in range(19)]
    spec += [{"path": f"{deep}/l{i:05}", "kind": "symlink", "target": "t"} for i in range(20_000)]
    run = world.attack(spec)
    assert run.code == 6 and "MiB of names" in run.error
    assert int(run.rx.events("done")[0]["peak_rss_bytes"]) < 400 << 20
    too_long = world.attack([{"path": "/".join(["d" * 200] * 21), "kind": "dir"}])
    assert too_long.code == 3  # over PATH_MAX: malformed


# --- the property: any list, two runs in a row ------------------------------------------------

SEGMENTS = ["a", "b", "..", ".", ".a.rtpart", ".b.rtjournal", ".b.rtjournal.tmp", ".a.rtmark", "important.txt", "old"]
paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join)
modes = st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o6777, 0o1777])
owners = st.sampled_from([None, 0, 1234])
entry = st.one_of(
    st.fixed_dictionaries(
        {"path": paths, "kind": st.just("file"), "content": st.sampled_from(["PWNED", "x" * 3000])},
        optional={"mode": modes, "uid": owners, "gid": owners, "linked": st.booleans()},
    ),
    st.fixed_dictionaries({"path": paths, "kind": st.just("dir")}, optional={"mode": modes, "uid": owners}),
    st.fixed_dictionaries(
        {
            "path": paths,
            "kind": st.just("symlink"),
            "target": st.sampled_from(["../outside/secret", "/etc/passwd", "important.txt", "a"]),
        }
    ),
    st.fixed_dictionaries(
        {"path": paths, "kind": st.just("hardlink"), "target": st.sampled_from(["important.txt", "a", "a/b", "old"])}
    ),
    st.fixed_dictionaries(
        {"path": paths, "kind": st.sampled_from(["char", "block"]), "device": st.just(os.makedev(1, 3))},
        optional={"mode": modes},
    ),
    st.fixed_dictionaries({"path": paths, "kind": st.just("fifo")}, optional={"mode": modes}),
)


@as_root
@settings(max_examples=12, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(entry, min_size=1, max_size=6), st.lists(entry, min_size=1, max_size=6))
def test_no_two_runs_of_any_entry_list_break_the_receivers_promises(
    first: list[dict[str, Any]], second: list[dict[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        world = World(Path(scratch))
        world.attack(first)
        world.attack(second)


def test_a_sender_that_never_closes_after_the_receivers_done_holds_it_only_for_its_timeout(tmp_path: Path) -> None:
    """The receiver waits for the sender to close (it has heard DONE); one that keeps the connection
    open with heartbeats is waited for --timeout, then the receiver, with everything here, exits 0."""
    world = World(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"path": "a.txt", "kind": "file", "content": "hello"}]))
    rx = Receiver(world.dest, "--timeout", "3")
    env = {**os.environ, "RTRANSFER_HOSTILE": str(spec), "RTRANSFER_HOSTILE_LINGER": "1"}
    command = [sys.executable, "-m", "tests.hostile", "send", str(tmp_path), rx.address, "--json"]
    sender = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert rx.finish(timeout_s=30) == 0
        assert (world.dest / "a.txt").read_text() == "hello"
    finally:
        sender.kill()
        sender.wait()
        rx.kill()


def test_a_hard_link_never_names_a_file_that_was_kept(world: World) -> None:
    """A kept file (the receiver's own, different) stayed linkable: a sender listed it as linked,
    then a hard link to it, and got a new name for the receiver's file."""
    run = world.attack(
        [
            {"path": "important.txt", "kind": "file", "linked": True, "content": "x"},
            {"path": "h", "kind": "hardlink", "target": "important.txt"},
        ]
    )
    assert run.code == 6
    assert not (world.dest / "h").exists() and (world.dest / "important.txt").stat().st_nlink == 1


LYING_RECEIVER = """
import sys
import rtransfer.session.recv as recv

class Lying(recv.ReceiverMachine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args[:7], dry_run=True)

recv.ReceiverMachine = Lying
from rtransfer.cli.early import main
sys.argv = ["rtransfer", *sys.argv[1:]]
main()
"""


def test_a_receiver_that_says_dry_run_and_asks_for_data_is_refused(tmp_path: Path) -> None:
    """The sender's summary would say "nothing sent" while every byte went."""
    (tmp_path / "f.bin").write_bytes(os.urandom(300_000))
    rx = Proc(["recv", str(tmp_path / "out"), "--listen", "127.0.0.1:0", "--json"],
              command=[sys.executable, "-c", LYING_RECEIVER], cwd=REPO)  # fmt: skip
    try:
        port = rx.wait_event("listening")["port"]
        sent = subprocess.run(
            [sys.executable, "-m", "rtransfer", "send", str(tmp_path / "f.bin"), f"127.0.0.1:{port}"],
            capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
    finally:
        rx.kill()
    assert sent.returncode == 3 and b"--dry-run), and asked for data" in sent.stderr, sent.stderr
