"""Event output never holds up a transfer, and signals work whatever stdout is doing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

from rtransfer.report import MAX_WAITING_BYTES, LineOutput
from tests.conftest import rtransfer_cmd, run, write_random


def fill_pipe(fd: int) -> None:
    """Fill a pipe from its write end without changing its flags (the child shares them)."""
    block = b"x" * 65536
    while True:
        try:
            os.pwritev(fd, [block], -1, os.RWF_NOWAIT)
        except BlockingIOError:
            return


def read_line(fd: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        more = os.read(fd, 1)
        assert more, "the receiver closed its output before its first event"
        line += more
    return line


def test_a_reader_that_stops_reading_json_holds_up_neither_the_transfer_nor_sigterm(tmp_path: Path) -> None:
    data = write_random(tmp_path / "data.bin", 4 << 20)
    out_r, out_w = os.pipe()
    receiver = subprocess.Popen(
        [*rtransfer_cmd(), "recv", str(tmp_path / "out"), "--listen", "127.0.0.1:0", "--json"],
        stdout=out_w,
        stderr=subprocess.PIPE,
    )
    try:
        listening = json.loads(read_line(out_r))
        assert listening["event"] == "listening"
        fill_pipe(out_w)  # from here on, nobody reads the receiver's events
        sent = run("send", str(tmp_path / "data.bin"), f"127.0.0.1:{listening['port']}", "--timeout", "5")
        assert sent.returncode == 0, sent.stderr.decode()
        assert (tmp_path / "out" / "data.bin").read_bytes() == data
        receiver.send_signal(signal.SIGTERM)  # it is waiting to write its last events
        assert receiver.wait(timeout=10) == 143
        assert receiver.stderr is not None and b"Traceback" not in receiver.stderr.read()
    finally:
        receiver.kill()
        receiver.wait()
        os.close(out_r)
        os.close(out_w)


def test_progress_lines_give_way_while_the_reader_lags_and_other_lines_never_do() -> None:
    r, w = os.pipe()
    fill_pipe(w)  # the reader lags from the start
    out = LineOutput(w)
    progress = '{"event": "progress", "pad": "' + "p" * 1000 + '"}'
    rounds = 2 * MAX_WAITING_BYTES // len(progress)
    for _ in range(rounds):
        out.put(progress + "\n", droppable=True)
        out.put('{"event": "file_done"}\n')
    out.put('{"event": "done"}\n')
    assert out.dropped > 0
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()  # the reader catches up
    assert out.flush(timeout_s=30)
    os.close(w)
    reader.join(timeout=30)
    os.close(r)
    lines = b"".join(chunks).lstrip(b"x").decode().splitlines()
    assert lines.count('{"event": "file_done"}') == rounds and lines[-1] == '{"event": "done"}'
    assert lines.count(progress) == rounds - out.dropped < rounds
