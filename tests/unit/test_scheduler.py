"""The pure pieces of a transfer over several streams: the weighted scheduler and the reorder."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtransfer.protocol.errors import RemoteProtocolError
from rtransfer.protocol.reorder import Reorder
from rtransfer.session.scheduler import STALL_MIN_S, Scheduler

MB = 1_000_000
CHUNK = MB


def deal(scheduler: Scheduler, counts: dict[int, int], now: float, nbytes: int = CHUNK) -> int | None:
    stream = scheduler.pick(nbytes)
    if stream is not None:
        key = sum(counts.values())
        scheduler.sent(stream, key, nbytes, now)
        counts[stream] = counts.get(stream, 0) + 1
    return stream


def streams_of(max_chunks: int, *streams: int) -> Scheduler:
    """A scheduler holding ``max_chunks`` chunks in flight per stream, with ``streams`` added at time 0."""
    scheduler = Scheduler(max_in_flight_bytes=max_chunks * CHUNK)
    for stream in streams:
        scheduler.add(stream, 0.0)
    return scheduler


def test_weights_follow_measured_rates() -> None:
    """Two streams, one three times faster: both are measured, the fast one gets most of the chunks,
    and the slow one only those it would deliver first (a chunk never waits behind a slow stream when a
    fast one would be done sooner)."""
    rates = {0: 60 * MB, 1: 20 * MB}
    scheduler = streams_of(4, *rates)
    pipes: dict[int, deque[tuple[int, float]]] = {s: deque() for s in rates}  # key, when it will be acked
    counts: dict[int, int] = {}
    now, step = 0.0, 0.001
    for _ in range(20_000):
        now += step
        for stream, pipe in pipes.items():
            while pipe and pipe[0][1] <= now:
                scheduler.acked(stream, [pipe.popleft()[0]], now)
        while (stream := scheduler.pick(CHUNK)) is not None:
            key = sum(counts.values())
            scheduler.sent(stream, key, CHUNK, now)
            counts[stream] = counts.get(stream, 0) + 1
            start = pipes[stream][-1][1] if pipes[stream] else now
            pipes[stream].append((key, start + CHUNK / rates[stream]))
    rate0, rate1 = scheduler.rate_bps(0), scheduler.rate_bps(1)
    assert rate0 is not None and rate1 is not None
    assert 2.5 < rate0 / rate1 < 3.5  # measured, not assumed
    share = counts[0] / (counts[0] + counts[1])
    assert 0.7 < share < 0.9, counts  # ~3/4 when both keep busy


def test_a_stalled_stream_gets_no_more_chunks_and_gives_its_own_back() -> None:
    scheduler = streams_of(2, 0, 1)
    scheduler.sent(0, "a", CHUNK, 0.0)
    scheduler.sent(1, "b", CHUNK, 0.0)
    scheduler.acked(1, ["b"], 0.01)
    assert scheduler.check(STALL_MIN_S / 2) == []  # not yet: too soon to tell
    assert scheduler.check(STALL_MIN_S + 0.1) == ["a"]  # to be dealt again
    assert scheduler.is_stalled(0)
    assert {scheduler.pick(CHUNK) for _ in range(3)} == {1}
    scheduler.acked(0, ["a"], STALL_MIN_S + 1)  # it recovers: the late copy counts as progress
    assert not scheduler.is_stalled(0)


def test_limits_stop_feeding_a_stream() -> None:
    scheduler = streams_of(2, 0)
    scheduler.sent(0, 1, CHUNK, 0.0)
    scheduler.sent(0, 2, CHUNK, 0.0)
    assert scheduler.pick(CHUNK) is None  # its in-flight bytes are at the limit
    scheduler.acked(0, [1], 0.1)
    assert scheduler.pick(CHUNK) == 0
    scheduler.pause(0, True)  # the resource monitor says stop
    assert scheduler.pick(CHUNK) is None
    scheduler.pause(0, False)
    assert scheduler.pick(CHUNK) == 0


def test_a_dead_streams_chunks_come_back_to_be_dealt_again() -> None:
    scheduler = streams_of(4, 0, 1)
    scheduler.sent(0, "x", CHUNK, 0.0)
    scheduler.sent(0, "y", CHUNK, 0.0)
    assert scheduler.remove(0) == ["x", "y"]
    assert scheduler.streams == [1] and scheduler.pick(CHUNK) == 1


def test_reorder_hands_on_in_order_once_and_refuses_to_run_ahead_of_its_window() -> None:
    reorder: Reorder[str] = Reorder(window=3)
    assert reorder.add(1, "b") == ([], False)
    assert reorder.add(1, "b") == ([], True)  # dealt twice, kept once
    assert reorder.add(0, "a") == (["a", "b"], False)
    assert reorder.add(0, "a") == ([], True)
    with pytest.raises(RemoteProtocolError, match="beyond the window"):
        reorder.add(5, "f")


@dataclass
class SimStream:
    rate: float  # bytes per second
    pipe: deque[int] = field(default_factory=deque)  # keys in flight, delivered front first
    progress: float = 0.0  # bytes of the front key delivered so far
    dies_at: float | None = None
    stalls: tuple[float, float] | None = None  # from, until


streams_st = st.lists(
    st.tuples(
        st.sampled_from([0.5 * MB, 5 * MB, 50 * MB]),
        st.none() | st.floats(0.05, 3.0),  # dies at
        st.none() | st.tuples(st.floats(0.0, 2.0), st.floats(0.1, 6.0)),  # stalls from, for
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60)
@given(streams_st, st.integers(1, 40), st.integers(2, 8))
def test_every_chunk_reaches_the_writer_exactly_once_whatever_the_streams_do(
    spec: list[tuple[float, float | None, tuple[float, float] | None]], chunks: int, window: int
) -> None:
    """Streams of different speeds that die or stall at random; one survives (a transfer with none
    left fails, which is not this property). The writer gets every chunk once, in order."""
    sims = {
        i: SimStream(
            rate,
            dies_at=None if i == 0 else dies,
            stalls=None if stall is None else (stall[0], stall[0] + stall[1]),
        )
        for i, (rate, dies, stall) in enumerate(spec)
    }
    scheduler = streams_of(2, *sims)
    todo: deque[int] = deque(range(chunks))
    acked: set[int] = set()
    reorder: Reorder[int] = Reorder(window)
    written: list[int] = []
    now, step = 0.0, 0.01
    for _ in range(200_000):
        if len(written) == chunks:
            break
        now += step
        for i, sim in list(sims.items()):
            if sim.dies_at is not None and now >= sim.dies_at:
                todo.extendleft(sorted((k for k in scheduler.remove(i) if k not in acked), reverse=True))
                del sims[i]
                continue
            if sim.stalls is not None and sim.stalls[0] <= now < sim.stalls[1]:
                continue
            sim.progress += sim.rate * step
            while sim.pipe and sim.progress >= CHUNK:
                sim.progress -= CHUNK
                key = sim.pipe.popleft()
                scheduler.acked(i, [key], now)
                acked.add(key)
                written += reorder.add(key, key)[0]
            if not sim.pipe:
                sim.progress = 0.0
        again = [k for k in scheduler.check(now) if k not in acked]
        todo.extendleft(sorted(set(again) - set(todo), reverse=True))
        while todo and todo[0] < reorder.next + window:
            if todo[0] in acked:
                todo.popleft()
                continue
            stream = scheduler.pick(CHUNK)
            if stream is None:
                break
            key = todo.popleft()
            scheduler.sent(stream, key, CHUNK, now)
            sims[stream].pipe.append(key)
    assert written == list(range(chunks))


def measure_once(scheduler: Scheduler, rates: dict[int, float]) -> None:
    """One chunk delivered on each stream at its rate: each has a measurement."""
    for stream, rate in rates.items():
        scheduler.sent(stream, ("probe", stream), CHUNK, 0.0)
        scheduler.acked(stream, [("probe", stream)], CHUNK / rate)


def test_a_stream_ten_times_slower_gets_no_chunk_a_fast_one_would_deliver_sooner() -> None:
    scheduler = streams_of(2, 0, 1)
    measure_once(scheduler, {0: 100 * MB, 1: 10 * MB})
    scheduler.sent(0, "a", CHUNK, 1.0)
    assert scheduler.pick(CHUNK) == 0  # 2 MB at 100 MB/s beats 1 MB at 10 MB/s
    scheduler.sent(0, "b", CHUNK, 1.0)
    assert scheduler.pick(CHUNK) is None  # the fast one is full, and still far sooner: wait for it


def test_streams_about_as_fast_are_all_used_whatever_the_noise_in_their_rates() -> None:
    scheduler = streams_of(2, 0, 1)
    measure_once(scheduler, {0: 30 * MB, 1: 20 * MB})  # equal links, measured unequally
    scheduler.sent(0, "a", CHUNK, 1.0)
    scheduler.sent(0, "b", CHUNK, 1.0)
    assert scheduler.pick(CHUNK) == 1  # not worth waiting for the first
