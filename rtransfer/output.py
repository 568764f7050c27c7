"""Event lines for a reader that may be slow or may stop reading: the transfer never waits for it.

A synchronous write to a pipe nobody reads blocks the event loop, and with it the
transfer, the heartbeats and the signal handlers (SIGTERM did nothing). Here lines
go into a bounded buffer that a daemon thread writes out. While the reader lags,
a ``progress`` line replaces the progress line still waiting, and progress lines
are dropped once the buffer holds ``MAX_WAITING_BYTES``; every other line
(``listening``, ``file_done``, ``warning``, ``error``, ``done``) is always kept.
"""

from __future__ import annotations

import os
import threading
from collections import deque

MAX_WAITING_BYTES = 256 * 1024


class LineOutput:
    """Lines to one file descriptor, written by a thread of their own."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dropped = 0  # progress lines dropped (or replaced) because the reader lagged
        self._lines: deque[tuple[bytes, bool]] = deque()  # (line, droppable)
        self._waiting_bytes = 0
        self._writing = False
        self._broken = False  # the reader is gone (EPIPE): lines are discarded
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="rtransfer-output", daemon=True)
        self._thread.start()

    def put(self, line: str, droppable: bool = False) -> None:
        data = line.encode("utf-8")
        with self._cond:
            if self._broken:
                return
            if droppable and self._lines and self._lines[-1][1]:
                self._waiting_bytes -= len(self._lines.pop()[0])
                self.dropped += 1
            elif droppable and self._waiting_bytes >= MAX_WAITING_BYTES:
                self.dropped += 1
                return
            self._lines.append((data, droppable))
            self._waiting_bytes += len(data)
            self._cond.notify()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every line is written (or the reader is gone); False if ``timeout_s`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._broken or not (self._lines or self._writing), timeout_s)

    def _run(self) -> None:
        """Everything waiting goes out in one write: a tree's thousands of lines cost a few calls."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._lines))
                data = b"".join(line for line, _ in self._lines)
                self._lines.clear()
                self._waiting_bytes = 0
                self._writing = True
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                with self._cond:
                    self._broken = True
                    self._lines.clear()
            with self._cond:
                self._writing = False
                self._cond.notify_all()
