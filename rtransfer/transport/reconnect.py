"""The one reconnect loop: open a connection from the source, serve it, and when it breaks
decide whether another is worth it and when, under the transfer's one RetryPolicy.

Every caller (the sender's first connection and its further ones, the receiver) goes through
here, whatever the source: so the policy, the messages and the give-up rule are the same
for a dial, a listener, and the sources to come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rtransfer.errors import NetworkError, RtransferError, reason
from rtransfer.transport.retry import Backoff
from rtransfer.transport.source import WaitedOut, Way

C = TypeVar("C", bound=asyncio.BaseProtocol)
T = TypeVar("T")


class Moved(RtransferError):
    """Not a failure: the work goes on over another path, which the source now has (a relayed
    connection found a direct one). The loop opens the next connection at once, untold."""

    def __init__(self) -> None:
        super().__init__("the transfer moved to a direct connection")


class Outage:
    """One outage under the policy, and what the user is told of it: each broken connection
    (``broken``), and once per outage that the peer cannot be reached (``unreachable``),
    instead of a line per attempt. ``peer`` names the other side; the source's ``hint`` says
    what to check when it cannot be reached."""

    def __init__(self, backoff: Backoff, say: Callable[[str], None], peer: str = "the peer") -> None:
        self.backoff = backoff
        self.say = say
        self.peer = peer
        self.told_unreachable = False
        self.last: RtransferError | None = None  # what broke the last connection
        # Bumped by the caller as the work moves on: a connection that broke after moving it on
        # starts a new outage, so a long transfer's separate breaks never add up to the policy's limit.
        self.progress = 0
        self.progress_at_open = 0

    def broken(self, error: RtransferError, delay_s: float, dials: bool) -> None:
        self.last = error
        if dials:
            self.say(f"{error.message}; reconnecting in {delay_s:.1f} s (attempt {self.backoff.attempt})")
        else:
            wait_s = self.backoff.remaining_s() or 0.0
            self.say(f"{error.message}; waiting up to {wait_s:.0f} s for {self.peer} to come back")

    def unreachable(self, source: Way, error: OSError) -> None:
        if self.told_unreachable:
            return
        self.told_unreachable = True
        policy = self.backoff.policy
        self.say(
            f"waiting for {self.peer} at {source.where}: {reason(error)}; retrying for up to "
            f"{policy.max_total_s:g} s ({policy.max_attempts - 1} retries){source.hint}"
        )

    def gave_up(self, source: Way, error: OSError) -> NetworkError:
        """The final error when no connection came: what went wrong, where, and the hint."""
        if isinstance(error, WaitedOut) or not source.dials:
            waited = f"{self.peer} did not come back within {self.backoff.policy.max_total_s:.0f} s"
            if self.last is not None:
                return NetworkError(f"{self.last.message}; {waited}")
            if source.rendezvous:  # reached the meeting place, where the peer never came
                return NetworkError(f"no {self.peer.removeprefix('the ')} is waiting for that code at {source.where}")
            return NetworkError(f"{waited} to {source.where}")
        return NetworkError(f"could not connect to {source.where}: {reason(error)}{source.hint}")

    def reset(self) -> None:
        self.backoff.reset()
        self.told_unreachable = False


async def keep_connected(
    source: Way,
    make: Callable[[], C],
    serve: Callable[[C], Awaitable[T]],
    outage: Outage,
    worth_another: Callable[[RtransferError], bool],
    open_timeout_s: float,
) -> T:
    """Serve connections from ``source`` until one finishes the work. A failure that
    ``worth_another`` does not forgive, or one past the policy, is raised."""
    backoff = outage.backoff
    answered = False
    while True:
        try:
            conn = await source.open(make, open_timeout_s, backoff.remaining_s())
        except OSError as exc:
            # An open that waited for the peer waited out the outage's time itself: that is spent.
            spent = isinstance(exc, WaitedOut) or not source.dials
            wrong = source.server and not answered and isinstance(exc, ConnectionRefusedError)
            if spent or wrong or (delay := backoff.next_delay()) is None:
                raise outage.gave_up(source, exc) from None
            outage.unreachable(source, exc)
        else:
            answered = True
            outage.progress_at_open = outage.progress
            try:
                return await serve(conn)
            except Moved:
                continue
            except RtransferError as exc:
                if not worth_another(exc):
                    raise
                if outage.progress > outage.progress_at_open:
                    outage.reset()
                if (delay := backoff.next_delay()) is None:
                    raise
                outage.broken(exc, delay, source.dials)
        if source.dials:
            await asyncio.sleep(delay)
