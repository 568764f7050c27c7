"""What the receiver decides for each batch of the file list, before any data: where each file
starts, what is already here, what must be read first (a digest to compare, an old copy to
describe)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtransfer.protocol.model import Basis


@dataclass(frozen=True)
class Plan:
    """Where each file starts: bytes already here of the same version, or whole and done.

    ``plan`` finds what the names and sizes tell; ``examine`` reads what they cannot: files of
    the same size to compare by content (``compare``, --checksum) and old copies to describe
    for a delta (``old_copies``, which it turns into ``bases``)."""

    start_offsets: dict[int, int]
    done: tuple[int, ...]
    compare: tuple[int, ...] = ()
    old_copies: tuple[int, ...] = ()
    bases: dict[int, Basis] = field(default_factory=dict)


@dataclass
class Draft:
    """A plan while a batch is walked: what resumes where, what is done, what to read first."""

    starts: dict[int, int] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    compare: list[int] = field(default_factory=list)
    old_copies: list[int] = field(default_factory=list)
    need: int = 0  # bytes still to write, against the free space
