"""The receiving disk fills up mid-transfer: exit 6, keep the partial data, resume once space is freed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.chaos.test_kill import wait_for_partial
from tests.conftest import Proc, Receiver

SIZE = 40 * 1024 * 1024
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_exits_6_keeps_partial_and_resumes_when_space_is_freed(
    tmp_path: Path, procs: list[Proc], small_disk: Path
) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "big.bin").write_bytes(data)
    procs.append(rx := Receiver(small_disk))
    procs.append(tx := Proc(["send", str(tmp_path / "big.bin"), rx.address, "--json", "--chunk-size", "256K"]))
    part = small_disk / ".big.bin.rtpart"
    wait_for_partial(part, 10 * 1024 * 1024)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # someone else fills the disk while we write
        try:
            for _ in range(48):
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    assert rx.finish() == 6
    assert "no space left on device" in rx.events("error")[0]["message"]
    assert tx.finish() == 6
    assert part.exists() and (small_disk / ".big.bin.rtjournal").exists()
    kept = part.stat().st_size
    assert kept >= 10 * 1024 * 1024

    filler.unlink()
    procs.append(rx := Receiver(small_disk))
    procs.append(tx := Proc(["send", str(tmp_path / "big.bin"), rx.address, "--json", "--chunk-size", "256K"]))
    try:
        sent = tx.finish(timeout_s=30)
    except AssertionError as exc:  # the sender still ran: killed, and said where it stood
        rx.kill()
        rx.finish()
        raise AssertionError(f"resume hung: sender {exc}; receiver {rx.seen[-3:]}") from None
    assert sent == 0
    assert rx.finish() == 0
    assert blake3.blake3((small_disk / "big.bin").read_bytes()).digest() == blake3.blake3(data).digest()
    received = rx.events("done")[0]["chunks"] * 256 * 1024
    assert received <= SIZE - kept + 2 * 1024 * 1024  # resumed, not restarted
