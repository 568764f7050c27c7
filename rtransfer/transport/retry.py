"""One retry policy, exponential backoff with jitter, used by every place that retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from msgspec import Struct


class RetryPolicy(Struct, frozen=True):
    max_attempts: int = 21  # 20 retries after the first attempt: the CLI's --retries default
    max_total_s: float = 60.0
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    jitter: float = 0.5  # each delay is scaled by a random factor in [1 - jitter, 1]

    @classmethod
    def for_retries(cls, retries: int, max_total_s: float) -> RetryPolicy:
        """The policy behind ``--retries N --retry-max-seconds S``: N retries after the first attempt."""
        return cls(max_attempts=retries + 1, max_total_s=max_total_s)

    def delay_s(self, attempt: int, rand: float) -> float:
        """Delay before retry number ``attempt`` (1-based); ``rand`` in [0, 1)."""
        raw = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return raw * (1 - self.jitter * rand)


class Backoff:
    """One outage under a policy: how many attempts so far, and since when.

    ``next_delay`` gives the wait before the next attempt, or None when the
    policy's attempts or time are spent; ``reset`` after progress starts afresh.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self.attempt = 0
        self._started: float | None = None

    def reset(self) -> None:
        self.attempt = 0
        self._started = None

    def remaining_s(self) -> float | None:
        """Time left in this outage; None before it started (nothing has failed yet)."""
        if self._started is None:
            return None
        return max(0.0, self.policy.max_total_s - (self._clock() - self._started))

    def next_delay(self) -> float | None:
        now = self._clock()
        if self._started is None:
            self._started = now
        self.attempt += 1
        delay = self.policy.delay_s(self.attempt, self._rand())
        if self.attempt >= self.policy.max_attempts or now - self._started + delay > self.policy.max_total_s:
            return None
        return delay
