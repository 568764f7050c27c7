"""The live line at any width: what matters least goes first (report/live_line.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtransfer.report.live_line import layout
from rtransfer.stats import TransferStats

MIB = 1 << 20


def stats(**counters: int) -> TransferStats:
    return TransferStats("recv", total_bytes=512 * MIB, bytes_done=123 * MIB, files_total=3, relayed=True, **counters)


def shown(width: int, st_: TransferStats, outage_s: float | None = None) -> str:
    line = layout(st_, 2 * MIB, width, outage_s)
    return f"{line.left} {'━' * line.bar} {line.right}"


@given(st.integers(60, 300), st.integers(0, 3), st.integers(0, 3), st.integers(0, 50))
def test_bytes_rate_and_time_left_are_never_dropped_and_the_line_fits(
    width: int, retx: int, bad: int, fly: int
) -> None:
    """At 80 columns rich cut the bytes and the time left, and kept "0 in flight · 0 retx"."""
    line = layout(stats(retransmits=retx, integrity_failures=bad, in_flight=fly), 2 * MIB, width)
    assert len(line.left) + len(line.right) + (line.bar + 2 if line.bar else 0) <= width
    assert "123.0/512.0 MiB" in line.right and "2.0 MiB/s" in line.right and "0:03:14" in line.right


def test_zero_counters_go_first_then_names_and_counters_that_say_something_last() -> None:
    wide = shown(200, stats())
    assert "0 retx" in wide and "receiving via relay" in wide
    at_80 = shown(80, stats())
    assert "0 retx" not in at_80 and "via relay" in at_80
    troubled = shown(70, stats(retransmits=3))
    assert "3 retx" in troubled and "receiving" not in troubled


def test_an_outage_says_how_long_instead_of_a_rate_it_no_longer_has() -> None:
    line = layout(stats(reconnects=1), 2 * MIB, 80, outage_s=12.4)
    assert "reconnecting, 12 s" in line.right and "MiB/s" not in line.right and "-:--:--" in line.right
