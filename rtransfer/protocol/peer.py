"""What sender and receiver machines share: decoding, the outbox, the authenticated
handshake, heartbeats.

Handshake: both sides send HELLO (magic, version, role, capabilities and a SPAKE2
message) in clear. From the two HELLOs each side derives its keys, then sends
CONFIRM as its first sealed frame; opening the peer's CONFIRM proves the peer
knows the code and saw the same HELLOs (so a capability downgrade fails too).
Everything after CONFIRM is sealed, unless either side asked for no encryption.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rtransfer.crypto import KeyExchange
from rtransfer.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_INTEGRITY,
    EXIT_LOCAL_IO,
    EXIT_NETWORK,
    NetworkError,
    RtransferError,
)
from rtransfer.protocol.errors import (
    CorruptFrame,
    FrameAuthenticationError,
    HandshakeRefused,
    ProtocolError,
    WrongCode,
)
from rtransfer.protocol.events import Event
from rtransfer.protocol.frames import (
    FRESH_BUFFERS,
    PROTOCOL_VERSION,
    Buffer,
    Buffers,
    Confirm,
    CorruptData,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Role,
    Sealer,
    encode,
    encode_bytes,
)
from rtransfer.protocol.timing import Liveness

CAP_ENCRYPT = 1
HANDSHAKE_TIMEOUT_S = 10.0

# Codes the peer may hand us in an ERROR frame and we repeat as our own exit code.
_SHARED_EXIT_CODES = {EXIT_INTEGRITY, EXIT_AUTH, EXIT_LOCAL_IO}


class RemoteError(RtransferError):
    """The peer reported a failure; both sides exit with its code when it is a shared one."""

    kind = "remote"

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code in _SHARED_EXIT_CODES else EXIT_FAILURE


class Peer:
    """Base of both machines. Feed it bytes and time; drain frames from it."""

    role: Role

    def __init__(
        self,
        now: float,
        timeout_s: float,
        code: bytes | KeyExchange,
        encrypt: bool = True,
        buffers: Buffers = FRESH_BUFFERS,
    ) -> None:
        """``code`` may come as a KeyExchange already started with it: a listener starts one
        before anyone connects, so its first SPAKE2 step (~5 ms of pure Python) is not
        spent while a sender waits."""
        self._decoder = FrameDecoder(buffers)
        self._buffers = buffers
        self._outbox: list[Buffer] = []
        self._liveness = Liveness(now, timeout_s)
        self._now = now
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT_S
        is_sender = self.role is Role.SENDER
        self._kex = code if isinstance(code, KeyExchange) else KeyExchange(code, is_sender)
        if self._kex.is_sender != is_sender:
            raise ValueError("a key exchange started for the other role")
        self._sealer: Sealer | None = None
        self._peer_hello: Hello | None = None
        self._ping_token = 0
        self.confirmed = False
        self.encrypted = False
        self.closed = False
        self._hello = Hello(self.role, capabilities=CAP_ENCRYPT if encrypt else 0, auth=self._kex.message)
        self._send(self._hello)

    @property
    def handshake_complete(self) -> bool:
        return self.confirmed

    # --- output -------------------------------------------------------------
    def data_to_send(self) -> list[Buffer]:
        out, self._outbox = self._outbox, []
        return out

    def _send(self, frame: Frame) -> list[Buffer]:
        pieces = encode(frame, self._sealer, self._buffers.get)
        self._outbox.extend(pieces)
        self._liveness.sent(self._now)
        return pieces

    def held_buffers(self) -> list[Buffer]:
        """Buffers the driver may recycle once the connection is gone (see the subclasses)."""
        return list(self._decoder.held_buffers())

    def fail(self, error: RtransferError) -> None:
        """Tell the peer why we are giving up (best effort; the driver closes after)."""
        if not self.closed:
            self._send(ErrorFrame(error.exit_code, error.message))
            self.closed = True

    # --- input --------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Where the next received bytes should be written (see FrameDecoder)."""
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int, now: float) -> list[Event]:
        """``nbytes`` were written into the last ``get_buffer``; returns what they caused."""
        self._now = now
        self._liveness.received(now)
        events: list[Event] = []
        with self._handshake_errors():
            self._decoder.buffer_updated(nbytes)
            self._process(events)
            self._after_batch(events)
        return events

    def receive_data(self, data: Buffer, now: float) -> list[Event]:
        """Copy bytes in (tests, fuzzers); each frame is handled as soon as it completes,
        because a HELLO changes how the frames after it are decoded."""
        self._now = now
        self._liveness.received(now)
        events: list[Event] = []
        view = memoryview(data).cast("B")
        with self._handshake_errors():
            while view:
                target = self._decoder.get_buffer()
                n = min(len(target), len(view))
                target[:n] = view[:n]
                view = view[n:]
                self._decoder.buffer_updated(n)
                self._process(events)
            self._after_batch(events)
        return events

    @contextlib.contextmanager
    def _handshake_errors(self) -> Iterator[None]:
        """Before the peer has proved its keys, any violation means we cannot talk to it."""
        try:
            yield
        except FrameAuthenticationError:
            if self.confirmed:
                raise
            raise WrongCode("authentication failed: the codes do not match") from None
        except ProtocolError as exc:
            if self.confirmed or isinstance(exc, HandshakeRefused | CorruptFrame):
                raise
            raise HandshakeRefused(f"handshake failed: {exc.message}") from None

    def _process(self, events: list[Event]) -> None:
        for frame in self._decoder.frames():
            if isinstance(frame, Hello):
                self._on_hello(frame)
            elif isinstance(frame, Confirm):
                self._on_confirm()
            elif not self.confirmed:
                raise HandshakeRefused(f"peer sent {type(frame).__name__} before completing the handshake")
            elif isinstance(frame, Ping):
                self._send(Pong(frame.token))
            elif isinstance(frame, Pong):
                pass
            elif isinstance(frame, ErrorFrame):
                if frame.exit_code == EXIT_NETWORK:  # the peer lost the link too and will reconnect
                    raise NetworkError(f"peer: {frame.message}")
                raise RemoteError(frame.exit_code, f"peer: {frame.message}")
            else:
                self._handle(frame, events)

    def _on_hello(self, hello: Hello) -> None:
        if self._peer_hello is not None:
            raise ProtocolError("peer sent a second HELLO")
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeRefused(
                f"peer speaks protocol version {hello.version}; this rtransfer speaks {PROTOCOL_VERSION}"
            )
        if hello.role == self.role:
            raise HandshakeRefused(f"both ends are {self.role.name.lower()}s")
        self._peer_hello = hello
        first, second = (self._hello, hello) if self.role is Role.SENDER else (hello, self._hello)
        sealer, opener = self._kex.finish(hello.auth, encode_bytes(first) + encode_bytes(second))
        self.encrypted = bool(self._hello.capabilities & hello.capabilities & CAP_ENCRYPT)
        self._sealer = sealer
        self._decoder.opener = opener
        self._send(Confirm())
        if not self.encrypted:
            self._sealer = None
        self._on_keys()

    def _on_confirm(self) -> None:
        if self._peer_hello is None or self.confirmed:
            raise ProtocolError("unexpected CONFIRM frame")
        self.confirmed = True
        if not self.encrypted:
            self._decoder.opener = None

    def _on_keys(self) -> None:
        """Hook: keys are agreed and our CONFIRM is queued (the sender sends its manifest)."""

    def _handle(self, frame: Frame | CorruptData, events: list[Event]) -> None:
        raise NotImplementedError

    def _after_batch(self, events: list[Event]) -> None:
        """Hook run once per read (the receiver coalesces ACKs here)."""

    def _unexpected(self, frame: object) -> ProtocolError:
        return ProtocolError(f"unexpected {type(frame).__name__} frame from the peer")

    # --- time ---------------------------------------------------------------
    def on_timer(self, now: float) -> list[Event]:
        """Call when ``next_deadline()`` has passed: heartbeats, dead peer, resends."""
        self._now = now
        if not self.handshake_complete and now >= self._handshake_deadline:
            raise NetworkError(f"handshake did not complete within {HANDSHAKE_TIMEOUT_S:.0f} s")
        if self._liveness.peer_dead(now):
            raise NetworkError(f"peer silent for {self._liveness.peer_silent_s(now):.0f} s")
        events: list[Event] = []
        self._on_timer(now, events)
        if self._liveness.ping_due(now) and self.confirmed:
            self._ping_token += 1
            self._send(Ping(self._ping_token))
        return events

    def backlogged(self, now: float) -> None:
        """The driver's transport still holds bytes it could not write (see the sender)."""

    def _on_timer(self, now: float, events: list[Event]) -> None:
        """Hook for the sender's retransmission timer."""

    def next_deadline(self) -> float:
        deadline = self._liveness.deadline()
        return deadline if self.handshake_complete else min(deadline, self._handshake_deadline)
