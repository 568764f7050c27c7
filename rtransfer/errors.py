"""What the user is told: one exception hierarchy, each class with the exit code scripts rely on.

The protocol's own errors carry no exit code; session/outcome.py turns them into
these, and the CLI exits with ``exit_code``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NETWORK = 3
EXIT_INTEGRITY = 4
EXIT_AUTH = 5
EXIT_LOCAL_IO = 6
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class RtransferError(Exception):
    """Base of every error rtransfer reports to its user."""

    exit_code = EXIT_FAILURE
    kind = "failure"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(RtransferError):
    exit_code = EXIT_USAGE
    kind = "usage"


class NetworkError(RtransferError):
    """Could not connect, peer gone, or peer silent past the timeout."""

    exit_code = EXIT_NETWORK
    kind = "network"


class UnknownHost(NetworkError):
    """The name does not resolve: no retry will change that (a temporary DNS failure is retried)."""


class ProtocolViolation(RtransferError):
    """The peer, once it had proved its keys, sent something the protocol does not allow: a bug
    in the peer, which another connection would only repeat. Never retried."""

    exit_code = EXIT_NETWORK
    kind = "protocol"


class CorruptLink(NetworkError):
    """A frame failed its checksum or its tag after the keys were proved: the path damages data,
    and another connection may do better."""


class IntegrityError(RtransferError):
    """Data failed its check and resending could not fix it."""

    exit_code = EXIT_INTEGRITY
    kind = "integrity"


class HandshakeError(RtransferError):
    """The peer is not an rtransfer peer we can talk to, or refused us."""

    exit_code = EXIT_AUTH
    kind = "handshake"


class WrongCode(HandshakeError):
    """The two sides hold different codes. Always final: each code allows one guess."""


class LocalIOError(RtransferError):
    """Disk full, permission denied, not found: a problem on this machine."""

    exit_code = EXIT_LOCAL_IO
    kind = "local_io"


class RemoteError(RtransferError):
    """The peer gave up; both sides exit with the code its cause maps to."""

    kind = "remote"

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(RtransferError):
    """Stopped by SIGINT or SIGTERM; exit 128 + signal number like a shell."""

    kind = "interrupted"

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.exit_code = exit_code


def reason(exc: BaseException) -> str:
    """What went wrong, as words for a one-line message ("connection refused")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
