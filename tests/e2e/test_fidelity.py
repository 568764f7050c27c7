"""What rsync -aHS keeps, kept: hard links, FIFOs, sparse files; and, as root, owners, setuid bits and
device nodes where the receiver allows them (-o, -g, --devices), since whoever holds the code may send."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, run

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners and device nodes need root on both sides")


def send_tree(src: Path, out: Path, procs: list[Proc], *args: str, recv: tuple[str, ...] = ()) -> dict[str, object]:
    procs.append(rx := Receiver(out, *recv))
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


@pytest.mark.parametrize("size", [3 << 20, 100], ids=["chunked", "packed"])
def test_hard_links_to_a_file_changed_since_still_name_the_new_file(
    tmp_path: Path, procs: list[Proc], size: int
) -> None:
    """A second run with --overwrite replaces the changed file: its other names, already here as
    links to the old copy, must name the new one, as rsync -H leaves them."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(size))
    os.link(src / "big.bin", src / "sub" / "big.hard")
    send_tree(src, tmp_path / "out", procs)
    with (src / "big.bin").open("r+b") as f:
        f.seek(size // 2)
        f.write(b"CHANGED")
    os.utime(src / "big.bin", ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    send_tree(src, tmp_path / "out", procs, recv=("--overwrite",))
    out = tmp_path / "out" / "src"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (out / "sub" / "big.hard").stat().st_ino == (out / "big.bin").stat().st_ino


def test_a_fifo_is_made_again(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe", 0o640)
    send_tree(src, tmp_path / "out", procs)
    st = (tmp_path / "out" / "src" / "pipe").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


@as_root
def test_device_nodes_are_made_again_as_root_when_the_receiver_allows_it(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_devices(tmp_path / "src")
    send_tree(src, tmp_path / "out", procs, recv=("--devices",))
    out = tmp_path / "out" / "src"
    assert stat.S_ISCHR((out / "null").lstat().st_mode) and (out / "null").lstat().st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((out / "loop").lstat().st_mode) and (out / "loop").lstat().st_rdev == os.makedev(7, 200)


@as_root
def test_device_nodes_are_skipped_by_default_said_once_and_counted(tmp_path: Path, procs: list[Proc]) -> None:
    src = make_devices(tmp_path / "src")
    procs.append(rx := Receiver(tmp_path / "out"))
    assert run("send", str(src), rx.address).returncode == 0
    assert rx.finish() == 0
    out = tmp_path / "out" / "src"
    assert not (out / "null").exists() and not (out / "loop").exists()
    assert (out / "plain").read_bytes() == b"plain"
    warnings = [w["message"] for w in rx.events("warning")]
    assert warnings == ["skipped 2 device nodes: recv --devices, as root, makes them"]
    assert sorted(e["path"] for e in rx.events("item") if e["action"] == "skip") == ["src/loop", "src/null"]
    assert rx.events("done")[0]["devices_skipped"] == 2


def make_devices(src: Path) -> Path:
    src.mkdir()
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    (src / "plain").write_bytes(b"plain")
    return src


OWNERS = {"dir": (1234, 5678), "dir/file": (2345, 6789), "large": (3456, 7890), "link": (4567, 8901)}
OWNERS["pipe"] = (5678, 9012)


def make_owned(src: Path) -> Path:
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"owned")
    (src / "large").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / "link").symlink_to("dir/file")
    os.mkfifo(src / "pipe")
    for path, (uid, gid) in OWNERS.items():
        os.chown(src / path, uid, gid, follow_symlinks=False)
    (src / "dir" / "file").chmod(0o6755)
    (src / "large").chmod(0o4700)
    return src


@as_root
def test_owners_groups_and_setuid_bits_are_kept_as_root_with_o_and_g(tmp_path: Path, procs: list[Proc]) -> None:
    send_tree(make_owned(tmp_path / "src"), tmp_path / "out", procs, recv=("-o", "-g"))
    out = tmp_path / "out" / "src"
    for path, ids in OWNERS.items():
        st = (out / path).lstat()
        assert (st.st_uid, st.st_gid) == ids, path
    assert stat.S_IMODE((out / "dir" / "file").stat().st_mode) == 0o6755  # set after the owner, which clears it
    assert stat.S_IMODE((out / "large").stat().st_mode) == 0o4700


@as_root
def test_by_default_a_root_receiver_owns_what_it_makes_and_strips_setuid_bits(
    tmp_path: Path, procs: list[Proc]
) -> None:
    send_tree(make_owned(tmp_path / "src"), tmp_path / "out", procs)
    out = tmp_path / "out" / "src"
    for path in OWNERS:
        st = (out / path).lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path
    assert stat.S_IMODE((out / "dir" / "file").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "large").stat().st_mode) == 0o700


@as_root
def test_group_alone_keeps_groups_but_not_owners_nor_setuid_bits(tmp_path: Path, procs: list[Proc]) -> None:
    send_tree(make_owned(tmp_path / "src"), tmp_path / "out", procs, recv=("-g",))
    st = (tmp_path / "out" / "src" / "dir" / "file").stat()
    assert (st.st_uid, st.st_gid) == (0, 6789) and stat.S_IMODE(st.st_mode) == 0o755


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
    done = send_tree(src, tmp_path / "out", procs, "--chunk-size", "1M")
    got = tmp_path / "out" / "src" / "disk.img"
    assert got.stat().st_size == 96 * 1024 * 1024
    assert got.read_bytes() == (src / "disk.img").read_bytes()
    assert got.stat().st_blocks * 512 <= 8 * 1024 * 1024
    assert int(done["wire_bytes_received"]) < 4 * 1024 * 1024  # the holes, found by SEEK_DATA, were not sent  # type: ignore[call-overload]


def test_zeros_of_a_dense_file_become_holes_a_block_at_a_time(tmp_path: Path, procs: list[Proc]) -> None:
    """20 MiB with one byte per MiB took 20 MiB at the receiver, against 80 KiB from rsync -aS and
    cp --sparse=always (finding 14 of the trust issue): zeros were holes only a whole chunk at a time."""
    src = tmp_path / "src"
    src.mkdir()
    data = bytearray(20 << 20)
    for mib in range(20):
        data[mib << 20] = 1
    (src / "dense.img").write_bytes(data)  # written out: no holes at the source
    send_tree(src, tmp_path / "out", procs)
    got = tmp_path / "out" / "src" / "dense.img"
    assert got.read_bytes() == data
    assert got.stat().st_blocks * 512 <= 20 * 4096 * 2
