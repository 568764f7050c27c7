"""What sender and receiver machines share: decoding, the outbox, handshake, heartbeats."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rtransfer.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_INTEGRITY, EXIT_LOCAL_IO, NetworkError, RtransferError
from rtransfer.protocol.errors import HandshakeRefused, ProtocolError
from rtransfer.protocol.events import Event
from rtransfer.protocol.frames import (
    PROTOCOL_VERSION,
    Buffer,
    CorruptData,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Role,
    encode,
)
from rtransfer.protocol.timing import Liveness

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

    def __init__(self, now: float, timeout_s: float, allocate: Callable[[int], bytearray] = bytearray) -> None:
        self._decoder = FrameDecoder(allocate)
        self._outbox: list[Buffer] = []
        self._liveness = Liveness(now, timeout_s)
        self._now = now
        self._peer_hello: Hello | None = None
        self._ping_token = 0
        self.closed = False
        self._send(Hello(self.role))

    # --- output -------------------------------------------------------------
    def data_to_send(self) -> list[Buffer]:
        out, self._outbox = self._outbox, []
        return out

    def _send(self, frame: Frame) -> None:
        self._outbox.extend(encode(frame))
        self._liveness.sent(self._now)

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
        with self._handshake_errors():
            self._decoder.buffer_updated(nbytes)
            return self._process(now)

    def receive_data(self, data: Buffer, now: float) -> list[Event]:
        with self._handshake_errors():
            self._decoder.feed(data)
            return self._process(now)

    @contextlib.contextmanager
    def _handshake_errors(self) -> Iterator[None]:
        """Before the peer's HELLO, any protocol violation means it is not a peer we can talk to."""
        try:
            yield
        except ProtocolError as exc:
            if self._peer_hello is None and not isinstance(exc, HandshakeRefused):
                raise HandshakeRefused(f"handshake failed: {exc.message}") from None
            raise

    def _process(self, now: float) -> list[Event]:
        self._now = now
        self._liveness.received(now)
        events: list[Event] = []
        for frame in self._decoder.frames():
            if isinstance(frame, Hello):
                self._on_hello(frame)
            elif self._peer_hello is None:
                raise HandshakeRefused(f"peer sent {type(frame).__name__} before its HELLO")
            elif isinstance(frame, Ping):
                self._send(Pong(frame.token))
            elif isinstance(frame, Pong):
                pass
            elif isinstance(frame, ErrorFrame):
                raise RemoteError(frame.exit_code, f"peer: {frame.message}")
            else:
                self._handle(frame, events)
        self._after_batch(events)
        return events

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

    def _handle(self, frame: Frame | CorruptData, events: list[Event]) -> None:
        raise NotImplementedError

    def _after_batch(self, events: list[Event]) -> None:
        """Hook run once per receive_data call (the receiver coalesces ACKs here)."""

    def _unexpected(self, frame: object) -> ProtocolError:
        return ProtocolError(f"unexpected {type(frame).__name__} frame from the peer")

    # --- time ---------------------------------------------------------------
    def on_timer(self, now: float) -> list[Event]:
        """Call when ``next_deadline()`` has passed: heartbeats, dead peer, resends."""
        self._now = now
        if self._liveness.peer_dead(now):
            raise NetworkError(f"peer silent for {self._liveness.peer_silent_s(now):.0f} s")
        events: list[Event] = []
        self._on_timer(now, events)
        if self._liveness.ping_due(now):
            self._ping_token += 1
            self._send(Ping(self._ping_token))
        return events

    def _on_timer(self, now: float, events: list[Event]) -> None:
        """Hook for the sender's retransmission timer."""

    def next_deadline(self) -> float:
        return self._liveness.deadline()


__all__ = ["EXIT_FAILURE", "Peer", "RemoteError"]
