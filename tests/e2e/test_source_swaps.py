"""Names in the tree being sent, swapped by someone else between the walk and the read.

Whoever can write where the tree is (a user whose home root backs up, a shared upload directory)
can replace a name after the walk listed it: with a link to a file only the sender may read, a
link to another directory, or a FIFO. The sender must read what it listed or fail, one line, exit 6;
the receiver must never get the other file's bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, write_random

SLOW_FILE_BYTES = 48 << 20  # 3 s at the rate below: the window in which the swap happens
RATE = "16M"


def _tree(tmp_path: Path, victim_bytes: int) -> tuple[Path, Path, bytes]:
    """src/a/first.bin (sent first, slowly), src/b/victim.bin, and a secret of the victim's size
    outside the tree, as a file of the same name in a directory of its own."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    write_random(src / "a" / "first.bin", SLOW_FILE_BYTES)
    write_random(src / "b" / "victim.bin", victim_bytes)
    (tmp_path / "secret").mkdir()
    secret = write_random(tmp_path / "secret" / "victim.bin", victim_bytes)
    return src, tmp_path / "secret", secret


def _send_and_swap(
    tmp_path: Path, procs: list[Proc], src: Path, swap: Callable[[], None], sources: list[str] | None = None
) -> tuple[Proc, Receiver]:
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(tx := Proc(["send", *(sources or [f"{src}/"]), rx.address, "--limit-rate", RATE, "--json"]))
    while tx.wait_event("progress")["bytes"] == 0:  # data moves: the walk listed the victim
        pass
    swap()
    return tx, rx


def _assert_refused(tx: Proc, rx: Receiver, out: Path, secret: bytes, swapped: str = "b/victim.bin") -> None:
    assert tx.finish() == 6
    errors = [e["message"] for e in tx.events("error")]
    assert len(errors) == 1 and errors[0].endswith(f"src/{swapped}: replaced by another file while being sent"), errors
    assert tx.proc.stderr is not None and b"Traceback" not in tx.proc.stderr.read()
    assert rx.finish() != 0
    for path in out.rglob("*"):
        if path.is_file():
            assert secret[:4096] not in path.read_bytes(), f"{path} holds the secret's bytes"


@pytest.mark.parametrize("named", [False, True], ids=["in-a-tree", "named"])
@pytest.mark.parametrize("victim_bytes", [2 << 20, 4096], ids=["chunked", "packed"])
def test_a_file_swapped_for_a_link_to_a_secret_is_not_sent(
    tmp_path: Path, procs: list[Proc], victim_bytes: int, named: bool
) -> None:
    """In a tree or named on the command line: a link the user names is followed, a file the user
    named that became a link since is not."""
    src, secret_dir, secret = _tree(tmp_path, victim_bytes)
    victim = src / "b" / "victim.bin"

    def swap() -> None:
        os.replace(_link_beside(victim, secret_dir / "victim.bin"), victim)

    sources = [str(src / "a" / "first.bin"), str(victim)] if named else None
    tx, rx = _send_and_swap(tmp_path, procs, src, swap, sources)
    _assert_refused(tx, rx, tmp_path / "out", secret)


@pytest.mark.parametrize("victim_bytes", [2 << 20, 4096], ids=["chunked", "packed"])
def test_a_directory_swapped_for_a_link_elsewhere_is_not_read_through(
    tmp_path: Path, procs: list[Proc], victim_bytes: int
) -> None:
    src, secret_dir, secret = _tree(tmp_path, victim_bytes)

    def swap() -> None:
        os.rename(src / "b", tmp_path / "b.moved")
        (src / "b").symlink_to(secret_dir)

    tx, rx = _send_and_swap(tmp_path, procs, src, swap)
    _assert_refused(tx, rx, tmp_path / "out", secret, swapped="b")


@pytest.mark.parametrize("victim_bytes", [2 << 20, 4096], ids=["chunked", "packed"])
def test_a_file_swapped_for_a_fifo_fails_at_once_instead_of_waiting_for_a_writer(
    tmp_path: Path, procs: list[Proc], victim_bytes: int
) -> None:
    src, _, secret = _tree(tmp_path, victim_bytes)

    def swap() -> None:
        (src / "b" / "victim.bin").unlink()
        os.mkfifo(src / "b" / "victim.bin")

    tx, rx = _send_and_swap(tmp_path, procs, src, swap)
    _assert_refused(tx, rx, tmp_path / "out", secret)


def _link_beside(path: Path, target: Path) -> Path:
    """A symbolic link to ``target`` made next to ``path``, to be renamed over it in one step."""
    link = path.with_name(path.name + ".swap")
    link.symlink_to(target)
    return link


def test_links_named_on_the_command_line_are_followed_small_or_large(tmp_path: Path, procs: list[Proc]) -> None:
    """What the user names is theirs to name: a link given as a source sends the file it points to
    (a small one is read into a pack, a large one chunk by chunk), under the link's name."""
    small = write_random(tmp_path / "small.txt", 100)
    large = write_random(tmp_path / "large.bin", 3 << 20)
    (tmp_path / "small-link").symlink_to("small.txt")
    (tmp_path / "large-link").symlink_to(tmp_path / "large.bin")
    procs.append(rx := Receiver(tmp_path / "out"))
    tx = Proc(["send", str(tmp_path / "small-link"), str(tmp_path / "large-link"), rx.address, "--json"])
    procs.append(tx)
    assert tx.finish() == 0, tx.events("error")
    assert rx.finish() == 0
    assert (tmp_path / "out" / "small-link").read_bytes() == small
    assert (tmp_path / "out" / "large-link").read_bytes() == large
