"""kill -9 either side at a random point; running both again finishes the transfer with little
re-sent (the side left running resumes only with the run it began with: one guess at the code)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import blake3
import pytest

from tests.conftest import Proc, Receiver, random_source, rtransfer_cmd

SIZE = 64 * 1024 * 1024
CHUNK = 256 * 1024
ROUNDS = 10
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return random_source(tmp_path_factory, SIZE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_partial(part: Path, at_least: int, timeout_s: float = 30.0) -> None:
    """The event we kill on: the partial file has grown past a random size."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if part.stat().st_size >= at_least:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"{part} never reached {at_least} bytes")


def sender_args(src: Path, port: int, streams: int = 1) -> list[str]:
    chunking = ["--chunk-size", "256K"] + (["--streams", str(streams)] if streams > 1 else [])
    return ["send", str(src), f"127.0.0.1:{port}", "--json", *chunking, "--retries", "40"]


def check_output(out: Path, digest: str) -> None:
    assert blake3.blake3((out / "data.bin").read_bytes()).hexdigest() == digest
    assert not list(out.glob(".*"))


@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("killed", ["receiver", "sender"])
def test_either_side_killed_and_both_run_again_resume(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str], streams: int, killed: str
) -> None:
    """The side still running waits for the run it began with, and only for it: a new run of the
    killed side, keyed by the code, is refused with a line saying to run both again (letting it in
    would be a second guess at the code). Run again, both resume where the partial file ends."""
    src, digest = source
    rng = random.Random(1 if killed == "receiver" else 2)
    for round_no in range(ROUNDS // 2 if streams == 1 else ROUNDS // 4):
        out, port = tmp_path / f"out{round_no}", free_port()
        procs.append(rx := Receiver(out, listen=f"127.0.0.1:{port}"))
        procs.append(tx := Proc(sender_args(src, port, streams)))
        at = rng.randrange(SIZE // 10, SIZE * 9 // 10)
        wait_for_partial(out / ".data.bin.rtpart", at)
        (rx if killed == "receiver" else tx).kill()
        if round_no == 0:
            newcomer = run_again(killed, out, port, src, streams, timeout_s=60)
            assert newcomer.returncode == 5, newcomer.stderr[-2000:]
            assert "run both again" in newcomer.stdout.decode() + newcomer.stderr.decode()
        (tx if killed == "receiver" else rx).kill()
        procs.append(rx := Receiver(out, listen=f"127.0.0.1:{port}"))
        again = run_again("sender", out, port, src, streams, timeout_s=60)
        assert again.returncode == 0, again.stdout[-2000:]
        assert rx.finish() == 0
        check_output(out, digest)
        done = json.loads(again.stdout.splitlines()[-1])
        assert done["chunks"] * CHUNK <= SIZE - at + SIZE // 10  # resumed: what was there is not sent again


def run_again(
    side: str, out: Path, port: int, src: Path, streams: int, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    if side == "sender":
        args = sender_args(src, port, streams)
    else:
        args = ["recv", str(out), "--listen", f"127.0.0.1:{port}", "--json"]
    return subprocess.run([*rtransfer_cmd(), *args], capture_output=True, timeout=timeout_s)


@pytest.mark.parametrize("killed", ["receiver", "sender"])
def test_a_delta_killed_midway_resumes_and_sends_little_twice(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str], killed: str
) -> None:
    """The receiver holds an old copy whose second half differs: the first half goes as COPY ranges,
    the second as bytes. Killed in the second half, the rerun resumes the delta from the journal;
    the old copy keeps its name until the new version is whole."""
    src, digest = source
    data = src.read_bytes()
    rng = random.Random(3 if killed == "receiver" else 4)
    for round_no in range(3):
        out = tmp_path / f"out{round_no}"
        out.mkdir()
        old = data[: SIZE // 2] + os.urandom(SIZE // 2)
        (out / "data.bin").write_bytes(old)
        port = free_port()
        procs.append(rx := Receiver(out, "--overwrite", listen=f"127.0.0.1:{port}"))
        procs.append(first := Proc(sender_args(src, port)))
        wait_for_partial(out / ".data.bin.rtpart", rng.randrange(SIZE * 6 // 10, SIZE * 9 // 10))
        for side in (rx, first) if killed == "receiver" else (first, rx):  # the killed side, then the other
            side.kill()
        assert (out / "data.bin").read_bytes() == old
        procs.append(rx := Receiver(out, "--overwrite", listen=f"127.0.0.1:{port}"))
        again = subprocess.run([*rtransfer_cmd(), *sender_args(src, port)], capture_output=True, timeout=60)
        assert again.returncode == 0, again.stdout[-2000:]
        assert rx.finish() == 0
        sent = rx.events("done")[0]["wire_bytes_received"]  # in the run that resumed
        check_output(out, digest)
        assert sent < SIZE - SIZE * 6 // 10 + SIZE // 10, (round_no, sent)  # what was left of the changed half


def test_a_changed_source_is_sent_whole_never_spliced_onto_the_old_partial(tmp_path: Path, procs: list[Proc]) -> None:
    src = tmp_path / "data.bin"
    old = os.urandom(SIZE)
    src.write_bytes(old)
    stamp = src.stat().st_mtime_ns
    out = tmp_path / "out"
    procs.append(rx := Receiver(out))
    procs.append(first := Proc(sender_args(src, rx.port)))
    wait_for_partial(out / ".data.bin.rtpart", SIZE // 2)
    first.kill()
    rx.kill()
    new = os.urandom(4096) + old[4096:]  # same size, and the same mtime below: only the head digest differs
    src.write_bytes(new)
    os.utime(src, ns=(stamp, stamp))
    procs.append(rx := Receiver(out))
    again = subprocess.run([*rtransfer_cmd(), *sender_args(src, rx.port)], capture_output=True, timeout=60)
    assert again.returncode == 0
    assert rx.finish() == 0
    assert (out / "data.bin").read_bytes() == new
    assert rx.events("done")[0]["chunks"] * CHUNK >= SIZE  # all of it: the old half was thrown away


def test_receiver_gives_up_with_exit_3_and_keeps_the_partial_for_later(
    tmp_path: Path, procs: list[Proc], source: tuple[Path, str]
) -> None:
    src, digest = source
    out = tmp_path / "out"
    procs.append(rx := Receiver(out, "--retry-max-seconds", "1"))
    procs.append(first := Proc(sender_args(src, rx.port)))
    wait_for_partial(out / ".data.bin.rtpart", SIZE // 3)
    first.proc.kill()
    assert rx.finish() == 3
    assert "did not come back within 1 s" in rx.events("error")[0]["message"]
    kept = (out / ".data.bin.rtpart").stat().st_size
    assert kept >= SIZE // 3 and (out / ".data.bin.rtjournal").exists()
    assert not (out / "data.bin").exists()
    procs.append(rx := Receiver(out))
    again = subprocess.run([*rtransfer_cmd(), *sender_args(src, rx.port)], capture_output=True, timeout=60)
    assert again.returncode == 0 and rx.finish() == 0
    check_output(out, digest)
    assert rx.events("done")[0]["chunks"] * CHUNK <= SIZE - kept + 8 * CHUNK


def make_tree(root: Path) -> Path:
    """Small files (packed) around two large ones (chunked, resumable part-way)."""
    src = root / "tree"
    for d in range(12):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(250):
            (src / f"d{d:02}" / f"f{i:03}").write_bytes(os.urandom(16 * 1024))
    (src / "d03" / "large").write_bytes(os.urandom(12 * 1024 * 1024))
    (src / "d09" / "large").write_bytes(os.urandom(12 * 1024 * 1024))
    return src


@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_a_tree_killed_mid_way_resumes_without_sending_a_finished_file_again(
    tmp_path: Path, procs: list[Proc], victim: str
) -> None:
    """Through a 20 MB/s cap, so the kill lands mid-tree: after a third of the files are in place."""
    from tests.conftest import ChaosProxy

    src = make_tree(tmp_path)
    files = sum(1 for p in src.rglob("*") if p.is_file())
    out = tmp_path / "out"
    port = free_port()
    procs.append(rx := Receiver(out, listen=f"127.0.0.1:{port}"))
    procs.append(proxy := ChaosProxy(rx.address, "--rate", "20M"))
    send = ["send", str(src), proxy.address, "--json", "--retries", "40"]
    procs.append(first := Proc(send))
    for _ in range(files // 3):
        rx.wait_event("file_done")
    for side in (rx, first) if victim == "receiver" else (first, rx):  # the killed side, then the other
        side.kill()
    rx.finish()  # every event it wrote before it died
    before = {e["path"] for e in rx.events("file_done")}
    procs.append(rx := Receiver(out, listen=f"127.0.0.1:{port}"))
    procs.append(proxy := ChaosProxy(rx.address, "--rate", "20M"))
    again = subprocess.run(
        [*rtransfer_cmd(), "send", str(src), proxy.address, "--json"], capture_output=True, timeout=90
    )
    assert again.returncode == 0, again.stdout[-2000:]
    assert rx.finish() == 0
    after = {e["path"] for e in rx.events("file_done")}
    assert 0 < len(before) < files, "the kill did not land mid-tree"
    assert before.isdisjoint(after), f"{len(before & after)} finished files were sent again"
    target = out / "tree"
    diff = subprocess.run(["rsync", "-a", "-n", "-i", "-c", f"{src}/", f"{target}/"], capture_output=True, text=True)
    assert diff.stdout == ""
    assert not list((out / "tree").rglob(".*"))
