"""What happens during a transfer, rendered for people (rich) or for scripts (NDJSON).

Both renderers implement one interface, so the session reports each thing once.
rich is imported only when a live display is actually shown.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from rtransfer.errors import RtransferError
from rtransfer.names import checksum_line, printable, shown
from rtransfer.report.live_line import human_bytes, layout
from rtransfer.stats import TransferStats, peak_rss_bytes

if TYPE_CHECKING:
    from rich.progress import ProgressColumn


class Reporter:
    """The events of a transfer. The base class reports nothing."""

    progress_interval_s = 0.5

    def listening(self, host: str, port: int, code: str | None, role: str = "recv", relay: bool = False) -> None:
        """Where the peer finds this side: at HOST:PORT, or (``relay``) at the relay there, by the code."""

    def started(self, stats: TransferStats) -> None: ...
    def progress(self, stats: TransferStats) -> None: ...
    def retransmit(self, seq: int, reason: str) -> None: ...
    def file_done(self, path: str, size: int, blake3_hex: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def item(self, action: str, path: str, dry_run: bool) -> None:
        """What the receiver does to DEST beyond writing files ("delete"), or in a dry run would do
        ("send", "replace", "delete"), a device node it skipped ("skip"), what was here already,
        different, and is kept (a "conflict": the run exits 6 at its end); a directory's path ends in "/"."""

    def joinable(self, socket: str) -> None:
        """The far side of an ssh transfer: where its further ssh sessions join it (``--streams``)."""

    def moved(self, source: str, dest: str, how: str, peer: str) -> None:
        """The transfer moved from one route to another (relay, direct): ``how`` it was made
        ("listened", "punched", "relay"), and where the peer is on it now."""

    def direct_failed(self, reason: str) -> None:
        """A try at a direct path found none, and why; said again only when the reason changes."""

    def done(self, stats: TransferStats) -> None: ...
    def error(self, error: RtransferError) -> None: ...
    def close(self, timeout_s: float | None) -> None:
        """Before exit: let what was reported reach its reader, waiting at most ``timeout_s``."""


class _Lines(Protocol):
    def put(self, line: str, droppable: bool = False) -> None: ...
    def flush(self, timeout_s: float | None = None) -> bool: ...


class _StreamLines:
    """Lines straight to a text stream, for callers that own it (tests, a file)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def put(self, line: str, droppable: bool = False) -> None:
        self.stream.write(line)
        self.stream.flush()

    def flush(self, timeout_s: float | None = None) -> bool:
        return True


class JsonReporter(Reporter):
    """Newline-delimited JSON, one object per event.

    Given a file descriptor, events go through a LineOutput (below): a reader that lags or
    stops never holds up the transfer, and loses only progress events."""

    progress_interval_s = 1.0

    def __init__(self, out: IO[str] | int) -> None:
        if isinstance(out, int):
            self._out: _Lines = LineOutput(out)
        else:
            self._out = _StreamLines(out)
        self._stats: TransferStats | None = None  # the live counters, once a transfer has started
        self._started = False

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.put(json.dumps({"event": event, **fields}) + "\n", droppable=event == "progress")

    def close(self, timeout_s: float | None) -> None:
        self._out.flush(timeout_s)

    def listening(self, host: str, port: int, code: str | None, role: str = "recv", relay: bool = False) -> None:
        if relay:
            self._emit("listening", role=role, relay=f"{host}:{port}", code=code)
        else:
            self._emit("listening", role=role, host=host, port=port, code=code)

    def started(self, stats: TransferStats) -> None:
        """Once a run: a reconnect or a move resumes the transfer, it does not start another."""
        if self._started:
            return
        self._started = True
        self._stats = stats
        self._emit(
            "start", role=stats.role, total_bytes=stats.total_bytes, files=stats.files_total, listing=stats.listing
        )

    def progress(self, stats: TransferStats) -> None:
        self._stats = stats
        self._emit("progress", **stats.as_event())

    def retransmit(self, seq: int, reason: str) -> None:
        self._emit("retransmit", seq=seq, reason=reason)

    def file_done(self, path: str, size: int, blake3_hex: str) -> None:
        """A line per file of a tree: written out directly, as ``_emit`` would, at a fifth of the cost."""
        line = f'{{"event": "file_done", "path": {json.dumps(path)}, "bytes": {size}, "blake3": "{blake3_hex}"}}\n'
        self._out.put(line)

    def warning(self, message: str) -> None:
        self._emit("warning", message=message)

    def item(self, action: str, path: str, dry_run: bool) -> None:
        self._emit("item", action=action, path=path, dry_run=dry_run)

    def joinable(self, socket: str) -> None:
        self._emit("joinable", socket=socket)

    def moved(self, source: str, dest: str, how: str, peer: str) -> None:
        self._emit("moved", **{"from": source, "to": dest, "how": how, "peer": peer})

    def direct_failed(self, reason: str) -> None:
        self._emit("direct_failed", reason=reason)

    def done(self, stats: TransferStats) -> None:
        self._emit("done", ok=True, **stats.as_event())

    def error(self, error: RtransferError) -> None:
        self._emit("error", code=error.exit_code, kind=error.kind, message=error.message)
        counters = (self._stats or TransferStats("")).as_event()  # a script sees how far it got
        self._emit("done", ok=False, code=error.exit_code, **counters)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_WOULD = (("send", "send"), ("replace", "replace"), ("delete", "delete"), ("conflict", "keep"), ("skip", "skip"))


def _dry_run_summary(stats: TransferStats) -> str:
    """rsync marks a dry run's output (DRY RUN): none of its numbers is of bytes moved."""
    listed = f"{_count(stats.files_total, 'file')} of {human_bytes(stats.total_bytes or 0)} listed"
    if stats.role == "send":
        return f"rtransfer: dry run, nothing sent: {listed}; the receiver says what it would do (DRY RUN)"
    would = ", ".join(f"{verb} {stats.would[action]}" for action, verb in _WOULD if stats.would.get(action))
    return f"rtransfer: dry run, nothing changed: {listed}; would {would or 'do nothing'} (DRY RUN)"


class _LineColumn:
    """rich's Progress draws one column: the whole line, fitted to the width (live_line.py)."""

    max_refresh = None

    def __init__(self, reporter: ConsoleReporter) -> None:
        self.reporter = reporter

    def __call__(self, task: Any) -> Any:
        return self.reporter.line(task.speed)

    def get_table_column(self) -> Any:
        from rich.table import Column

        return Column(no_wrap=True)


class ConsoleReporter(Reporter):
    """Messages on stderr; a live progress display only when stderr is a terminal.

    A file's digest line is printed when the transfer is that one file (what ``b3sum``
    would print, one line to check it by) or with ``verbose``; a tree prints only its
    summary, as rsync prints nothing per file without ``-v``."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        quiet: bool = False,
        live: bool | None = None,
        width: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.quiet = quiet
        self.verbose = verbose
        self._per_file = verbose
        self.live = (not quiet and self.stream.isatty()) if live is None else live
        self._progress: Any = None
        self._task: Any = None
        self._stats: TransferStats | None = None

    def _say(self, line: str) -> None:
        line = printable(line)
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def listening(self, host: str, port: int, code: str | None, role: str = "recv", relay: bool = False) -> None:
        """Said even with ``quiet``: without the address and code the peer cannot connect."""
        say = functools.partial(print, file=self.stream, flush=True)
        other, machine = ("sender", "sending") if role == "recv" else ("receiver", "receiving")
        say(
            f"rtransfer: waiting for the {other} at relay {host}:{port}"
            if relay
            else f"rtransfer: listening on {host}:{port}"
        )
        if code is None:
            return
        where = "HOST" if host in ("0.0.0.0", "::") else host
        reach = (
            f"--relay {host}:{port}"
            if relay
            else (f"{where}:{port}" if role == "recv" else f"--connect {where}:{port}")
        )
        say(f"rtransfer: code {code}; on the {machine} machine run:")
        command = "send FILE..." if role == "recv" else "recv DEST"
        say(f"  rtransfer {command} {reach} --code {code}")

    def started(self, stats: TransferStats) -> None:
        self._per_file = self.verbose or (not stats.listing and stats.files_total <= 1)
        self._stats = stats
        if not self.live or self._progress is not None:  # a reconnect or a move: the same display goes on
            return
        from rich.console import Console
        from rich.progress import Progress

        self._progress = Progress(
            cast("ProgressColumn", _LineColumn(self)),  # duck-typed: rich is imported only for a live display
            console=Console(file=self.stream, force_terminal=True, width=self.width),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=stats.total_bytes)

    def progress(self, stats: TransferStats) -> None:
        self._stats = stats
        if self._progress is not None:
            self._progress.update(self._task, completed=stats.bytes_done, total=stats.total_bytes)

    def line(self, speed: float | None) -> Any:
        """The live line as the terminal's width allows now (live_line.py), with its bar drawn."""
        from rich.text import Text

        stats = self._stats
        if stats is None:
            return Text("")
        outage = None if stats.outage_since is None else time.monotonic() - stats.outage_since
        fitted = layout(stats, speed, self._progress.console.width, outage)
        text = Text(fitted.left + (" " if fitted.left and fitted.bar else ""))
        if fitted.bar:
            done = fitted.bar * stats.bytes_done // stats.total_bytes if stats.total_bytes else 0
            text.append("━" * done, style="bar.complete")
            text.append("━" * (fitted.bar - done), style="bar.back")
            text.append(" ")
        text.append(fitted.right)
        return text

    def file_done(self, path: str, size: int, blake3_hex: str) -> None:
        if self._per_file:
            self._say(checksum_line(blake3_hex, path))

    def warning(self, message: str) -> None:
        self._say(f"rtransfer: warning: {message}")

    def moved(self, source: str, dest: str, how: str, peer: str) -> None:
        if self.verbose:
            self._say(f"rtransfer: moved from the {source} to the {dest} path ({how}), {shown(peer)}")

    def direct_failed(self, reason: str) -> None:
        if self.verbose:
            self._say(f"rtransfer: no direct path: {reason}")

    def item(self, action: str, path: str, dry_run: bool) -> None:
        """A dry run's every line (what it is for); a real run's deletions with ``verbose``, as rsync -v."""
        shown_path = shown(path)
        if action == "conflict":
            kept = f"{shown_path}: already here and different (use --overwrite to replace it)"
            self._say(f"would keep {kept}" if dry_run else f"rtransfer: kept {kept}")
        elif dry_run:
            self._say(f"would {action} {shown_path}")
        elif self.verbose:
            self._say(f"{'skipped device node' if action == 'skip' else action + 'd'} {shown_path}")

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def done(self, stats: TransferStats) -> None:
        self._stop()
        if stats.dry_run:
            self._say(_dry_run_summary(stats))
            return
        seconds = max(stats.seconds, 1e-9)
        verb = "sent" if stats.role == "send" else "received"
        moved = stats.moved  # this run's, in this run's time: not what a resumed file or an earlier run left
        files_found, bytes_found = stats.skipped_by_run
        skipped = (
            f" ({_count(files_found, 'file')} of {human_bytes(bytes_found)} already there, skipped)"
            if files_found
            else ""
        )
        resumed = (stats.total_bytes or 0) - moved - bytes_found  # the parts of files an interrupted run left
        skipped += f" ({human_bytes(resumed)} resumed)" if resumed > 0 else ""
        repaired = " (all repaired and verified)" if stats.integrity_failures else ""
        self._say(
            f"rtransfer: {verb} {human_bytes(moved)} in {_count(stats.files_done - files_found, 'file')}"
            f"{skipped} in {seconds:.2f} s ({human_bytes(moved / seconds)}/s); {_count(stats.chunks, 'chunk')}, "
            f"{_count(stats.retransmits, 'retransmit')}, {_count(stats.integrity_failures, 'integrity failure')}"
            f"{repaired}, {_count(stats.reconnects, 'reconnect')}, "
            f"{human_bytes(stats.wire_sent + stats.wire_received)} on the wire"
            + (f" (compressed {stats.compression:.2f}:1)" if stats.compression is not None else "")
            + (f" ({human_bytes(stats.relay_bytes)} through the relay)" if stats.relay_bytes else "")
            + f", peak memory {human_bytes(peak_rss_bytes())}"
        )

    def error(self, error: RtransferError) -> None:
        self._stop()
        print(f"rtransfer: error: {printable(error.message)}", file=self.stream, flush=True)


MAX_WAITING_BYTES = 256 * 1024


class LineOutput:
    """Lines to one file descriptor, written by a thread of their own, for a reader that may be slow
    or may stop reading: the transfer never waits for it. (A synchronous write to a pipe nobody
    reads blocked the event loop, and with it the transfer, the heartbeats and the signal handlers:
    SIGTERM did nothing.) While the reader lags, a ``progress`` line replaces the one still waiting,
    and progress lines are dropped once MAX_WAITING_BYTES wait; every other line is kept."""

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
