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

from msgspec import Struct, field

RATE_GAIN = 0.25  # weight of each new delivery-rate sample
PRIOR_RATE_BPS = 1e9  # a stream not yet measured is assumed fast, so it gets tried
STALL_MIN_S = 2.0  # never call a stream stalled sooner than this after its last progress
STALL_FACTOR = 4.0  # ... nor before this many times what its bytes in flight should take
WAIT_MARGIN = 2.0  # a chunk waits for a busy stream only if that beats the best free one by this factor
HEDGE_FACTOR = 4.0  # a chunk the transfer waits for is sent again elsewhere once this late
HEDGE_MIN_S = 0.25  # ... and never sooner than this

Key = Hashable


class _Stream(Struct):
    rate_bps: float | None = None
    in_flight: dict[Key, int] = field(default_factory=dict)  # key -> bytes, oldest first
    sent_at: dict[Key, float] = field(default_factory=dict)
    # As BBR measures delivery rate: when a chunk leaves, note how much the stream had delivered and
    # when; its ACK then samples everything delivered over its whole flight, so two ACKs that arrive
    # together do not read as a burst of infinite speed.
    delivered: int = 0
    delivered_at: float = 0.0
    marks: dict[Key, tuple[int, float]] = field(default_factory=dict)
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
        """The stream that would deliver ``nbytes`` soonest, or None to wait.

        A stream at its in-flight limit still counts: if it would deliver much sooner, once what
        it carries has gone, than any free one could, the chunk waits for it. So a slow stream is
        used only when it would be about as soon; otherwise each chunk it took would hold the
        receiver's reorder, and with it every other stream, until it came through."""
        best = ready = None
        best_eta = ready_eta = 0.0
        for stream, s in self._streams.items():
            if s.stalled or s.paused:
                continue
            carried = s.bytes_in_flight
            eta = (carried + nbytes) / self._rate(s)
            if best is None or eta < best_eta:
                best, best_eta = stream, eta
            if not (carried and carried + nbytes > self.max_in_flight_bytes) and (ready is None or eta < ready_eta):
                ready, ready_eta = stream, eta
        # Rates measured from ACKs are noisy: wait for a full stream only if it is clearly sooner.
        return ready if ready is not None and ready_eta <= WAIT_MARGIN * best_eta else None

    def sent(self, stream: int, key: Key, nbytes: int, now: float) -> None:
        s = self._streams[stream]
        if not s.in_flight:
            s.delivered_at = now  # idle until now: its flight starts here
            s.last_progress = now
        s.in_flight[key] = nbytes
        s.sent_at[key] = now
        s.marks[key] = (s.delivered, s.delivered_at)

    def acked(self, stream: int, keys: Iterable[Key], now: float) -> None:
        """The stream's peer acknowledged ``keys``: one delivery-rate sample, and the stream is
        making progress again if it was stalled."""
        s = self._streams.get(stream)
        if s is None:
            return
        mark: tuple[int, float] | None = None
        for key in keys:
            nbytes = s.in_flight.pop(key, 0)
            s.sent_at.pop(key, None)
            if nbytes:
                s.delivered += nbytes
                mark = s.marks.pop(key)
        if mark is None:
            return
        before, since = mark
        if now > since:
            sample = (s.delivered - before) / (now - since)
            s.rate_bps = sample if s.rate_bps is None else s.rate_bps + RATE_GAIN * (sample - s.rate_bps)
        s.delivered_at = now
        s.last_progress = now
        s.stalled = False

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

    def late(self, key: Key, now: float) -> int | None:
        """If the transfer waits for ``key`` and it has been in flight far longer than the fastest
        stream would take to deliver it, another stream to send it on as well (else None).

        This is what keeps one slow stream from holding the others back: the receiver writes in
        order, so everything behind that chunk waits for it."""
        holder = next((stream for stream, s in self._streams.items() if key in s.in_flight), None)
        if holder is None:
            return None
        h = self._streams[holder]
        nbytes, waited = h.in_flight[key], now - h.sent_at[key]
        others = [
            (stream, s) for stream, s in self._streams.items() if stream != holder and not (s.stalled or s.paused)
        ]
        if not others:
            return None
        fastest = max(self._rate(s) for _, s in others)
        slower = h.stalled or h.rate_bps is None or h.rate_bps * 2 < fastest  # not just noise between equals
        if not slower or waited <= max(HEDGE_MIN_S, HEDGE_FACTOR * nbytes / fastest):
            return None
        _, stream, s = min(((s.bytes_in_flight + nbytes) / self._rate(s), stream, s) for stream, s in others)
        return None if s.in_flight and s.bytes_in_flight + nbytes > self.max_in_flight_bytes else stream

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
