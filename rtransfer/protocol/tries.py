"""The tries at a direct path on one relayed connection, as its frames show them.

The receiver opens each try (HINTS with addresses: where it listens, and where its NAT maps
the ports it punches from); the sender answers it once (HINTS); where both gave punching
ports, the receiver says when to punch (PUNCH); the sender ends the try, by moving the
transfer (GO_DIRECT) or with an empty HINTS. An empty HINTS from the receiver says only that
its own dials failed, or, with no try open, that it will not try at all. One try at a time,
at most MAX_TRIES on a connection: a peer cannot make this side dial without end.
"""

from __future__ import annotations

from enum import Enum

from rtransfer.protocol.errors import LocalProtocolError, RemoteProtocolError
from rtransfer.protocol.messages import Hints

MAX_TRIES = 32  # on one relayed connection; the receiver's own policy tries fewer (session/going_direct.py)


class Step(Enum):
    IDLE = "idle"  # no try open
    OFFERED = "offered"  # the receiver's HINTS is out
    ANSWERED = "answered"  # and the sender's answer
    PUNCHING = "punching"  # and the receiver's PUNCH


_OPEN = (Step.ANSWERED, Step.PUNCHING)


class DirectTries:
    """One side's view of the tries; each call checks a frame against it and moves it on."""

    def __init__(self, is_sender: bool) -> None:
        self.is_sender = is_sender
        self.step = Step.IDLE
        self.tries = 0
        self.punches = 0  # PUNCH frames, each of its own try
        self._punchable = False  # both sides gave punching ports in this try

    # --- the receiver's frames ---------------------------------------------------
    def receiver_hints(self, hints: Hints, local: bool) -> None:
        """HINTS from the receiver: sent by this side (``local``) or received by the sender."""
        error = LocalProtocolError if local else RemoteProtocolError
        if not hints.addresses and not hints.punch:
            return  # its dials failed, or it will not try: nothing changes here
        if self.step is not Step.IDLE:
            raise error("HINTS open a try at a direct path while one is open")
        if self.tries >= MAX_TRIES:
            raise error(f"more than {MAX_TRIES} tries at a direct path on one connection")
        self.tries += 1
        self.step = Step.OFFERED
        self._punchable = bool(hints.punch)

    def punch(self, local: bool) -> bool:
        """PUNCH: whether it belongs to the open try. A sender that ended the try meanwhile
        (the frames crossed) ignores it; one more PUNCH than tries is a protocol error."""
        if self.step is Step.ANSWERED and self._punchable:
            self.step = Step.PUNCHING
            self.punches += 1
            return True
        if local or self.punches >= self.tries:
            raise (LocalProtocolError if local else RemoteProtocolError)(f"PUNCH while the try is {self.step.value}")
        self.punches += 1
        return False

    @property
    def punchable(self) -> bool:
        """The open try may be punched: both sides gave punching ports, and it is answered."""
        return self.step is Step.ANSWERED and self._punchable

    # --- the sender's frames -----------------------------------------------------
    def sender_hints(self, hints: Hints, local: bool) -> None:
        """HINTS from the sender: its answer to the open try, or (empty) the end of it."""
        error = LocalProtocolError if local else RemoteProtocolError
        empty = not hints.addresses and not hints.punch
        if self.step is Step.OFFERED:
            self.step = Step.IDLE if empty else Step.ANSWERED
            self._punchable = self._punchable and bool(hints.punch)
        elif self.step in _OPEN and empty:
            self.step = Step.IDLE
        else:
            raise error(f"HINTS from the sender while the try is {self.step.value}")

    def go_direct(self, local: bool) -> None:
        """GO_DIRECT names a connection of the open try, and ends it."""
        if self.step not in _OPEN:
            raise (LocalProtocolError if local else RemoteProtocolError)(
                "GO_DIRECT names a direct connection this side never offered"
            )
        self.step = Step.IDLE

    def hints(self, hints: Hints, local: bool) -> None:
        """A HINTS frame, sent (``local``) or received, by whichever side sent it."""
        from_sender = self.is_sender == local
        (self.sender_hints if from_sender else self.receiver_hints)(hints, local)
