"""Errors raised at the exact point a protocol rule is broken."""

from __future__ import annotations

from rtransfer.errors import EXIT_AUTH, EXIT_NETWORK, RtransferError


class ProtocolError(RtransferError):
    """The peer sent something the protocol does not allow.

    Mid-transfer this is treated like a broken connection (exit 3); during the
    handshake it is a refusal (exit 5), see :class:`HandshakeRefused`.
    """

    exit_code = EXIT_NETWORK
    kind = "protocol"


class HandshakeRefused(ProtocolError):
    exit_code = EXIT_AUTH
    kind = "handshake"


class WrongCode(HandshakeRefused):
    """An intact frame failed authentication: the two sides hold different codes.

    Always final: each code allows one guess, so it cannot be brute-forced online."""


class FrameAuthenticationError(ProtocolError):
    """A frame's AEAD tag did not verify: wrong key (wrong code), tampering, or a flipped bit."""


class CorruptFrame(ProtocolError):
    """A frame failed its checksum: the path corrupted it. Worth a new connection, even
    during the handshake, unlike a frame that arrives intact and is still wrong."""
