"""Everything the protocol raises, each at the exact point a rule is broken.

One root, split as h11 splits it: a *local* error is this side's driver asking for
something the machine's phase does not allow (a bug here); a *remote* error is the
peer, or the path to it, breaking a rule. Nothing here carries an exit code: the
session decides what an error means to the user, and whether to reconnect, from
its class and the phase the machine was in (``phase``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtransfer.protocol.constants import Cause, Phase


class ProtocolError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.phase: Phase | None = None  # set by the machine that raised it


class LocalProtocolError(ProtocolError):
    """The driver called the machine out of turn: a bug on this side."""


class ConnectionFailed(LocalProtocolError):
    """The driver called a machine that has already failed (its tasks may not all have
    noticed yet); ``failure`` is what failed it, None if the driver gave up itself."""

    def __init__(self, message: str, failure: ProtocolError | None) -> None:
        super().__init__(message)
        self.failure = failure


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow in the machine's phase."""


class CorruptFrame(RemoteProtocolError):
    """A frame failed its checksum: the path damaged it. Unlike a frame that arrives
    intact and is still wrong, that says nothing about the peer."""


class FrameAuthenticationError(RemoteProtocolError):
    """A frame's AEAD tag did not verify: a different code (during the handshake),
    tampering, or a flipped bit."""


class HandshakeRefused(RemoteProtocolError):
    """The peer is not an rtransfer peer this side can talk to."""


class PeerSilent(RemoteProtocolError):
    """Nothing arrived for the timeout, or the handshake did not finish in time."""


class Unrepairable(RemoteProtocolError):
    """Data failed its check and resending cannot fix it."""


class LimitExceeded(RemoteProtocolError):
    """The peer declared more than this side's limits allow."""


class PeerFailed(RemoteProtocolError):
    """The peer gave up and said why in an ERROR frame."""

    def __init__(self, cause: Cause, message: str) -> None:
        super().__init__(message)
        self.cause = cause
