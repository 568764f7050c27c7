"""The token bucket behind --limit-rate, in simulated time: the average is the rate, and no
second carries more than 1.25 times it, whatever the pauses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rtransfer.sending.ratelimit import TokenBucket, chunk_under_limit

MIN_CHUNK = 4096


def send_all(rate: float, sizes: list[int], pauses: list[float]) -> list[tuple[float, int]]:
    """When each chunk leaves, with the sender pausing (idle) before some of them."""
    bucket = TokenBucket(rate, 0.0)
    now, sent = 0.0, []
    for size, pause in zip(sizes, pauses, strict=True):
        now += pause
        now += bucket.delay_s(now)
        bucket.take(size, now)
        sent.append((now, size))
    return sent


@settings(max_examples=200)
@given(
    st.sampled_from([64 * 1024, 1 << 20, 20 << 20, 100 << 20]),
    st.lists(st.tuples(st.floats(0.05, 1.0), st.sampled_from([0.0, 0.0, 0.0, 0.3, 2.0])), min_size=1, max_size=300),
)
def test_no_second_carries_more_than_one_and_a_quarter_times_the_rate(
    rate: int, chunks: list[tuple[float, float]]
) -> None:
    chunk = chunk_under_limit(8 << 20, rate, MIN_CHUNK)
    sizes = [max(1, int(chunk * fraction)) for fraction, _ in chunks]
    sent = send_all(rate, sizes, [pause for _, pause in chunks])
    for start, _ in sent:  # the worst one-second window starts at a send
        in_window = sum(size for at, size in sent if start <= at < start + 1.0)
        assert in_window <= 1.25 * rate + 1, (start, in_window / rate)


def test_a_long_transfer_averages_the_rate() -> None:
    rate = 20 << 20
    chunk = chunk_under_limit(8 << 20, rate, MIN_CHUNK)
    sent = send_all(rate, [chunk] * 400, [0.0] * 400)
    total = sum(size for _, size in sent)
    elapsed = sent[-1][0] + chunk / rate  # the last chunk's own share of time
    assert abs(total / elapsed / rate - 1) < 0.01


def test_chunks_shrink_to_an_eighth_of_a_second_under_a_limit() -> None:
    assert chunk_under_limit(8 << 20, 20 << 20, MIN_CHUNK) == 20 << 20 >> 3
    assert chunk_under_limit(8 << 20, 1 << 30, MIN_CHUNK) == 8 << 20  # a high limit leaves them alone
    assert chunk_under_limit(8 << 20, 1000, MIN_CHUNK) == MIN_CHUNK
