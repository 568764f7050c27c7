"""The everyday-sync features end to end: a second run sends what changed (delta), --checksum skips
by content, --compress shrinks what compresses. Every test asserts bytes on the wire, never times."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, Receiver, run

SIZE = 32 * 1024 * 1024


def send(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run("send", *args, "--json")


def done_of(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    (done,) = [e for e in events if e["event"] == "done"]
    return done


def on_the_wire(done: dict[str, Any]) -> int:
    return int(done["wire_bytes_sent"]) + int(done["wire_bytes_received"])


def sync(src: Path, dest: Path, procs: list[Proc], *send_args: str) -> dict[str, Any]:
    """One run of send into recv --overwrite; the sender's done event."""
    procs.append(rx := Receiver(dest, "--overwrite"))
    result = send(str(src), rx.address, *send_args)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    return done_of(result)


def overwrite_middle(data: bytes, n: int) -> bytes:
    at = len(data) // 2
    return data[:at] + random.Random(2).randbytes(n) + data[at + n :]


def insert_at_a_third(data: bytes, n: int) -> bytes:
    at = len(data) // 3
    return data[:at] + random.Random(3).randbytes(n) + data[at:]


@pytest.fixture(scope="module")
def old_version() -> bytes:
    return random.Random(1).randbytes(SIZE)


@pytest.mark.parametrize(
    ("change", "changed_bytes"),
    [(overwrite_middle, 256 * 1024), (insert_at_a_third, 1024)],
    ids=["overwritten", "inserted"],
)
def test_a_changed_file_sends_little_more_than_the_change(
    tmp_path: Path, procs: list[Proc], old_version: bytes, change: Any, changed_bytes: int
) -> None:
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_bytes(old_version)
    new = change(old_version, changed_bytes)
    (tmp_path / "f").write_bytes(new)
    done = sync(tmp_path / "f", tmp_path / "dst", procs)
    assert (tmp_path / "dst" / "f").read_bytes() == new
    assert done["bytes"] == len(new)
    assert on_the_wire(done) <= changed_bytes + 0.03 * len(new)  # the change, a few chunks around it, the signature
    assert not list((tmp_path / "dst").glob(".*"))


def test_whole_file_sends_it_all_again(tmp_path: Path, procs: list[Proc], old_version: bytes) -> None:
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_bytes(old_version)
    new = overwrite_middle(old_version, 4096)
    (tmp_path / "f").write_bytes(new)
    done = sync(tmp_path / "f", tmp_path / "dst", procs, "--whole-file")
    assert (tmp_path / "dst" / "f").read_bytes() == new
    assert on_the_wire(done) >= len(new)


def test_a_damaged_old_copy_still_gives_the_right_file(tmp_path: Path, procs: list[Proc], old_version: bytes) -> None:
    """The damage is described as it is, so its chunks do not match and travel whole."""
    damaged = bytearray(old_version)
    for at in range(1000, SIZE, SIZE // 7):
        damaged[at : at + 100] = bytes(100)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_bytes(damaged)
    (tmp_path / "f").write_bytes(old_version)
    done = sync(tmp_path / "f", tmp_path / "dst", procs)
    assert (tmp_path / "dst" / "f").read_bytes() == old_version
    assert 7 * 100 < on_the_wire(done) <= 0.1 * SIZE


def make_tree(root: Path, files: int) -> int:
    rng = random.Random(4)
    for i in range(files):
        path = root / f"d{i % 20:02}" / f"f{i:05}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(4096))
    return files * 4096


@pytest.mark.parametrize("checksum", [False, True], ids=["quick-check", "checksum"])
def test_a_second_send_of_an_unchanged_tree_costs_under_one_percent(
    tmp_path: Path, procs: list[Proc], checksum: bool
) -> None:
    tree_bytes = make_tree(tmp_path / "tree", 2000)
    sync(tmp_path / "tree", tmp_path / "dst", procs)
    done = sync(tmp_path / "tree", tmp_path / "dst", procs, *(["--checksum"] if checksum else []))
    assert done["files"] == 2000
    assert on_the_wire(done) <= 0.01 * tree_bytes


def test_checksum_finds_a_change_that_kept_size_and_mtime(tmp_path: Path, procs: list[Proc]) -> None:
    make_tree(tmp_path / "tree", 10)
    sync(tmp_path / "tree", tmp_path / "dst", procs)
    changed = tmp_path / "tree" / "d03" / "f00003"
    st = changed.stat()
    changed.write_bytes(b"x" * st.st_size)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    sync(tmp_path / "tree", tmp_path / "dst", procs)  # size and mtime agree: skipped
    assert (tmp_path / "dst" / "tree" / "d03" / "f00003").read_bytes() != changed.read_bytes()
    done = sync(tmp_path / "tree", tmp_path / "dst", procs, "--checksum")
    assert (tmp_path / "dst" / "tree" / "d03" / "f00003").read_bytes() == changed.read_bytes()
    assert 4096 < on_the_wire(done) < 2 * 4096 + 10_000  # that file, and the list


def test_checksum_without_overwrite_skips_the_same_content_and_refuses_other(tmp_path: Path, procs: list[Proc]) -> None:
    make_tree(tmp_path / "tree", 3)
    procs.append(rx := Receiver(tmp_path / "dst"))
    assert send(str(tmp_path / "tree"), rx.address).returncode == 0
    assert rx.finish() == 0
    for path in (tmp_path / "tree").rglob("f*"):
        os.utime(path, (1, 1))  # the quick check would now send them all
    procs.append(rx := Receiver(tmp_path / "dst"))
    assert send(str(tmp_path / "tree"), rx.address, "--checksum").returncode == 0
    assert rx.finish() == 0
    assert os.stat(tmp_path / "dst" / "tree" / "d00" / "f00000").st_mtime == 1  # the same: took the sender's mtime
    (tmp_path / "tree" / "d01" / "f00001").write_bytes(b"y" * 4096)
    procs.append(rx := Receiver(tmp_path / "dst"))
    result = send(str(tmp_path / "tree"), rx.address, "--checksum")
    assert rx.finish() == 6 and result.returncode == 6
    assert "1 file was already here and different" in rx.events("error")[0]["message"]


def log_lines(n_bytes: int) -> bytes:
    rng = random.Random(5)
    lines = []
    size = 0
    while size < n_bytes:
        line = b"2026-11-30T12:%02d:%02d INFO GET /api/v1/items/%d 200 %dms\n" % (
            rng.randrange(60),
            rng.randrange(60),
            rng.randrange(10**6),
            rng.randrange(1000),
        )
        lines.append(line)
        size += len(line)
    return b"".join(lines)


@pytest.mark.parametrize("kind", ["text", "random"])
def test_compress_shrinks_what_compresses_and_leaves_the_rest(tmp_path: Path, procs: list[Proc], kind: str) -> None:
    data = log_lines(8 * 1024 * 1024) if kind == "text" else random.Random(6).randbytes(8 * 1024 * 1024)
    (tmp_path / "f").write_bytes(data)
    done = sync(tmp_path / "f", tmp_path / "dst", procs, "--compress")
    assert (tmp_path / "dst" / "f").read_bytes() == data
    if kind == "text":
        assert on_the_wire(done) < len(data) / 3 and done["compression_ratio"] > 3
    else:
        assert on_the_wire(done) >= len(data) and done["compression_ratio"] == 1.0


def test_a_delta_over_several_connections_with_compression(
    tmp_path: Path, procs: list[Proc], old_version: bytes
) -> None:
    """COPY and ZDATA chunks are chunks like any other: dealt to any connection, put back in order."""
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "f").write_bytes(old_version)
    new = insert_at_a_third(old_version, 1024)[: SIZE // 2] + log_lines(SIZE // 2)
    (tmp_path / "f").write_bytes(new)
    done = sync(tmp_path / "f", tmp_path / "dst", procs, "--streams", "4", "--compress")
    assert (tmp_path / "dst" / "f").read_bytes() == new
    # The old half mostly copied; the new half as it is or compressed (the level follows the bottleneck, and
    # on loopback the CPU is it, so how much shrinks varies).
    assert on_the_wire(done) < SIZE // 2 + 0.03 * SIZE
    assert done["compression_ratio"] >= 1.0
