"""Every phase of a connection and which frame moves it where, in one table.

As in h11's ``_state.py``, everything that decides whether a frame is legal lives
here. A machine looks up (its track, its phase, the frame's type): a frame the
table does not list is a protocol error, and any error moves the machine to
ERROR, which refuses everything after. The track is the role, and for a sender
whether its connection is the transfer's first or a further one (JOIN, then chunks
only); a receiver's further connection takes the JOIN branch of its own table.
The machines check only a frame's contents (is this the batch we expected? was
this chunk ever sent? does this JOIN name the running transfer?).
"""

from __future__ import annotations

from rtransfer.protocol.constants import CHUNK_TYPES, FrameType, Phase, Track
from rtransfer.protocol.errors import LocalProtocolError, RemoteProtocolError

# Before CONFIRM a violation means this side cannot talk to the peer at all (wrong
# code, another version); after, the peer has proved itself and it means a bad link.
AUTHENTICATING = frozenset({Phase.GREETING, Phase.CONFIRMING})
# Data flows over this connection: the peer accepted (or this side accepted) a batch.
STARTED = frozenset({Phase.TRANSFERRING, Phase.FINISHING, Phase.CLOSED, Phase.CARRYING})

F = FrameType
_HEARTBEAT = {F.PING: None, F.PONG: None}  # None: the phase stays
_CONTROL = {**_HEARTBEAT, F.ERROR: Phase.ERROR, F.HINTS: None}  # HINTS: sealed, so only once keys are proved
_STAYS = None
_MOVES = {**_CONTROL, F.GO_DIRECT: None}  # the receiver's control frames: the sender may move the transfer
_ERROR = {**_HEARTBEAT, F.ERROR: Phase.ERROR}  # a further connection's: no HINTS, no move
_TRIES = {**_CONTROL, F.PUNCH: None}  # the sender's control frames: the receiver says when to punch

# Frames a machine of each role may *receive* in each phase, and the phase each leads to.
RECEIVED: dict[Track, dict[Phase, dict[FrameType, Phase | None]]] = {
    Track.SENDER: {
        Phase.GREETING: {F.HELLO: Phase.CONFIRMING},
        Phase.CONFIRMING: {F.CONFIRM: Phase.OFFERING},
        Phase.OFFERING: {F.ACCEPT: Phase.TRANSFERRING, F.SIGNATURE: _STAYS, **_TRIES},
        Phase.TRANSFERRING: {
            **dict.fromkeys((F.SIGNATURE, F.ACCEPT, F.ACK, F.NACK, F.FILE_RESULT, F.PACK_RESULT), _STAYS),
            **_TRIES,
        },
        Phase.FINISHING: {
            **dict.fromkeys((F.ACK, F.NACK, F.FILE_RESULT, F.PACK_RESULT), _STAYS),
            F.DONE: Phase.CLOSED,
            **_TRIES,
        },
        Phase.CLOSED: {**_HEARTBEAT},
        Phase.ERROR: {},
    },
    Track.FURTHER_SENDER: {
        Phase.GREETING: {F.HELLO: Phase.CONFIRMING},
        Phase.CONFIRMING: {F.CONFIRM: Phase.JOINING},
        Phase.JOINING: {F.JOINED: Phase.CARRYING, **_ERROR},
        Phase.CARRYING: {F.ACK: _STAYS, F.NACK: _STAYS, **_ERROR},
        Phase.ERROR: {},
    },
    Track.RECEIVER: {
        Phase.GREETING: {F.HELLO: Phase.CONFIRMING},
        Phase.CONFIRMING: {F.CONFIRM: Phase.AWAITING_MANIFEST},
        Phase.AWAITING_MANIFEST: {F.MANIFEST: Phase.PLANNING, F.JOIN: Phase.CARRYING, **_MOVES},
        Phase.PLANNING: {F.ENTRIES: _STAYS, **_MOVES},
        Phase.TRANSFERRING: {
            **dict.fromkeys((F.ENTRIES, *CHUNK_TYPES, F.FILE_END), _STAYS),
            F.DONE: Phase.FINISHING,
            **_MOVES,
        },
        Phase.FINISHING: {**dict.fromkeys(CHUNK_TYPES, _STAYS), **_MOVES},  # resends of NACKed chunks
        Phase.CARRYING: {**dict.fromkeys(CHUNK_TYPES, _STAYS), **_ERROR},
        Phase.CLOSED: {**_HEARTBEAT},
        Phase.ERROR: {},
    },
}

# Frames the *driver* has a machine send, in each phase. Frames a machine sends on
# its own (HELLO, CONFIRM, heartbeats, ACKs, resends) follow from the ones above.
SENT: dict[Track, dict[Phase, dict[FrameType, Phase | None]]] = {
    Track.SENDER: {
        Phase.GREETING: {F.ENTRIES: _STAYS},  # held until the keys are agreed
        Phase.CONFIRMING: {F.ENTRIES: _STAYS},
        Phase.OFFERING: {F.ENTRIES: _STAYS},
        Phase.TRANSFERRING: {
            **dict.fromkeys((F.ENTRIES, *CHUNK_TYPES, F.FILE_END), _STAYS),
            F.DONE: Phase.FINISHING,
        },
        Phase.FINISHING: dict.fromkeys(CHUNK_TYPES, _STAYS),  # chunks dealt again from a lost connection
    },
    Track.FURTHER_SENDER: {Phase.CARRYING: dict.fromkeys(CHUNK_TYPES, _STAYS)},
    Track.RECEIVER: {
        Phase.PLANNING: {F.SIGNATURE: _STAYS, F.ACCEPT: Phase.TRANSFERRING},
        Phase.TRANSFERRING: dict.fromkeys((F.SIGNATURE, F.ACCEPT, F.FILE_RESULT, F.PACK_RESULT), _STAYS),
        Phase.FINISHING: {F.FILE_RESULT: _STAYS, F.PACK_RESULT: _STAYS, F.DONE: Phase.CLOSED},
    },
}


def after_received(track: Track, phase: Phase, ftype: FrameType) -> Phase:
    """The phase a machine on ``track`` in ``phase`` moves to on receiving ``ftype``."""
    allowed = RECEIVED[track][phase]
    if ftype not in allowed:
        raise RemoteProtocolError(f"unexpected {ftype.name} frame from the peer while {phase.value}")
    return allowed[ftype] or phase


def after_sent(track: Track, phase: Phase, ftype: FrameType) -> Phase:
    """The phase a machine on ``track`` in ``phase`` moves to when its driver has it send ``ftype``."""
    allowed = SENT[track].get(phase, {})
    if ftype not in allowed:
        raise LocalProtocolError(f"{track.value} cannot send {ftype.name} while {phase.value}")
    return allowed[ftype] or phase
