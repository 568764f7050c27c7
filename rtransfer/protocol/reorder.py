"""Chunks that arrive over several streams, handed on in transfer order, each exactly once.

The sender numbers chunks in the order the writer needs them; each stream delivers
its own chunks in order, but streams overtake each other. What arrives ahead of the
next needed number waits here, at most ``window`` chunks beyond it (the sender never
sends further ahead), so the writer still appends and hashes each file front to back
and a partial file stays a prefix of its source. A number already handed on, or
already waiting, is a duplicate (a chunk dealt again after its stream stalled) and
is dropped.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from rtransfer.protocol.errors import RemoteProtocolError

T = TypeVar("T")


class Reorder(Generic[T]):
    def __init__(self, window: int, first: int = 0) -> None:
        self.window = window
        self.next = first
        self._waiting: dict[int, T] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, number: int, item: T) -> tuple[list[T], bool]:
        """Returns the items now in order, and whether ``item`` was a duplicate (not kept)."""
        if number < self.next or number in self._waiting:
            return [], True
        if number >= self.next + self.window:
            raise RemoteProtocolError(f"chunk {number} is beyond the window starting at {self.next}")
        self._waiting[number] = item
        ready: list[T] = []
        while self.next in self._waiting:
            ready.append(self._waiting.pop(self.next))
            self.next += 1
        return ready, False

    def held(self) -> list[T]:
        """What waits out of order (for the driver to recycle its buffers when it gives up)."""
        return list(self._waiting.values())
