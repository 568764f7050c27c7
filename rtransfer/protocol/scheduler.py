"""Which stream carries the next chunk, when one transfer runs over several connections.

Each stream's delivery rate is measured from its acknowledgements: bytes acknowledged
per second while it had data in flight, smoothed. A chunk goes to the stream that
would finish it first given what that stream already carries (its bytes in flight
plus the chunk, over its rate), so a stream ten times faster gets about ten times the
chunks, and plain round-robin's trap, where the slowest stream sets the pace, is
avoided. A stream that stops acknowledging is marked stalled and gets nothing more;
its chunks come back to be dealt to the others (if it recovers, its late copies are
duplicates, which the receiver drops). A stream the resource monitor pauses, or whose
in-flight bytes are at the limit, is skipped.

Pure, like the protocol machines: time is passed in; nothing here sends or waits.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

RATE_GAIN = 0.25  # weight of each new delivery-rate sample
PRIOR_RATE_BPS = 1e9  # a stream not yet measured is assumed fast, so it gets tried
STALL_MIN_S = 2.0  # never call a stream stalled sooner than this after its last progress
STALL_FACTOR = 4.0  # ... nor before this many times what its bytes in flight should take

Key = Hashable


@dataclass
class _Stream:
    rate_bps: float | None = None
    in_flight: dict[Key, int] = field(default_factory=dict)  # key -> bytes, oldest first
    busy_since: float | None = None  # when it last went from nothing in flight to something
    last_progress: float = 0.0
    stalled: bool = False
    paused: bool = False

    @property
    def bytes_in_flight(self) -> int:
        return sum(self.in_flight.values())


class Scheduler:
    def __init__(self, max_in_flight_bytes: int) -> None:
        self.max_in_flight_bytes = max_in_flight_bytes
        self._streams: dict[int, _Stream] = {}

    # --- the set of streams -------------------------------------------------------
    def add(self, stream: int, now: float) -> None:
        self._streams[stream] = _Stream(last_progress=now)

    def remove(self, stream: int) -> list[Key]:
        """The stream is gone (past its retries, or closed): its unacknowledged chunks, to deal again."""
        gone = self._streams.pop(stream)
        return list(gone.in_flight)

    def pause(self, stream: int, paused: bool) -> None:
        """Stop (or resume) feeding a stream, e.g. while its process is near a resource limit."""
        self._streams[stream].paused = paused

    @property
    def streams(self) -> list[int]:
        return list(self._streams)

    # --- dealing --------------------------------------------------------------------
    def pick(self, nbytes: int) -> int | None:
        """The stream that would deliver ``nbytes`` soonest, or None if none can take a chunk now."""
        best, best_eta = None, 0.0
        for stream, s in self._streams.items():
            if s.stalled or s.paused:
                continue
            carried = s.bytes_in_flight
            if carried and carried + nbytes > self.max_in_flight_bytes:
                continue
            eta = (carried + nbytes) / self._rate(s)
            if best is None or eta < best_eta:
                best, best_eta = stream, eta
        return best

    def sent(self, stream: int, key: Key, nbytes: int, now: float) -> None:
        s = self._streams[stream]
        if not s.in_flight:
            s.busy_since = now
            s.last_progress = now
        s.in_flight[key] = nbytes

    def acked(self, stream: int, keys: Iterable[Key], now: float) -> None:
        """The stream's peer acknowledged ``keys``: one delivery-rate sample, and the stream is
        making progress again if it was stalled."""
        s = self._streams.get(stream)
        if s is None:
            return
        delivered = sum(s.in_flight.pop(key, 0) for key in keys)
        if not delivered:
            return
        start = max(s.last_progress, s.busy_since if s.busy_since is not None else now)
        if now > start:
            sample = delivered / (now - start)
            s.rate_bps = sample if s.rate_bps is None else s.rate_bps + RATE_GAIN * (sample - s.rate_bps)
        s.last_progress = now
        s.stalled = False
        if not s.in_flight:
            s.busy_since = None

    def check(self, now: float) -> list[Key]:
        """Streams that stopped acknowledging are stalled from now on: their chunks, to deal again."""
        moved: list[Key] = []
        for s in self._streams.values():
            if s.stalled or not s.in_flight:
                continue
            expected_s = s.bytes_in_flight / self._rate(s)
            if now - s.last_progress > max(STALL_MIN_S, STALL_FACTOR * expected_s):
                s.stalled = True
                moved += s.in_flight
        return moved

    # --- what the resource monitor and the display read ------------------------------
    def rate_bps(self, stream: int) -> float | None:
        return self._streams[stream].rate_bps

    def bytes_in_flight(self, stream: int) -> int:
        return self._streams[stream].bytes_in_flight

    def is_stalled(self, stream: int) -> bool:
        return self._streams[stream].stalled

    def _rate(self, s: _Stream) -> float:
        if s.rate_bps is not None:
            return max(s.rate_bps, 1.0)
        measured = [t.rate_bps for t in self._streams.values() if t.rate_bps is not None]
        return max(measured) if measured else PRIOR_RATE_BPS
