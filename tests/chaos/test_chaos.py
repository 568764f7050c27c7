"""Transfers through a misbehaving proxy: resets, stalls, flipped bits, and all at once.

Each must finish byte-identical with exit 0, and rtransfer's counters must account
for the faults the proxy reports having injected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from tests.conftest import ChaosProxy, Proc, Receiver, run

SIZE = 256 * 1024 * 1024
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("chaos") / "big.bin"
    digest = blake3.blake3()
    with open(path, "wb") as f:
        for _ in range(SIZE // (16 << 20)):
            block = os.urandom(16 << 20)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()


def transfer_through(tmp_path: Path, procs: list[Proc], big: tuple[Path, str], *faults: str) -> tuple[dict, ChaosProxy]:
    src, digest = big
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, *faults))
    # 1 MiB chunks: enough chunks (and ACKs) in 256 MiB for every fault to land on some.
    args = ("--json", "--retries", "30", "--chunk-size", "1M", "--window", "8")
    result = run("send", str(src), proxy.address, *args, timeout_s=200)
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    rx_code = rx.finish()
    rx_stderr = rx.proc.stderr.read().decode() if rx.proc.stderr else ""
    assert (result.returncode, rx_code) == (0, 0), (events[-4:], rx.seen[-4:], rx_stderr[-1500:])
    assert_quiet(result.stderr.decode(), rx_stderr)
    assert rx.events("file_done")[0]["blake3"] == digest == events[-2]["blake3"]
    out = tmp_path / "out" / src.name
    assert out.stat().st_size == SIZE and blake3.blake3(out.read_bytes()).hexdigest() == digest
    assert not list((tmp_path / "out").glob(".*"))  # no partial file or journal left behind
    return events[-1], proxy


def assert_quiet(*stderrs: str) -> None:
    """A fault is handled, not leaked: no traceback and no unretrieved future on either side."""
    for text in stderrs:
        assert "Traceback" not in text and "never retrieved" not in text, text[-1500:]


MEMORY_BUDGET_BYTES = 100 * 1024 * 1024


def test_memory_stays_in_budget_through_a_rate_cap_and_resets(tmp_path: Path, procs: list[Proc]) -> None:
    """1 GiB at the default chunk size and window, through 100 MB/s with a reset every 300 MiB."""
    src = tmp_path / "gig.bin"
    block = os.urandom(16 << 20)
    with open(src, "wb") as f:
        for i in range(64):
            f.write(i.to_bytes(8, "big") + block[8:])
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--rate", "100M", "--reset-every", "300M"))
    result = run("send", str(src), proxy.address, "--json", "--retries", "30", timeout_s=200)
    rx_code = rx.finish()
    rx_stderr = rx.proc.stderr.read().decode() if rx.proc.stderr else ""
    assert (result.returncode, rx_code) == (0, 0), rx_stderr[-1500:]
    assert_quiet(result.stderr.decode(), rx_stderr)
    send_done = json.loads(result.stdout.decode().splitlines()[-1])
    (recv_done,) = rx.events("done")
    assert send_done["reconnects"] >= 3 and proxy.faults("reset") >= 3
    peaks = {"send": send_done["peak_rss_bytes"], "recv": recv_done["peak_rss_bytes"]}
    assert max(peaks.values()) <= MEMORY_BUDGET_BYTES, peaks
    assert (tmp_path / "out" / "gig.bin").stat().st_size == src.stat().st_size


def test_a_reset_every_32_mib_is_survived(tmp_path: Path, procs: list[Proc], big_file: tuple[Path, str]) -> None:
    done, proxy = transfer_through(tmp_path, procs, big_file, "--reset-every", "32M")
    resets = proxy.faults("reset")
    assert resets >= 7
    assert done["reconnects"] == resets


def test_a_ten_second_stall_is_survived(tmp_path: Path, procs: list[Proc], big_file: tuple[Path, str]) -> None:
    done, proxy = transfer_through(tmp_path, procs, big_file, "--stall-after", "100M", "--stall-seconds", "10")
    assert proxy.faults("stall") == 1
    assert done["ok"] is True


@pytest.mark.parametrize(
    "faults",
    [
        ["--flip-probability", "1e-4"],
        ["--flip-probability", "3e-2", "--flip-after", "64K"],
        ["--flip-probability", "3e-1", "--flip-after", "4K", "--flip-direction", "down"],
    ],
    ids=["1e-4 per read", "3e-2 per read after the handshake", "corrupt ACKs only"],
)
def test_flipped_bits_are_caught_and_repaired(
    tmp_path: Path, procs: list[Proc], big_file: tuple[Path, str], faults: list[str]
) -> None:
    probability = faults[1]
    done, proxy = transfer_through(tmp_path, procs, big_file, *faults, "--seed", "7")
    flips = proxy.faults("flip")
    caught = done["integrity_failures"] + done["reconnects"]
    assert (caught >= 1) == (flips >= 1)
    assert caught <= flips
    if probability == "3e-2":
        assert flips >= 10 and done["integrity_failures"] >= 1
    if probability == "3e-1":  # every corrupt ACK breaks the connection: the receiver must wait, not quit
        assert done["reconnects"] >= 1


def test_resets_stall_and_flips_together(tmp_path: Path, procs: list[Proc], big_file: tuple[Path, str]) -> None:
    done, proxy = transfer_through(
        tmp_path,
        procs,
        big_file,
        *("--reset-every", "32M", "--stall-after", "100M", "--stall-seconds", "10"),
        *("--flip-probability", "1e-4", "--seed", "3"),
    )
    assert proxy.faults("reset") >= 7 and proxy.faults("stall") == 1
    assert done["reconnects"] >= proxy.faults("reset")


def test_throttled_and_delayed_link(tmp_path: Path, procs: list[Proc], big_file: tuple[Path, str]) -> None:
    src, digest = big_file
    procs.append(rx := Receiver(tmp_path / "out"))
    procs.append(proxy := ChaosProxy(rx.address, "--rate", "200M", "--delay-ms", "1"))
    result = run("send", str(src), proxy.address, "--json", timeout_s=200)
    assert result.returncode == 0
    assert rx.finish() == 0
    assert rx.events("file_done")[0]["blake3"] == digest


def test_a_path_that_damages_every_chunk_ends_in_exit_4_not_an_endless_resend(
    tmp_path: Path, procs: list[Proc]
) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(4 << 20))
    procs.append(rx := Receiver(tmp_path / "out", "--retry-max-seconds", "1"))
    flip_every_upstream_read = ("--flip-probability", "1", "--flip-after", "64K", "--flip-direction", "up")
    procs.append(proxy := ChaosProxy(rx.address, *flip_every_upstream_read))
    result = run("send", str(src), proxy.address, "--json", "--chunk-size", "1M", "--retries", "0", timeout_s=60)
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.returncode == 4, events[-3:]
    (error,) = [e for e in events if e["event"] == "error"]
    assert "failed its check 16 times" in error["message"] and error["code"] == 4
    assert events[-1]["event"] == "done" and events[-1]["ok"] is False and events[-1]["code"] == 4
    assert events[-1]["integrity_failures"] >= 16 and proxy.faults("flip") >= 16  # every chunk in flight counts
    assert rx.finish() != 0  # its copy of the ERROR frame is damaged too: it gives up waiting for the sender
    assert not (tmp_path / "out" / "data.bin").exists()
