"""Real `rtransfer send` / `rtransfer recv` processes over loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.conftest import Proc, Receiver, run, write_random

DONE_FIELDS = {"ok", "bytes", "files", "chunks", "retransmits", "integrity_failures", "seconds"}


DEFAULT_CHUNK = 8 * 1024 * 1024


def send(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return run("send", *args, "--json", **kw)


def test_single_file_arrives_byte_identical_with_the_b3sum_digest(tmp_path: Path, procs: list[Proc]) -> None:
    data = write_random(tmp_path / "a.bin", 3 * DEFAULT_CHUNK + 12345)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send(str(tmp_path / "a.bin"), rx.address)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert (tmp_path / "out" / "a.bin").read_bytes() == data
    digest = blake3.blake3(data).hexdigest()
    assert rx.events("file_done") == [{"event": "file_done", "path": "a.bin", "bytes": len(data), "blake3": digest}]
    if shutil.which("b3sum"):
        b3 = subprocess.run(["b3sum", str(tmp_path / "out" / "a.bin")], capture_output=True, text=True, check=True)
        assert b3.stdout.split()[0] == digest
    (done,) = rx.events("done")
    assert done.keys() >= DONE_FIELDS and done["ok"] is True and done["bytes"] == len(data)
    assert done["chunks"] == 4 and done["integrity_failures"] == 0
    assert not list((tmp_path / "out").glob(".*.rtpart"))


def test_sender_json_reports_progress_file_done_and_done(tmp_path: Path, procs: list[Proc]) -> None:
    write_random(tmp_path / "a.bin", 100_000)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send(str(tmp_path / "a.bin"), rx.address)
    assert result.returncode == 0
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "done" and "file_done" in names
    assert events[-1].keys() >= DONE_FIELDS
    assert rx.finish() == 0


def test_the_senders_file_done_names_a_file_by_its_path_in_the_transfer_packed_or_not(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Packed files were named by their local path, chunked ones by their path in the transfer."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "d" / "small", 1000)  # packed
    write_random(src / "big", 2 * DEFAULT_CHUNK)  # chunk by chunk
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send(str(src), rx.address)
    assert result.returncode == 0 and rx.finish() == 0
    sent = sorted(e["path"] for e in map(json.loads, result.stdout.decode().splitlines()) if e["event"] == "file_done")
    assert sent == sorted(e["path"] for e in rx.events("file_done")) == ["src/big", "src/d/small"]


def test_modification_times_arrive_to_the_nanosecond(tmp_path: Path, procs: list[Proc]) -> None:
    """They travelled as a double of seconds: about 240 ns lost today, more in years to come."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "d" / "small", 100)  # packed
    write_random(src / "big", DEFAULT_CHUNK + 1)  # chunk by chunk
    (src / "link").symlink_to("big")
    times = {"d/small": 1_700_000_000_123_456_789, "big": 1_234_567_890_987_654_321, "d": 1_600_000_000_000_000_001}
    for name, ns in times.items():
        os.utime(src / name, ns=(ns, ns))
    os.utime(src / "link", ns=(5, 1_500_000_000_000_000_007), follow_symlinks=False)
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(src), rx.address).returncode == 0 and rx.finish() == 0
    out = tmp_path / "out" / "src"
    assert {name: (out / name).stat().st_mtime_ns for name in times} == times
    assert (out / "link").lstat().st_mtime_ns == 1_500_000_000_000_000_007


def test_empty_file_is_created(tmp_path: Path, procs: list[Proc]) -> None:
    (tmp_path / "empty").write_bytes(b"")
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(tmp_path / "empty"), rx.address).returncode == 0
    assert rx.finish() == 0
    assert (tmp_path / "out" / "empty").read_bytes() == b""
    assert rx.events("file_done")[0]["blake3"] == blake3.blake3(b"").hexdigest()


@pytest.mark.parametrize("size", [65536, 65537])
def test_file_of_exactly_one_chunk_and_one_byte_more(tmp_path: Path, procs: list[Proc], size: int) -> None:
    data = write_random(tmp_path / "f", size)
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(tmp_path / "f"), rx.address, "--chunk-size", "64K").returncode == 0
    assert rx.finish() == 0
    assert (tmp_path / "out" / "f").read_bytes() == data
    assert rx.events("done")[0]["chunks"] == (1 if size == 65536 else 2)


def test_stdin_to_stdout(tmp_path: Path, procs: list[Proc]) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    procs.append(rx := Receiver("-", events_on="stderr"))
    received: list[bytes] = []
    drain = threading.Thread(target=lambda: received.append(rx.proc.stdout.read()))  # type: ignore[union-attr]
    drain.start()
    result = send("-", rx.address, "--name", "stream.bin", input_bytes=data)
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    drain.join(timeout=30)
    assert received == [data]
    assert rx.events("file_done")[0]["path"] == "stream.bin"


def test_stdin_into_a_directory_uses_the_given_name(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send("-", rx.address, "--name", "dir.tar", input_bytes=b"tar bytes")
    assert result.returncode == 0
    assert rx.finish() == 0
    assert (tmp_path / "out" / "dir.tar").read_bytes() == b"tar bytes"


def test_directory_tree_keeps_structure_empty_entries_and_permissions(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty_dir").mkdir()
    files = {
        "top.txt": b"top",
        "sub/a.bin": os.urandom(200_000),
        "sub/deeper/b": b"",
        "sub/script.sh": b"#!/bin/sh\n",
    }
    for rel, content in files.items():
        (src / rel).write_bytes(content)
    os.chmod(src / "sub/script.sh", 0o750)
    os.chmod(src / "top.txt", 0o600)
    os.chmod(src / "sub" / "deeper", 0o700)
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(src), rx.address).returncode == 0
    assert rx.finish() == 0
    out = tmp_path / "out" / "tree"
    for rel, content in files.items():
        assert (out / rel).read_bytes() == content
    assert (out / "empty_dir").is_dir()
    assert stat.S_IMODE((out / "sub/script.sh").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "top.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "sub" / "deeper").stat().st_mode) == 0o700
    assert int((out / "top.txt").stat().st_mtime) == int((src / "top.txt").stat().st_mtime)
    assert rx.events("done")[0]["files"] == 4


def test_directories_keep_their_mtimes_set_after_their_contents(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "f").write_bytes(b"x")
    (src / "sub" / "g").write_bytes(b"y")
    os.symlink("g", src / "sub" / "link")
    stamps = {"": 1_000_000_000.25, "sub": 1_100_000_000.5, "sub/deeper": 1_200_000_000.75}
    for rel, when in stamps.items():
        os.utime(src / rel, (when, when))
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(src), rx.address).returncode == 0
    assert rx.finish() == 0
    out = tmp_path / "out" / "tree"
    for rel, when in stamps.items():
        assert abs((out / rel).stat().st_mtime - when) < 1e-3, rel


def test_several_sources_in_one_transfer(tmp_path: Path, procs: list[Proc]) -> None:
    a = write_random(tmp_path / "a", 1000)
    b = write_random(tmp_path / "b", 70000)
    procs.append(rx := Receiver(tmp_path / "out"))
    assert send(str(tmp_path / "a"), str(tmp_path / "b"), rx.address).returncode == 0
    assert rx.finish() == 0
    assert (tmp_path / "out" / "a").read_bytes() == a and (tmp_path / "out" / "b").read_bytes() == b


def test_receiver_killed_mid_transfer_makes_the_sender_exit_3(tmp_path: Path, procs: list[Proc]) -> None:
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(tx := Proc(["send", "-", rx.address, "--json", "--name", "s"], stdin=subprocess.PIPE))
    assert tx.proc.stdin is not None
    tx.proc.stdin.write(os.urandom(4 * 1024 * 1024))
    tx.proc.stdin.flush()
    rx.wait_event("start")
    rx.proc.send_signal(signal.SIGKILL)
    rx.proc.wait()
    try:
        for _ in range(64):  # keep the sender busy until it notices; bounded
            if tx.proc.poll() is not None:
                break
            tx.proc.stdin.write(os.urandom(1024 * 1024))
            tx.proc.stdin.flush()
        tx.proc.stdin.close()
    except BrokenPipeError:
        pass
    assert tx.finish() == 3
    (error,) = tx.events("error")
    assert error["code"] == 3 and "connection" in error["message"]
    assert not (tmp_path / "out" / "s").exists()


def test_existing_file_is_not_overwritten_without_overwrite(tmp_path: Path, procs: list[Proc]) -> None:
    write_random(tmp_path / "a", 10)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_bytes(b"keep me")
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send(str(tmp_path / "a"), rx.address)
    assert rx.finish() == 6 and result.returncode == 6
    assert "already here and different" in rx.events("error")[0]["message"]
    assert [e["path"] for e in rx.events("item") if e["action"] == "conflict"] == ["a"]
    assert (tmp_path / "out" / "a").read_bytes() == b"keep me"
    procs.append(rx := Receiver(tmp_path / "out", "--overwrite"))
    assert send(str(tmp_path / "a"), rx.address).returncode == 0
    assert rx.finish() == 0
    assert (tmp_path / "out" / "a").read_bytes() == (tmp_path / "a").read_bytes()


def test_without_a_terminal_there_is_no_progress_display(tmp_path: Path, procs: list[Proc]) -> None:
    write_random(tmp_path / "a", 100_000)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = run("send", str(tmp_path / "a"), rx.address)
    assert result.returncode == 0
    assert result.stdout == b""
    assert b"\x1b[" not in result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("rtransfer: sent ")
    quiet = Receiver(tmp_path / "out2")
    procs.append(quiet)
    assert run("send", str(tmp_path / "a"), quiet.address, "--quiet").stderr == b""


def test_limit_rate_paces_the_transfer_in_chunks_of_an_eighth_of_a_second(tmp_path: Path, procs: list[Proc]) -> None:
    """What the wire shows, not a time: 2 MiB at 4 MiB/s leaves in 512 KiB chunks (pacing is tested in
    simulated time in tests/unit/test_ratelimit.py, and measured by bench/compare.py --mode rate)."""
    data = write_random(tmp_path / "a.bin", 2 << 20)
    procs.append(rx := Receiver(tmp_path / "out"))
    result = send(str(tmp_path / "a.bin"), rx.address, "--limit-rate", "4M")
    assert result.returncode == 0, result.stderr
    assert rx.finish() == 0
    assert (tmp_path / "out" / "a.bin").read_bytes() == data
    (done,) = rx.events("done")
    assert done["chunks"] == 4


@pytest.mark.parametrize("rate", ["fast", "100"])
def test_a_bad_limit_rate_is_a_usage_error(rate: str) -> None:
    result = run("send", "x", "127.0.0.1:1", "--limit-rate", rate, "--secret", "s")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
