"""The end of a transfer: the sender exits with the receiver's outcome, once the receiver has
taken its last steps, and a connection lost in between is settled by the sender coming back."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.chaos.test_chaos import assert_quiet
from tests.conftest import ChaosProxy, Proc, Receiver, run, write_random

pytestmark = [pytest.mark.timeout(120)]
DONE = 9  # the DONE frame's type (protocol/constants.py)


def test_the_receivers_done_lost_on_its_way_is_heard_again_and_both_exit_0(tmp_path: Path, procs: list[Proc]) -> None:
    """The receiver exited 0 as it sent DONE; the sender, which never heard it, retried a
    receiver that was gone and failed (exit 3) a transfer that had arrived."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    data = write_random(src / "d" / "a.bin", 3 << 20)
    (src / "link").symlink_to("d/a.bin")  # made among the receiver's last steps
    procs.append(rx := Receiver(tmp_path / "out", "--retry-max-seconds", "30"))
    procs.append(proxy := ChaosProxy(rx.address, "--reset-at-frame", str(DONE), "--max-resets", "1"))
    result = run("send", str(src), proxy.address, "--json", "--retries", "5", "--retry-max-seconds", "20")
    assert rx.finish() == 0 and result.returncode == 0, (result.stderr.decode()[-800:], rx.seen[-3:])
    assert proxy.faults("reset") == 1
    assert (tmp_path / "out" / "src" / "d" / "a.bin").read_bytes() == data
    assert (tmp_path / "out" / "src" / "link").readlink().as_posix() == "d/a.bin"
    assert rx.events("done")[0]["reconnects"] >= 1
    assert_quiet(result.stderr.decode(), rx.proc.stderr.read().decode() if rx.proc.stderr else "")


def test_progress_goes_on_through_an_outage(tmp_path: Path, procs: list[Proc]) -> None:
    """--json progress stopped while a broken transfer waited for its peer (and the display kept
    its last rate)."""
    src = tmp_path / "f.bin"
    data = write_random(src, 16 << 20)
    procs.append(rx := Receiver(tmp_path / "out", "--timeout", "2"))
    procs.append(tx := Proc(["send", str(src), rx.address, "--json", "--timeout", "2", "--limit-rate", "4M"]))
    while rx.wait_event("progress")["bytes"] == 0:  # bounded by wait_event's timeout
        pass
    os.kill(tx.proc.pid, signal.SIGSTOP)  # the sender goes silent: the receiver's connection times out
    try:
        assert "waiting up to" in rx.wait_event("warning")["message"]
        reconnects = [rx.wait_event("progress")["reconnects"] for _ in range(2)]  # while no connection is there
        assert reconnects == [1, 1]
    finally:
        os.kill(tx.proc.pid, signal.SIGCONT)
    assert tx.finish() == 0 and rx.finish() == 0
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert len(tx.events("start")) == len(rx.events("start")) == 1  # it said start again after each reconnect
