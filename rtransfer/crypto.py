"""Key exchange and frame encryption. Pure: no sockets, files or clocks.

A short code known to both sides is stretched into session keys with SPAKE2
(the password-authenticated key exchange magic-wormhole uses): an eavesdropper
learns nothing it could brute-force offline, and an active attacker gets one
guess per connection. HKDF turns the SPAKE2 key and the hash of both HELLOs
into one AES-256-GCM key per direction; nonces are the direction and a frame
counter, and every connection runs a fresh exchange, so a (key, nonce) pair is
never used twice, across reconnects and resumes included.

One guess per run, not per connection: once a connection of a transfer has opened the peer's
CONFIRM, every later one (a reconnect, a further stream, the relay's pairing) runs its exchange
on a secret derived from that session (``TransferKeys``), never on the code again.

Over ssh there is no code: ssh has authenticated both ends, and SPAKE2 on a code everyone knows
proved nothing while costing each side ~50 ms (its import and two scalar multiplications) before
the first byte. There the keys come from the HELLOs alone, each with a fresh nonce
(``TransportExchange``); both sides say so in their HELLO, and CONFIRM still proves both saw the
same two.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rtransfer.protocol.errors import FrameAuthenticationError, HandshakeRefused

_NONCE = struct.Struct("!IQ")  # direction, frame counter
_ID_SENDER = b"rtransfer sender"
_ID_RECEIVER = b"rtransfer receiver"
TRANSPORT_NONCE_BYTES = 16
SENDER_TO_RECEIVER = 1
RECEIVER_TO_SENDER = 2


class KeyExchange:
    """One side of SPAKE2; the sender plays A, the receiver B."""

    by_transport = False

    def __init__(self, code: bytes, is_sender: bool, session: bool = False) -> None:
        """``session``: ``code`` is a secret derived from an earlier session of the transfer, not the
        code the user typed (the HELLO says so)."""
        from spake2 import SPAKE2_A, SPAKE2_B  # here: a transfer over ssh never loads it

        cls = SPAKE2_A if is_sender else SPAKE2_B
        self._spake = cls(code, idA=_ID_SENDER, idB=_ID_RECEIVER)
        self.is_sender = is_sender
        self.session = session
        self.message = self._spake.start()
        self.session_key: bytes | None = None  # after ``finish``: what the connections that join this one derive from

    def finish(self, peer_message: bytes, transcript: bytes) -> tuple[Sealer, Opener]:
        from spake2 import SPAKEError

        try:
            shared = self._spake.finish(peer_message)
        except (SPAKEError, ValueError) as exc:
            raise HandshakeRefused(f"key exchange failed: {exc}") from None
        self.session_key, keys = _keys(shared, transcript, self.is_sender)
        return keys


class TransportExchange:
    """The exchange of a byte stream its transport has authenticated (ssh): each HELLO carries a
    fresh nonce instead of a SPAKE2 message, and the keys come from the two HELLOs, so no two
    connections share a key. A peer that ran SPAKE2 instead is refused (the HELLOs'
    CAP_BY_TRANSPORT says so first)."""

    by_transport = True
    session = False

    def __init__(self, is_sender: bool) -> None:
        self.is_sender = is_sender
        self.message = secrets.token_bytes(TRANSPORT_NONCE_BYTES)
        self.session_key: bytes | None = None

    def finish(self, peer_message: bytes, transcript: bytes) -> tuple[Sealer, Opener]:
        if len(peer_message) != TRANSPORT_NONCE_BYTES:
            raise HandshakeRefused("the peer ran a key exchange on a stream its transport had authenticated")
        self.session_key, keys = _keys(b"rtransfer v1 authenticated by its transport", transcript, self.is_sender)
        return keys


def _keys(shared: bytes, transcript: bytes, is_sender: bool) -> tuple[bytes, tuple[Sealer, Opener]]:
    """The connection's session key, and its two directions' keys, bound to both HELLOs."""
    mine, theirs = (SENDER_TO_RECEIVER, RECEIVER_TO_SENDER) if is_sender else (RECEIVER_TO_SENDER, SENDER_TO_RECEIVER)
    digest = hashlib.sha256(transcript).digest()
    session_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"rtransfer v1 session key" + digest).derive(shared)
    return session_key, (Sealer(_derive(shared, mine, digest), mine), Opener(_derive(shared, theirs, digest), theirs))


def _derive(shared: bytes, direction: int, transcript_hash: bytes) -> AESGCM:
    info = b"rtransfer v1 frame key " + bytes([direction]) + transcript_hash
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared))


class Sealer:
    """Encrypts and authenticates outgoing frame bodies, one nonce per frame."""

    def __init__(self, aead: AESGCM, direction: int) -> None:
        self._aead = aead
        self._direction = direction
        self._counter = 0

    def seal(
        self, header_prefix: bytes, body: bytes | bytearray | memoryview, out: bytearray | memoryview | None = None
    ) -> bytes | memoryview:
        """Ciphertext and tag; written into ``out`` (len(body) + 16 bytes) when given,
        which spares a fresh allocation per chunk."""
        nonce = _NONCE.pack(self._direction, self._counter)
        self._counter += 1
        if out is None:
            return self._aead.encrypt(nonce, body, header_prefix)
        self._aead.encrypt_into(nonce, body, header_prefix, out)
        return memoryview(out)


class Opener:
    """Checks and decrypts incoming frame bodies in the order they were sealed."""

    def __init__(self, aead: AESGCM, direction: int) -> None:
        self._aead = aead
        self._direction = direction
        self._counter = 0

    def skip(self) -> None:
        """A frame that failed its checksum still used up its nonce on the other side."""
        self._counter += 1

    def open_into(self, header_prefix: bytes, ciphertext: memoryview, out: memoryview) -> None:
        nonce = _NONCE.pack(self._direction, self._counter)
        self._counter += 1
        try:
            self._aead.decrypt_into(nonce, ciphertext, header_prefix, out)
        except InvalidTag:
            raise FrameAuthenticationError("frame failed authentication") from None


class TransferKeys:
    """What a transfer's connections key their exchange with: the code, until one of them has
    opened the peer's CONFIRM (``confirmed``); from then on a 256-bit secret derived from that
    connection's session, which both sides derive alike and nobody else can (a relay that forces
    reconnects, or pairs a stranger with us, gains no guess at the code)."""

    def __init__(self, code: bytes, by_transport: bool = False) -> None:
        """``by_transport``: the way to the peer authenticates it (ssh), and ``code`` is unused."""
        self.code = code
        self.by_transport = by_transport
        self.resume: bytes | None = None

    def exchange(self, is_sender: bool) -> KeyExchange | TransportExchange:
        """A key exchange for the transfer's next connection."""
        if self.by_transport:
            return TransportExchange(is_sender)
        if self.resume is None:
            return KeyExchange(self.code, is_sender)
        return KeyExchange(self.resume, is_sender, session=True)

    def confirmed(self, session_key: bytes) -> None:
        """The first call counts: both sides derive from the same connection, the first to get this far."""
        if self.resume is None:
            self.resume = derive_secret(session_key, b"resume")


def derive_secret(session_key: bytes, label: bytes) -> bytes:
    """A secret of a session's for one purpose (``label``), as text: what a key exchange runs on."""
    return hmac.new(session_key, b"rtransfer v1 " + label, hashlib.sha256).hexdigest().encode()
