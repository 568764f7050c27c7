"""What rsync -aHS keeps, kept: hard links, owners as root, FIFOs and device nodes, sparse files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, run

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners and device nodes need root on both sides")


def send_tree(src: Path, out: Path, procs: list[Proc], *args: str) -> dict[str, object]:
    procs.append(rx := Receiver(out))
    result = run("send", str(src), rx.address, "--json", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert rx.finish() == 0
    return rx.events("done")[0]


def test_hard_links_arrive_as_hard_links_and_travel_once(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "first").write_bytes(os.urandom(3 * 1024 * 1024))
    os.link(src / "first", src / "a" / "second")
    os.link(src / "first", src / "a" / "b" / "third")
    (src / "small").write_bytes(b"tiny")
    os.link(src / "small", src / "a" / "small-too")
    done = send_tree(src, tmp_path / "out", procs)
    out = tmp_path / "out" / "src"
    big = {(out / p).stat().st_ino for p in ("first", "a/second", "a/b/third")}
    assert len(big) == 1 and (out / "first").stat().st_nlink == 3
    assert (out / "small").stat().st_ino == (out / "a" / "small-too").stat().st_ino
    assert (out / "a" / "b" / "third").read_bytes() == (src / "first").read_bytes()
    assert int(done["wire_bytes_received"]) < 4 * 1024 * 1024  # the content once, not three times  # type: ignore[call-overload]


def test_a_fifo_is_made_again(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o640)
    send_tree(src, tmp_path / "out", procs)
    st = (tmp_path / "out" / "src" / "pipe").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


@as_root
def test_device_nodes_are_made_again_as_root(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    send_tree(src, tmp_path / "out", procs)
    out = tmp_path / "out" / "src"
    assert stat.S_ISCHR((out / "null").lstat().st_mode) and (out / "null").lstat().st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((out / "loop").lstat().st_mode) and (out / "loop").lstat().st_rdev == os.makedev(7, 200)


@as_root
def test_owners_and_groups_are_kept_by_number_as_root(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"owned")
    (src / "large").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / "link").symlink_to("dir/file")
    os.mkfifo(src / "pipe")
    owners = {"dir": (1234, 5678), "dir/file": (2345, 6789), "large": (3456, 7890), "link": (4567, 8901)}
    owners["pipe"] = (5678, 9012)
    for path, (uid, gid) in owners.items():
        os.chown(src / path, uid, gid, follow_symlinks=False)
    (src / "dir" / "file").chmod(0o4755)  # set-user-ID survives the change of owner
    send_tree(src, tmp_path / "out", procs)
    out = tmp_path / "out" / "src"
    for path, ids in owners.items():
        st = (out / path).lstat()
        assert (st.st_uid, st.st_gid) == ids, path
    assert stat.S_IMODE((out / "dir" / "file").stat().st_mode) == 0o4755


def test_sparse_files_stay_sparse(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.write(os.urandom(4096))
        f.seek(48 * 1024 * 1024)
        f.write(os.urandom(4096))
        f.truncate(96 * 1024 * 1024)  # and a hole at the end
    if (src / "disk.img").stat().st_blocks * 512 > 8 * 1024 * 1024:
        pytest.skip("this filesystem has no holes")
    send_tree(src, tmp_path / "out", procs, "--chunk-size", "1M")
    got = tmp_path / "out" / "src" / "disk.img"
    assert got.stat().st_size == 96 * 1024 * 1024
    assert got.read_bytes() == (src / "disk.img").read_bytes()
    assert got.stat().st_blocks * 512 <= 8 * 1024 * 1024
