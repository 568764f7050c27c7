"""The protocol's shared names and bounds: frame types, roles, causes, phases, limits.

A leaf: it imports nothing of rtransfer, so the codec, the errors and the phase table
can all name these without importing one another.
"""

from __future__ import annotations

from enum import Enum, IntEnum

MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MAX_WINDOW = 1024
MAX_STREAMS = 64
MAX_MANIFEST_BYTES = 1024 * 1024  # include/exclude rules travel in it
MAX_FILTER_RULES = 4096
MAX_JOIN_BYTES = 4096
MAX_ENTRIES_BYTES = 8 * 1024 * 1024  # 1024 entries of up to two 4 KiB names each, JSON-quoted
MAX_ACCEPT_BYTES = 1024 * 1024
MAX_ERROR_MESSAGE_BYTES = 1024
MAX_SIGNATURE_CHUNKS = 16384  # chunk digests in one SIGNATURE frame (a file's may take several)
MAX_COPY_RANGES = 4096  # ranges of the receiver's old copy in one COPY frame
SIGNATURE_DIGEST_BYTES = 16
MAX_HINTS = 8  # addresses in one HINTS frame where the side listens
MAX_PUNCH = 16  # and where its NAT maps its punching ports: the transfer's first 16 connections punch
MAX_HINTS_BYTES = 2048


class FrameType(IntEnum):
    HELLO = 1
    MANIFEST = 2
    ACCEPT = 3
    DATA = 4
    ACK = 5
    NACK = 6
    FILE_END = 7
    FILE_RESULT = 8
    DONE = 9
    PING = 10
    PONG = 11
    ERROR = 12
    CONFIRM = 13  # first sealed frame each way: proves both sides derived the same keys
    ENTRIES = 14  # a batch of the file list
    PACK = 15  # DATA whose payload is several whole small files (see protocol/pack.py)
    PACK_RESULT = 16
    JOIN = 17  # a further connection of a running transfer: its first frame after CONFIRM
    JOINED = 18
    COPY = 19  # DATA made of ranges of the receiver's old copy of the file (delta transfer)
    ZDATA = 20  # DATA compressed with zstd
    SIGNATURE = 21  # the receiver's old copy of a file, as content-defined chunks (delta transfer)
    HINTS = 22  # where this side can be reached directly, said inside the session (through a relay)
    GO_DIRECT = 23  # sender: the transfer moves to the direct connection named here
    HOLE = 24  # DATA that is all zeros, sent as its length: a chunk of a sparse source that is all hole
    PUNCH = 25  # receiver: dial the punched addresses now (protocol/tries.py)


# Frames that carry a chunk of a file (or of several, PACK): sequenced, acknowledged, resent.
CHUNK_TYPES = (FrameType.DATA, FrameType.PACK, FrameType.COPY, FrameType.ZDATA, FrameType.HOLE)


class Role(IntEnum):
    SENDER = 1
    RECEIVER = 2


class Track(Enum):
    """Which table of phases a machine follows: its role, and for a sender, whether it opened the
    transfer's first connection or a further one (which JOINs it and carries only chunks). A
    receiver learns which from the frame after CONFIRM (MANIFEST or JOIN)."""

    SENDER = "sender"
    FURTHER_SENDER = "further sender"
    RECEIVER = "receiver"


class Cause(IntEnum):
    """Why a peer gave up, as its ERROR frame says (the session maps it to an exit code)."""

    OTHER = 0
    LINK = 1  # the connection broke or cannot be trusted: the sender will come back
    INTEGRITY = 2  # data failed its check beyond what resending fixes
    AUTH = 3  # the peers cannot talk (another code, another version)
    LOCAL = 4  # a problem on the peer's own machine: disk full, permissions, its limits
    PROTOCOL = 5  # we broke the protocol (a bug): retrying cannot help (an older peer reads OTHER)
    USAGE = 6  # the peer's own options refuse what was asked (recv without --delete): exit 2 on both sides


class Phase(Enum):
    GREETING = "greeting"  # our HELLO is out; waiting for the peer's
    CONFIRMING = "confirming"  # keys agreed and our CONFIRM is out; waiting for the peer's
    OFFERING = "offering"  # sender: manifest and file list (or JOIN) going out; waiting for ACCEPT (or JOINED)
    AWAITING_MANIFEST = "awaiting manifest"  # receiver: the peer has proved its keys; MANIFEST or JOIN next
    PLANNING = "planning"  # receiver: manifest in; its driver checks the first batch against the disk
    TRANSFERRING = "transferring"  # the first batch is accepted: data flows
    JOINING = "joining"  # a further connection's sender: JOIN out; waiting for JOINED
    CARRYING = "carrying"  # a further connection, joined: chunks and their acknowledgements, nothing else
    FINISHING = "finishing"  # the sender's DONE is out: resends and confirmations only
    CLOSED = "closed"  # both DONEs: the transfer is complete
    ERROR = "error"  # this side failed; nothing more is accepted
