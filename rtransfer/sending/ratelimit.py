"""Holding a transfer to a rate (``send --limit-rate``): one token bucket for the whole transfer.

Tokens are bytes, earned at the rate and saved up to ``burst_bytes`` while the sender
is idle; a chunk may leave once the bucket is not in debt, and leaving puts it in
debt by the chunk's size. The average over a transfer is therefore the rate, and
any one second carries at most the rate plus the burst plus one chunk. With the
burst and the chunk each an eighth of a second's worth (the CLI sizes chunks so),
no second goes past 1.25 times the rate. Pure: time is passed in.
"""

from __future__ import annotations

BURST_S = 0.125  # idle time that may be made up at once; also the largest chunk the CLI sends under a limit


class TokenBucket:
    def __init__(self, rate_bps: float, now: float, burst_bytes: float | None = None) -> None:
        self.rate_bps = rate_bps
        self.burst_bytes = rate_bps * BURST_S if burst_bytes is None else burst_bytes
        self._tokens = 0.0  # starts empty: the first second is no exception
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._at) * self.rate_bps)
            self._at = now

    def delay_s(self, now: float) -> float:
        """How long to wait before the next chunk may leave."""
        self._refill(now)
        return max(0.0, -self._tokens / self.rate_bps)

    def take(self, nbytes: int, now: float) -> None:
        """A chunk of ``nbytes`` left at ``now``."""
        self._refill(now)
        self._tokens -= nbytes


def chunk_under_limit(chunk_bytes: int, rate_bps: float, min_chunk_bytes: int) -> int:
    """The chunk size to use under a limit: at most an eighth of a second's worth, in 4 KiB steps."""
    cap = int(rate_bps * BURST_S) // 4096 * 4096
    return max(min_chunk_bytes, min(chunk_bytes, cap))
