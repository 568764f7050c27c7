"""The live display's one line, fitted to the terminal's width (the package draws it).

Bytes done and total, the rate (or, during an outage, how long it has lasted) and the time left
are never dropped. Before them go, first to last: counters that are zero, the verb, the bar (it
shrinks to BAR_MIN first), the path's name, what is in flight and the connections, the files, and
the counters that are not zero (they say something went wrong)."""

from __future__ import annotations

from msgspec import Struct

from rtransfer.stats import TransferStats

BAR_MIN = 10
BAR_MAX = 40
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


class Line(Struct, frozen=True):
    left: str  # names, before the bar
    bar: int  # the bar's width; 0: none
    right: str  # the numbers, after it


class _Extra(Struct, frozen=True):
    drop: int  # the highest goes first
    left: bool
    text: str


def layout(stats: TransferStats, speed: float | None, width: int, outage_s: float | None = None) -> Line:
    """The line for ``stats`` at ``width`` columns; ``speed`` in bytes/s (None: not known yet);
    ``outage_s``: how long the transfer has been without a connection."""
    rate = f"reconnecting, {outage_s:.0f} s" if outage_s is not None else _rate(speed)
    essential = "  ".join(part for part in (_sizes(stats), rate, _left(stats, None if outage_s else speed)) if part)
    extras = [
        _Extra(7, True, "sending" if stats.role == "send" else "receiving"),
        _Extra(5, True, _path(stats)),
        _Extra(4, False, f"{stats.in_flight} in flight" if stats.in_flight else ""),
        _Extra(4, False, _streams(stats.streams)),
        _Extra(3, False, f"{stats.files_done}/{stats.files_total}{'+' if stats.listing else ''} files"),
    ]
    for count, name in (
        (stats.retransmits, "retx"),
        (stats.integrity_failures, "bad"),
        (stats.reconnects, "reconnects"),
    ):
        extras.append(_Extra(2 if count else 9, False, f"{count} {name}"))
    kept = [e for e in extras if e.text]
    bar = True
    while kept or bar:
        line = _line(essential, kept, bar, width)
        if len(line.left) + len(line.right) + (line.bar + 2 if bar else 0) <= width:
            return line
        worst = max(kept, key=lambda e: e.drop, default=None)
        if bar and (worst is None or worst.drop < 6):
            bar = False
        else:
            assert worst is not None
            kept.remove(worst)
    return Line("", 0, essential)


def _line(essential: str, kept: list[_Extra], bar: bool, width: int) -> Line:
    left = " ".join(e.text for e in kept if e.left)
    right = " · ".join([essential, *(e.text for e in kept if not e.left)])
    room = width - len(left) - len(right) - 2
    return Line(left, max(BAR_MIN, min(BAR_MAX, room)) if bar else 0, right)


def _sizes(stats: TransferStats) -> str:
    """Done and total in the total's binary unit ("5.0/10.0 MiB"), as rich's DownloadColumn says it."""
    done, total = stats.bytes_done, stats.total_bytes
    scale: float = max(done, total or 0)
    power = 0
    while scale >= 1024 and power < len(_UNITS) - 1:
        scale /= 1024
        power += 1
    unit = 1024**power
    if power == 0:
        return f"{done}/{total} B" if total is not None else f"{done} B"
    shown = f"{done / unit:.1f}/{total / unit:.1f}" if total is not None else f"{done / unit:.1f}"
    return f"{shown} {_UNITS[power]}"


def human_bytes(n: float) -> str:
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _rate(speed: float | None) -> str:
    return f"{human_bytes(speed)}/s" if speed else "-- B/s"


def _left(stats: TransferStats, speed: float | None) -> str:
    """The time left, h:mm:ss, as rich's TimeRemainingColumn says it; unknown: -:--:--."""
    if not speed or stats.total_bytes is None:
        return "-:--:--"
    seconds = int(max(0, stats.total_bytes - stats.bytes_done) / speed)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _path(stats: TransferStats) -> str:
    """Through a relay, whether the bytes go through it now or direct; nothing when no relay is used."""
    if stats.relayed:
        return "via relay"
    return "direct" if stats.relay_bytes else ""


def _streams(streams: list[dict[str, object]]) -> str:
    """One line's worth about the connections: how many, their spread of rates, any stalled."""
    if not streams:
        return ""
    rates = sorted(int(str(s["rate_bps"])) for s in streams)
    stalled = sum(1 for s in streams if s["stalled"])
    paused = sum(1 for s in streams if s.get("paused"))
    spread = f"{_rate(rates[0])}–{_rate(rates[-1])} each"
    return (
        f"{len(streams)} streams, {spread}"
        + (f", {stalled} stalled" if stalled else "")
        + (f", {paused} backed up" if paused else "")
    )
