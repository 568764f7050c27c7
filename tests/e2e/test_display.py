"""The live display, read off a real terminal (tmux) at 60, 80 and 120 columns."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Proc, Receiver, rtransfer_cmd, write_random

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by tests/run.sh")
SHOWN = re.compile(r"\d+\.\d/24\.0 MiB .*\d+\.\d [KM]iB/s .*\d:\d\d:\d\d")  # bytes done/total, rate, time left


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_the_live_line_shows_bytes_rate_and_time_left_at_any_width(
    tmp_path: Path, procs: list[Proc], columns: int
) -> None:
    """At 80 columns the display cut the bytes and the time left, and kept counters that were zero."""
    src = tmp_path / "f.bin"
    write_random(src, 24 << 20)
    procs.append(rx := Receiver(tmp_path / "out"))
    server = f"rt-{os.getpid()}-{columns}"
    tmux = ["tmux", "-L", server]
    command = shlex.join([*rtransfer_cmd(), "send", str(src), rx.address, "--limit-rate", "4M"])  # 6 s of display
    secret = f"RTRANSFER_SECRET={os.environ['RTRANSFER_SECRET']}"
    subprocess.run([*tmux, "new-session", "-d", "-x", str(columns), "-y", "8", "-e", secret, command], check=True)
    try:
        screen, deadline = "", time.monotonic() + 20
        while time.monotonic() < deadline and not SHOWN.search(screen):  # bounded: until the line is drawn
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
        lines = [line for line in screen.splitlines() if SHOWN.search(line)]
        assert lines, screen
        assert all(len(line) <= columns for line in screen.splitlines()), screen
        assert "0 retx" not in lines[0] or columns >= 120, lines[0]
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
