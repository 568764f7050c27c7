from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from rtransfer.errors import NetworkError, UnknownHost
from rtransfer.transport.reconnect import Outage, keep_connected
from rtransfer.transport.retry import Backoff, RetryPolicy
from rtransfer.transport.source import Dial, Way


def test_delays_grow_exponentially_up_to_the_cap_with_jitter_below() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, jitter=0.5)
    assert [policy.delay_s(n, 0.0) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.delay_s(3, 0.999) == pytest.approx(0.4 * 0.5, rel=0.01)


class Refusing(Way):
    """A way whose first ``failures`` opens are refused, then hands out ``conn``."""

    where = "peer.example:9"
    hint = " (hint)"

    def __init__(self, failures: int, conn: object = "conn") -> None:
        self.failures = failures
        self.conn = conn
        self.opens = 0

    async def open(self, make: object, timeout_s: float | None, wait_s: float | None) -> object:  # type: ignore[override]
        self.opens += 1
        if self.opens <= self.failures:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.conn


def outage(said: list[str], **policy: float) -> Outage:
    return Outage(Backoff(RetryPolicy(base_delay_s=0.001, **policy)), said.append, "the receiver")  # type: ignore[arg-type]


async def serve_ok(conn: object) -> str:
    return f"served {conn}"


async def test_an_unreachable_peer_is_said_once_and_the_final_error_carries_the_hint() -> None:
    said: list[str] = []
    source = Refusing(failures=10)
    with pytest.raises(NetworkError, match=r"could not connect to peer\.example:9: connection refused \(hint\)"):
        await keep_connected(source, object, serve_ok, outage(said, max_attempts=3), lambda e: True, 1.0)  # type: ignore[arg-type]
    assert source.opens == 3
    assert said == [
        "waiting for the receiver at peer.example:9: connection refused; retrying for up to 60 s (2 retries) (hint)"
    ]


async def test_the_loop_returns_the_first_served_connection() -> None:
    source = Refusing(failures=2)
    assert await keep_connected(source, object, serve_ok, outage([]), lambda e: True, 1.0) == "served conn"  # type: ignore[arg-type]


async def test_a_broken_connection_is_served_again_only_when_worth_it() -> None:
    breaks = iter([NetworkError("reset"), NetworkError("reset")])

    async def serve(conn: object) -> str:
        if (error := next(breaks, None)) is not None:
            raise error
        return "done"

    said: list[str] = []
    assert await keep_connected(Refusing(0), object, serve, outage(said), lambda e: True, 1.0) == "done"  # type: ignore[arg-type]
    assert len(said) == 2 and all("reset; reconnecting in" in s for s in said)
    with pytest.raises(NetworkError, match="reset"):
        await keep_connected(Refusing(0), object, serve_again(), outage([]), lambda e: False, 1.0)  # type: ignore[arg-type]


async def test_breaks_that_each_moved_the_work_on_never_add_up_to_the_policys_limit() -> None:
    """A long transfer may break many times; only breaks without progress between them are one outage."""
    said: list[str] = []
    lasting = outage(said, max_attempts=3)
    breaks = iter(range(5))

    async def moves_then_breaks(conn: object) -> str:
        if next(breaks, None) is None:
            return "done"
        lasting.progress += 1
        raise NetworkError("reset")

    assert await keep_connected(Refusing(0), object, moves_then_breaks, lasting, lambda e: True, 1.0) == "done"  # type: ignore[arg-type]
    assert all("(attempt 1)" in line for line in said) and len(said) == 5


def serve_again() -> Callable[[object], Awaitable[str]]:
    async def serve(conn: object) -> str:
        raise NetworkError("reset")

    return serve


def test_backoff_gives_up_after_the_policys_time_and_resets_on_progress() -> None:
    clock = [0.0]
    backoff = Backoff(
        RetryPolicy(max_attempts=100, max_total_s=10.0, base_delay_s=1.0, max_delay_s=4.0),
        lambda: clock[0],
        lambda: 0.0,
    )
    delays = []
    while (d := backoff.next_delay()) is not None:
        delays.append(d)
        clock[0] += d
    assert delays == [1.0, 2.0, 4.0] and clock[0] == 7.0  # the next 4 s wait would pass 10 s
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_the_default_send_policy_rides_out_a_30_second_outage() -> None:
    """What the README and rtransfer-send(1) promise, even when jitter gives the shortest delays."""
    import inspect

    from rtransfer.cli import commands as cli

    params = inspect.signature(cli.send).parameters
    policy = RetryPolicy.for_retries(params["retries"].default, params["retry_max_seconds"].default)
    clock = [0.0]
    backoff = Backoff(policy, lambda: clock[0], lambda: 0.999)
    while clock[0] <= 30.0:
        delay = backoff.next_delay()
        assert delay is not None, f"gave up after {clock[0]:.1f} s ({backoff.attempt} attempts)"
        clock[0] += delay


@pytest.mark.parametrize(
    ("error", "calls_made", "final"),
    [(socket.EAI_NONAME, 1, True), (socket.EAI_AGAIN, 3, False)],  # no such name; a resolver down for now
)
async def test_a_name_that_does_not_resolve_is_final_a_resolver_failure_is_retried(
    monkeypatch: pytest.MonkeyPatch, error: int, calls_made: int, final: bool
) -> None:
    calls = []

    async def resolve_fails(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise socket.gaierror(error, "resolution failed")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve_fails)
    with pytest.raises(NetworkError, match=r"could not connect to nowhere\.invalid:9: resolution failed") as raised:
        await keep_connected(
            Dial("nowhere.invalid", 9), object, serve_ok, outage([], max_attempts=3), lambda e: True, 1.0
        )  # type: ignore[arg-type]
    assert isinstance(raised.value, UnknownHost) is final
    assert len(calls) == calls_made


def test_the_retry_defaults_live_in_one_place() -> None:
    from rtransfer.cli.options import DEFAULT_RETRIES, DEFAULT_RETRY_MAX_S

    assert RetryPolicy() == RetryPolicy.for_retries(DEFAULT_RETRIES, DEFAULT_RETRY_MAX_S)
