"""What a failure means: the one place that turns protocol errors into what the user
sees (message and exit code), says what our ERROR frame tells the peer, and decides
whether a broken connection is worth another."""

from __future__ import annotations

from rtransfer.errors import (
    EXIT_AUTH,
    EXIT_INTEGRITY,
    EXIT_LOCAL_IO,
    EXIT_NETWORK,
    EXIT_USAGE,
    CorruptLink,
    HandshakeError,
    IntegrityError,
    LocalIOError,
    NetworkError,
    ProtocolViolation,
    RemoteError,
    RtransferError,
    UnknownHost,
    WrongCode,
)
from rtransfer.protocol.constants import Cause
from rtransfer.protocol.errors import (
    ConnectionFailed,
    CorruptFrame,
    FrameAuthenticationError,
    HandshakeRefused,
    LimitExceeded,
    LocalProtocolError,
    PeerFailed,
    PeerSilent,
    ProtocolError,
    Unrepairable,
)
from rtransfer.protocol.phases import AUTHENTICATING

_PEER_EXIT_CODES = {
    Cause.USAGE: EXIT_USAGE,
    Cause.INTEGRITY: EXIT_INTEGRITY,
    Cause.AUTH: EXIT_AUTH,
    Cause.LOCAL: EXIT_LOCAL_IO,
    Cause.PROTOCOL: EXIT_NETWORK,
}


def to_error(exc: ProtocolError) -> RtransferError:
    """Before the peer has proved its keys (AUTHENTICATING), a failed tag means the codes
    differ and any other violation means we cannot talk to it; after, both mean a bad link."""
    if isinstance(exc, ConnectionFailed) and exc.failure is not None:
        return to_error(exc.failure)
    authenticating = exc.phase in AUTHENTICATING
    if isinstance(exc, PeerFailed):
        if exc.cause is Cause.LINK:  # the peer lost the link too and will reconnect
            return NetworkError(exc.message)
        return RemoteError(exc.message, _PEER_EXIT_CODES.get(exc.cause, RemoteError.exit_code))
    if isinstance(exc, Unrepairable):
        return IntegrityError(exc.message)
    if isinstance(exc, LimitExceeded):
        return LocalIOError(exc.message)
    if isinstance(exc, PeerSilent):
        return NetworkError(exc.message)
    if isinstance(exc, FrameAuthenticationError) and authenticating:
        return WrongCode("authentication failed: the codes do not match")
    if isinstance(exc, CorruptFrame | FrameAuthenticationError):
        return CorruptLink(exc.message)
    if isinstance(exc, HandshakeRefused):
        return HandshakeError(exc.message)
    if isinstance(exc, LocalProtocolError):
        return RtransferError(f"internal error: {exc.message}")
    if authenticating:
        return HandshakeError(f"handshake failed: {exc.message}")
    return ProtocolViolation(exc.message)


def named_for(error: RemoteError, where: str) -> RemoteError:
    """The peer's own words, said as coming from ``where`` (over ssh, its host) instead of "peer"."""
    message = error.message.removeprefix("peer: ")
    return error if message == error.message else RemoteError(f"{where}: {message}", error.exit_code)


def cause_of(error: RtransferError) -> Cause:
    """What our ERROR frame tells the peer about ``error``."""
    if isinstance(error, NetworkError):
        return Cause.LINK
    if isinstance(error, ProtocolViolation):
        return Cause.PROTOCOL
    if isinstance(error, IntegrityError) or error.exit_code == EXIT_INTEGRITY:
        return Cause.INTEGRITY
    if isinstance(error, HandshakeError) or error.exit_code == EXIT_AUTH:
        return Cause.AUTH
    if isinstance(error, LocalIOError) or error.exit_code == EXIT_LOCAL_IO:
        return Cause.LOCAL
    if error.exit_code == EXIT_USAGE:
        return Cause.USAGE
    return Cause.OTHER


def worth_reconnecting(error: RtransferError, *, started: bool, resumable: bool, waits_for_peer: bool) -> bool:
    """A broken, silent or garbled connection is worth another; a local problem or a wrong code never is,
    nor is any failure of a transfer that cannot be resumed (from standard input, to standard output).

    ``started``: some connection of this transfer got as far as moving data, so the peer has
    proved it is the one we want, and a refused handshake now means a corrupting link.
    ``waits_for_peer``: this side (the receiver) can only wait for the other to come back;
    before the transfer has started, only a garbled frame is worth that wait."""
    if not resumable or isinstance(error, WrongCode | UnknownHost):
        return False
    if isinstance(error, HandshakeError):
        return started
    if not isinstance(error, NetworkError):
        return False
    return started or not waits_for_peer or isinstance(error, CorruptLink)
