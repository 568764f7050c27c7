"""Round-trip estimation and liveness: the two clocks of a connection.

Both take ``now`` as an argument; nothing here reads a clock.
"""

from __future__ import annotations


class RetransmitTimer:
    """RFC 6298 retransmission timeout with Karn's rule and exponential backoff.

    The floor is high compared with loopback RTTs because on top of TCP a
    timeout only ever fires for a stalled or broken path, and a spurious resend
    costs a whole chunk.
    """

    def __init__(self, initial_s: float = 3.0, floor_s: float = 1.0, cap_s: float = 60.0) -> None:
        self.floor_s = floor_s
        self.cap_s = cap_s
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self._base_rto_s = initial_s
        self.backoff = 1

    @property
    def rto_s(self) -> float:
        return min(self.cap_s, max(self.floor_s, self._base_rto_s) * self.backoff)

    def sample(self, rtt_s: float) -> None:
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = rtt_s, rtt_s / 2
        else:
            self.rttvar_s = 0.75 * self.rttvar_s + 0.25 * abs(self.srtt_s - rtt_s)
            self.srtt_s = 0.875 * self.srtt_s + 0.125 * rtt_s
        self._base_rto_s = self.srtt_s + 4 * self.rttvar_s

    def progress(self) -> None:
        """New data was acknowledged: the path works, forget past backoff."""
        self.backoff = 1

    def expired(self) -> None:
        self.backoff = min(self.backoff * 2, 64)


class Liveness:
    """Heartbeat schedule and dead-peer detection.

    We send a PING when we have been quiet for a quarter of the timeout, so a
    healthy but idle peer always hears from us well before it gives up.
    """

    def __init__(self, now: float, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.heartbeat_s = max(0.05, min(timeout_s / 4, 5.0))
        self.last_received = now
        self.last_sent = now

    def received(self, now: float) -> None:
        self.last_received = now

    def sent(self, now: float) -> None:
        self.last_sent = now

    def ping_due(self, now: float) -> bool:
        return now - self.last_sent >= self.heartbeat_s

    def peer_silent_s(self, now: float) -> float:
        return now - self.last_received

    def peer_dead(self, now: float) -> bool:
        return self.peer_silent_s(now) > self.timeout_s

    def deadline(self) -> float:
        return min(self.last_received + self.timeout_s, self.last_sent + self.heartbeat_s)
