from __future__ import annotations

import asyncio
import io
import socket

import pytest

from rtransfer.retry import Backoff, RetryPolicy, retry_call


def test_delays_grow_exponentially_up_to_the_cap_with_jitter_below() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, jitter=0.5)
    assert [policy.delay_s(n, 0.0) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.delay_s(3, 0.999) == pytest.approx(0.4 * 0.5, rel=0.01)


async def test_retry_call_stops_after_max_attempts() -> None:
    calls = []

    async def failing() -> None:
        calls.append(1)
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        await retry_call(failing, Backoff(RetryPolicy(max_attempts=3, base_delay_s=0.001)), (OSError,))
    assert len(calls) == 3


async def test_retry_call_returns_the_first_success() -> None:
    results = iter([OSError(), OSError(), "ok"])

    async def flaky() -> str:
        r = next(results)
        if isinstance(r, Exception):
            raise r
        return r

    assert await retry_call(flaky, Backoff(RetryPolicy(base_delay_s=0.001)), (OSError,)) == "ok"


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

    from rtransfer import cli

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
    from rtransfer.errors import NetworkError, UnknownHost
    from rtransfer.report import JsonReporter
    from rtransfer.session.connection import connect

    calls = []

    async def resolve_fails(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise socket.gaierror(error, "resolution failed")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", resolve_fails)
    backoff = Backoff(RetryPolicy(max_attempts=3, base_delay_s=0.001))
    reporter = JsonReporter(io.StringIO())
    with pytest.raises(NetworkError, match=r"could not connect to nowhere\.invalid:9: resolution failed") as raised:
        await connect("nowhere.invalid", 9, 1.0, backoff, reporter, lambda: None)  # type: ignore[arg-type,return-value]
    assert isinstance(raised.value, UnknownHost) is final
    assert len(calls) == calls_made
