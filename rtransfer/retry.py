"""One retry policy, exponential backoff with jitter, used by every place that retries."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_total_s: float = 30.0
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

    def next_delay(self) -> float | None:
        now = self._clock()
        if self._started is None:
            self._started = now
        self.attempt += 1
        delay = self.policy.delay_s(self.attempt, self._rand())
        if self.attempt >= self.policy.max_attempts or now - self._started + delay > self.policy.max_total_s:
            return None
        return delay


async def retry_call(
    operation: Callable[[], Awaitable[T]],
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds or ``backoff`` is spent.

    The caller owns the backoff, so that every attempt during one outage counts
    against one budget, however many layers retry.
    """
    while True:
        try:
            return await operation()
        except retry_on as exc:
            delay = backoff.next_delay()
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(backoff.attempt, exc, delay)
            await asyncio.sleep(delay)
