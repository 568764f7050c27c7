"""Names are bytes: any name POSIX allows arrives as the same bytes, over TCP and over ssh; the
terminal shows it escaped as b3sum does; a name the receiving file system refuses is exit 6."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, rtransfer_cmd, run
from tests.e2e.test_ssh import differences, ssh_args
from tests.sshd import LoopbackSshd, Unavailable

HARD = [
    b"bad\xff.txt",  # not UTF-8
    b"caf\xe9",  # Latin-1
    b"new\nline",
    b"tab\there",
    b"back\\slash",
    b"C:drive",
    b"x" * 255,  # the longest component ext4 and tmpfs take
    "日本語".encode(),
]


def hard_tree(root: Path) -> Path:
    src = root / "src"
    (src / os.fsdecode(b"dir\xfe")).mkdir(parents=True)
    for name in HARD:
        (src / os.fsdecode(name)).write_bytes(name)
        (src / os.fsdecode(b"dir\xfe") / os.fsdecode(name)).write_bytes(name * 2)
    (src / os.fsdecode(b"link\xff")).symlink_to(os.fsdecode(b"bad\xff.txt"))
    return src


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    try:
        server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


def test_hard_names_arrive_byte_identical_over_tcp(tmp_path: Path, procs: list[Proc]) -> None:
    """A name that is not UTF-8, named on the command line, made the sender print a traceback and
    retry for 59 s (finding 11); inside a directory, "internal error: UnicodeEncodeError"."""
    src = hard_tree(tmp_path)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), os.fsdecode(src / os.fsdecode(b"bad\xff.txt")), rx.address)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert differences(src, tmp_path / "out" / "src") == []
    assert (tmp_path / "out" / os.fsdecode(b"bad\xff.txt")).read_bytes() == b"bad\xff.txt"
    names = [e["path"] for e in rx.events("file_done")]
    assert os.fsdecode(b"src/bad\xff.txt") in names  # in --json, a byte that is not UTF-8 is \udcNN


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_hard_names_arrive_byte_identical_over_ssh(tmp_path: Path, sshd: LoopbackSshd, direction: str) -> None:
    src = hard_tree(tmp_path)
    dest = tmp_path / "dest"
    if direction == "push":
        result = run("send", str(src), f"root@127.0.0.1:{dest}", *ssh_args(sshd))
    else:
        result = run("recv", f"root@127.0.0.1:{src}", str(dest), *ssh_args(sshd))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert differences(src, dest / "src") == []


def test_a_name_is_shown_escaped_as_b3sum_escapes_it(tmp_path: Path, procs: list[Proc]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new\nline").write_bytes(b"x")
    (tmp_path / "src" / os.fsdecode(b"bad\xff")).write_bytes(b"y")
    procs.append(rx := Receiver(tmp_path / "out"))
    result = subprocess.run(
        [*rtransfer_cmd(), "send", str(tmp_path / "src"), rx.address, "-v"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0 and rx.finish() == 0
    lines = result.stderr.split(b"\n")
    assert any(b"src/new\\nline" in line for line in lines)
    assert any("src/bad\ufffd".encode() in line for line in lines)
    assert not any(line.endswith(b"new") for line in lines)  # never split over two lines


@pytest.mark.skipif(shutil.which("b3sum") is None, reason="b3sum is installed by tests/run.sh")
def test_the_receivers_verbose_lines_pass_b3sum_check_in_dest(tmp_path: Path, procs: list[Proc]) -> None:
    """``b3sum -c`` failed on ``HASH  name  (6 B)``, and a newline in a name split its line."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("small.txt", "new\nline", "back\\slash"):
        (src / name).write_bytes(name.encode() * 3)
    procs.append(tx := Proc(["send", str(src), "--listen", "127.0.0.1:0", "--json"]))
    port = tx.wait_event("listening")["port"]
    dest = tmp_path / "dest"
    result = run("recv", str(dest), "--connect", f"127.0.0.1:{port}", "-v")
    assert result.returncode == 0 and tx.finish() == 0, result.stderr
    lines = [line for line in result.stderr.split(b"\n") if re.match(rb"\\?[0-9a-f]{64}  ", line)]
    assert len(lines) == 3
    check = subprocess.run(["b3sum", "-c"], input=b"\n".join(lines) + b"\n", cwd=dest, capture_output=True)
    assert check.returncode == 0 and check.stdout.count(b": OK\n") == 3, check


def test_a_name_the_receiving_file_system_refuses_is_exit_6_naming_it(tmp_path: Path, procs: list[Proc]) -> None:
    """A component of 256 bytes is one byte too many for ext4 and tmpfs: the sender may hold it
    (its file system may allow more), the receiver names it and stops."""
    from tests.e2e.test_hostile import World

    world = World(tmp_path)
    run_ = world.attack([{"path": "y" * 256, "kind": "file", "content": "x"}])
    assert run_.code == 6 and "y" * 40 in run_.error and "too long" in run_.error.lower()


@pytest.mark.parametrize("rules", [["--exclude", "*"], ["--exclude", "src"]])
def test_rules_that_exclude_everything_are_a_transfer_of_nothing_over_tcp(
    tmp_path: Path, procs: list[Proc], rules: list[str]
) -> None:
    """The receiver failed its handshake after 10 s and the sender retried for 67 s, exit 3
    (finding 12); rsync exits 0 having sent nothing."""
    src = hard_tree(tmp_path)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address, *rules, timeout_s=30)
    assert result.returncode == 0, result.stderr
    assert rx.finish(timeout_s=30) == 0
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_rules_that_exclude_everything_are_a_transfer_of_nothing_over_ssh(tmp_path: Path, sshd: LoopbackSshd) -> None:
    src = hard_tree(tmp_path)
    pushed = run("send", str(src), f"root@127.0.0.1:{tmp_path / 'out'}", "--exclude", "*", *ssh_args(sshd))
    assert pushed.returncode == 0, pushed.stderr
    pulled = run("recv", f"root@127.0.0.1:{src}", str(tmp_path / "in"), "--exclude", "*", *ssh_args(sshd))
    assert pulled.returncode == 0, pulled.stderr
    assert b"warning" not in pushed.stderr + pulled.stderr


@pytest.mark.parametrize("where", ["-oProxyCommand=touch${IFS}PWNED:dest", "root@-oProxyCommand=x:dest"])
def test_an_ssh_host_that_looks_like_an_option_is_refused(tmp_path: Path, where: str) -> None:
    """Finding 8: a host starting with "-" went to ssh as an option."""
    (tmp_path / "f").write_bytes(b"x")
    result = subprocess.run(
        [*rtransfer_cmd(), "send", str(tmp_path / "f"), "--", where],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and b"may not start with '-'" in result.stderr
    assert not (tmp_path / "PWNED").exists()


def test_a_name_as_long_as_the_file_system_takes_arrives(tmp_path: Path, procs: list[Proc]) -> None:
    """A name of 248 to 255 bytes has no room for ".NAME.rtpart" beside it: a digest of the name
    stands in for it in the receiver's working names."""
    src = tmp_path / "src"
    (src / ("d" * 250)).mkdir(parents=True)
    (src / ("d" * 250) / ("f" * 255)).write_bytes(os.urandom(3 << 20))  # large: a partial file and a journal
    (src / ("s" * 252)).write_bytes(b"small")
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert differences(src, tmp_path / "out" / "src") == []


def test_many_existing_directories_each_getting_a_new_one(tmp_path: Path, procs: list[Proc]) -> None:
    """300 directories there already, a new subdirectory in each: the cache of open directories
    (256) closed one still in use, and both sides stopped with "Bad file descriptor", every run."""
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(300):
        (src / f"e{i}" / "new").mkdir(parents=True)
        (src / f"e{i}" / "new" / "f").write_bytes(b"x")
        (out / f"e{i}").mkdir(parents=True)
    procs.append(rx := Receiver(out))
    result = run("send", f"{src}/", rx.address)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert differences(src, out) == []
