"""Trees: many files, every kind of entry, modes and times, in one transfer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import Proc, Receiver, run

CHUNK = 64 * 1024


def rsync_differences(src: Path, dst: Path) -> list[str]:
    """What ``rsync -a -n -i -c`` would still change: contents, modes, times, links, types."""
    result = subprocess.run(
        ["rsync", "-a", "-n", "-i", "-c", f"{src}/", f"{dst}/"], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_a_ten_thousand_file_tree_arrives_on_the_first_attempt(tmp_path: Path, procs: list[Proc]) -> None:
    """Before the file list streamed, the sender gave up after 10 s: the whole list had to be
    planned inside the handshake's deadline."""
    src = tmp_path / "many"
    for d in range(20):
        (src / f"d{d:02}").mkdir(parents=True)
    for i in range(10_000):
        (src / f"d{i % 20:02}" / f"f{i:05}").write_bytes(i.to_bytes(4, "big") * 4)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert rx.finish() == 0
    done = rx.events("done")[0]
    assert done["files"] == 10_000 and done["reconnects"] == 0
    assert done["chunks"] <= 20  # packed, many files to a chunk, not a chunk per file
    assert rsync_differences(src, tmp_path / "out" / "many") == []


def make_mixed_tree(root: Path) -> Path:
    src = root / "mixed"
    (src / "empty-dir").mkdir(parents=True)
    (src / "deep" / "er" / "est").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "one-byte").write_bytes(b"x")
    (src / "one-chunk").write_bytes(os.urandom(CHUNK))
    (src / "one-chunk-and-a-byte").write_bytes(os.urandom(CHUNK + 1))
    (src / "large").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (src / "deep" / "er" / "est" / "leaf").write_bytes(b"leaf")
    for i in range(300):
        (src / "deep" / f"small{i:03}").write_bytes(os.urandom(i))
    (src / "script").write_bytes(b"#!/bin/sh\n")
    (src / "script").chmod(0o751)
    (src / "private").write_bytes(b"secret")
    (src / "private").chmod(0o600)
    (src / "link-in").symlink_to("deep/er/est/leaf")
    (src / "link-dir").symlink_to("deep/er")
    (src / "link-out").symlink_to("/nonexistent/elsewhere")
    (src / "read-only-dir").mkdir()
    (src / "read-only-dir" / "inside").write_bytes(b"ro")
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):  # contents before their directories
        os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i * 7), follow_symlinks=False)
    (src / "read-only-dir").chmod(0o555)
    os.utime(src, (1_500_000_000, 1_500_000_000))
    return src


def test_a_mixed_tree_arrives_identical_with_modes_and_mtimes(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_mixed_tree(tmp_path)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(src), rx.address, "--chunk-size", "64K")
    assert result.returncode == 0, result.stderr[-2000:]
    assert rx.finish() == 0
    out = tmp_path / "out" / "mixed"
    assert rsync_differences(src, out) == []
    assert (out / "read-only-dir").stat().st_mtime == (src / "read-only-dir").stat().st_mtime
    assert not [p for p in out.rglob(".*")]  # no partial file or journal left behind


def test_a_second_run_of_an_unchanged_tree_sends_no_file_again(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_mixed_tree(tmp_path)
    for _ in range(2):
        procs.append(rx := Receiver(tmp_path / "out"))
        result = run("send", str(src), rx.address, "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert rx.finish() == 0
    assert rx.events("file_done") == []
    assert rsync_differences(src, tmp_path / "out" / "mixed") == []


def test_a_new_directory_takes_its_name_only_when_the_transfer_is_done(tmp_path: Path, procs: list[Proc]) -> None:
    """Inside a new directory, small files are written under their own names (no rename each): the
    directory itself stays under a hidden name until the end, and a run killed midway leaves only
    that, which the next run takes up."""
    src = tmp_path / "fresh"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(200):
            (src / f"d{d}" / f"f{i:03}").write_bytes(os.urandom(2048))
    out = tmp_path / "out"
    procs.append(rx := Receiver(out))
    procs.append(tx := Proc(["send", str(src), rx.address, "--limit-rate", "256K", "--chunk-size", "64K", "--json"]))
    rx.wait_event("file_done")
    rx.kill()
    tx.kill()
    assert sorted(p.name for p in out.iterdir()) == [".fresh.rtmark", ".fresh.rtpart"]  # the marker vouches for it
    procs.append(rx := Receiver(out))
    result = run("send", str(src), rx.address)
    assert result.returncode == 0, result.stderr[-2000:]
    assert rx.finish() == 0
    assert sorted(p.name for p in out.iterdir()) == ["fresh"]
    assert rsync_differences(src, out / "fresh") == []
