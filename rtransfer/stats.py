"""Counters and resource gauges for one transfer: what the reporters display.

Queue depths and peak memory are tracked so that load that would grow them
without bound shows up in the progress events, not in an OOM kill.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from msgspec import Struct, field

from rtransfer.protocol.model import Entry


def peak_rss_bytes() -> int:
    """Peak resident memory of this process.

    On Linux this is VmHWM, the high-water mark of this program's own memory. ru_maxrss
    is not: it carries over across exec, so a child reports at least the RSS its parent had
    when it forked (under pytest, both sides of a transfer reported pytest's own peak).
    Elsewhere, ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss_bytes() -> int:
    """Resident memory now (VmRSS), 0 where the system does not say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def open_fds() -> int:
    """Descriptors this process has open, 0 where the system does not say."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class TransferStats(Struct):
    role: str
    total_bytes: int | None = None
    bytes_done: int = 0
    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0  # already at the receiver whole: counted in files_done, not moved
    bytes_skipped: int = 0
    moved: int = 0  # file bytes this run moved, over all its connections (not skipped, not resumed from)
    found: tuple[int, int] | None = None  # (files, bytes) the first connection found there: what this run skipped
    outage_since: float | None = None  # a connection broke and none has replaced it yet (monotonic)
    chunks: int = 0
    retransmits: int = 0
    integrity_failures: int = 0
    duplicates: int = 0  # chunks received twice (a resend raced its ACK) and ignored
    devices_skipped: int = 0  # device nodes listed that this receiver did not make (recv --devices)
    dry_run: bool = False  # nothing was written: the receiver only said what it would do
    would: dict[str, int] = field(default_factory=dict)  # a dry run's receiver: its items, by action
    reconnects: int = 0
    accepted: int = 0  # connections that got as far as the receiver's ACCEPT
    in_flight: int = 0
    queue_depth: int = 0
    queue_peak: int = 0
    listing: bool = False  # the file list is still growing: totals are what has been listed so far
    streams: list[dict[str, object]] = field(default_factory=list)  # per connection, over several (sender)
    wire_sent: int = 0  # bytes written to connections, every frame and header included
    wire_received: int = 0
    relay_bytes: int = 0  # of the wire's bytes, those through a relay (both ways)
    path: str = "direct"  # how the first connection's bytes travel now (transport.Route): "direct", "relay" or "ssh"
    routed: bool = False  # a connection has set ``path``: a later change of it is a move
    relayed: bool = False  # ... through a relay
    compression: float | None = None  # send --compress: file bytes per byte sent
    started_at: float = field(default_factory=time.monotonic)
    clock_started: bool = False  # the time runs from the first connection's start, not the wait for it

    def start_listing(self) -> None:
        """A connection lists the transfer afresh; counts restart (the receiver tells what it has)."""
        if self.clock_started and self.found is None:  # a later connection: what it skips, earlier ones sent
            self.found = (self.files_skipped, self.bytes_skipped)
        self.total_bytes, self.files_total, self.files_done, self.bytes_done = 0, 0, 0, 0
        self.files_skipped, self.bytes_skipped = 0, 0
        self.listing = True
        if not self.clock_started:
            self.started_at, self.clock_started = time.monotonic(), True

    def broke(self) -> None:
        """A connection broke and another will be tried: an outage until one serves (``outage_since``)."""
        self.reconnects += 1
        self.outage_since = time.monotonic()

    def transferred(self, nbytes: int) -> None:
        """File bytes that crossed in this run."""
        self.bytes_done += nbytes
        self.moved += nbytes

    @property
    def skipped_by_run(self) -> tuple[int, int]:
        """Files (and their bytes) that were there before this run, not those its earlier connections sent."""
        return self.found or (self.files_skipped, self.bytes_skipped)

    def skipped(self, files: int, nbytes: int) -> None:
        """Files the receiver already has whole: done, but nothing moved for them."""
        self.files_done += files
        self.bytes_done += nbytes
        self.files_skipped += files
        self.bytes_skipped += nbytes

    def listed(self, entries: list[Entry], last: bool) -> None:
        """Totals grow batch by batch, as rsync's do while it is still checking files ("to-chk")."""
        for entry in entries:
            if entry.kind == "file":
                self.files_total += 1
                if entry.size is None:
                    self.total_bytes = None  # a stream: its length is known at its end
                elif self.total_bytes is not None:
                    self.total_bytes += entry.size
        self.listing = not last

    def observe_queue(self, depth: int) -> None:
        self.queue_depth = depth
        self.queue_peak = max(self.queue_peak, depth)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started_at

    def as_event(self) -> dict[str, object]:
        return {
            "bytes": self.bytes_done,
            "total_bytes": self.total_bytes,
            "files": self.files_done,
            "files_total": self.files_total,
            "files_skipped": self.files_skipped,
            "bytes_moved": self.moved,
            "listing": self.listing,
            "chunks": self.chunks,
            "retransmits": self.retransmits,
            "integrity_failures": self.integrity_failures,
            "duplicates": self.duplicates,
            **({"devices_skipped": self.devices_skipped} if self.devices_skipped else {}),
            **({"dry_run": True} if self.dry_run else {}),
            "reconnects": self.reconnects,
            "in_flight": self.in_flight,
            "queue_depth": self.queue_depth,
            "queue_peak": self.queue_peak,
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_bytes": current_rss_bytes(),
            "open_fds": open_fds(),
            "seconds": round(self.seconds, 3),
            "wire_bytes_sent": self.wire_sent,
            "wire_bytes_received": self.wire_received,
            "path": self.path,
            "relay_bytes": self.relay_bytes,
            **({"compression_ratio": round(self.compression, 3)} if self.compression is not None else {}),
            **({"streams": self.streams} if self.streams else {}),
        }
