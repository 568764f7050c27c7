"""What sender and receiver machines share: decoding, the outbox, the authenticated
handshake, heartbeats, and the phase every frame is checked against.

Handshake: both sides send HELLO (magic, version, role, capabilities and a key
exchange message) in clear. From the two HELLOs each side derives its keys, then
sends CONFIRM as its first sealed frame; opening the peer's CONFIRM proves the
peer knows the code and saw the same HELLOs (so a capability downgrade fails too).
Everything after CONFIRM is sealed, unless either side asked for no encryption.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar, Concatenate, ParamSpec, Protocol, TypeVar

from rtransfer.protocol.constants import Cause, Phase, Role, Track
from rtransfer.protocol.errors import (
    ConnectionFailed,
    HandshakeRefused,
    LocalProtocolError,
    PeerFailed,
    PeerSilent,
    ProtocolError,
)
from rtransfer.protocol.events import DirectChosen, Event, HintsReceived, Ponged, PunchNow
from rtransfer.protocol.messages import (
    PROTOCOL_VERSION,
    Confirm,
    CorruptChunk,
    ErrorFrame,
    Frame,
    GoDirect,
    Hello,
    Hints,
    Opener,
    Ping,
    Pong,
    Punch,
    Sealer,
    frame_type,
)
from rtransfer.protocol.model import FRESH_BUFFERS, Buffer, Buffers
from rtransfer.protocol.phases import AUTHENTICATING, STARTED, after_received, after_sent
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.timing import Liveness
from rtransfer.protocol.tries import DirectTries
from rtransfer.protocol.writing import encode, encode_bytes

CAP_ENCRYPT = 1
# The HELLO's key exchange runs on a secret from an earlier session of the transfer, not the code:
# a side that lost its peer resumes only with that peer, and a new run, keyed by the code, learns
# so before either side runs the exchange (so neither spends a guess at the code on the other).
CAP_SESSION = 2
CAP_DRY_RUN = 4  # the receiver only says what it would do (recv --dry-run): the sender's summary says so too
CAP_BY_TRANSPORT = 8  # no key exchange: the transport (ssh) authenticated the stream (crypto.TransportExchange)
HANDSHAKE_TIMEOUT_S = 10.0


class KeyExchange(Protocol):
    """One side of a password-authenticated key exchange, handed in by the driver
    (crypto.py has the real one), so the protocol never depends on a cipher suite."""

    is_sender: bool
    session: bool  # keyed by an earlier session's secret, not the code (CAP_SESSION)
    by_transport: bool  # no exchange: the transport authenticated the stream (CAP_BY_TRANSPORT)
    message: bytes  # what goes into our HELLO
    session_key: bytes | None  # once finished: a secret of this connection's, for what joins it

    def finish(self, peer_message: bytes, transcript: bytes) -> tuple[Sealer, Opener]: ...


P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound="Peer")


def guarded(method: Callable[Concatenate[M, P], R]) -> Callable[Concatenate[M, P], R]:
    """Every way into a machine goes through here: a machine in ERROR refuses the call, and
    any protocol error moves it to ERROR, remembering the phase it was raised in."""

    @functools.wraps(method)
    def call(self: M, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.phase is Phase.ERROR:
            raise ConnectionFailed(f"{method.__name__} called on a connection that has failed", self.failure)
        try:
            return method(self, *args, **kwargs)
        except ProtocolError as exc:
            if exc.phase is None:
                exc.phase = self.phase
            self.phase = Phase.ERROR
            self.failure = exc
            raise

    return call  # type: ignore[return-value]


class Peer:
    """Base of both machines. Feed it bytes and time; drain frames from it."""

    role: Role
    track: Track  # which table of phases it follows (phases.py)
    # The handler of each frame type (after the class: the subclasses add their own).
    HANDLERS: ClassVar[dict[type, Callable[..., None]]]

    def __init__(
        self,
        now: float,
        timeout_s: float,
        kex: KeyExchange,
        encrypt: bool = True,
        buffers: Buffers = FRESH_BUFFERS,
        capabilities: int = 0,
    ) -> None:
        """A listener may start ``kex`` before anyone connects, so its first step is not spent
        while a sender waits."""
        if kex.is_sender != (self.role is Role.SENDER):
            raise LocalProtocolError("a key exchange started for the other role")
        self.phase = Phase.GREETING
        self.failure: ProtocolError | None = None  # what moved it to ERROR, if an error did
        self.encrypted = False  # agreed in the HELLOs: both sides asked for it
        self._decoder = FrameDecoder(buffers)
        self._buffers = buffers
        self._outbox: list[Buffer] = []
        self._liveness = Liveness(now, timeout_s)
        self._now = now
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT_S
        self._kex = kex
        self._sealer: Sealer | None = None
        self._ping_token = 0
        self._tries = DirectTries(self.role is Role.SENDER)  # at a direct path, on this relayed connection
        capabilities |= (CAP_ENCRYPT if encrypt else 0) | (CAP_SESSION if kex.session else 0)
        capabilities |= CAP_BY_TRANSPORT if kex.by_transport else 0
        self.peer_capabilities = 0  # the peer's HELLO's, once it came
        self._hello = Hello(self.role, capabilities=capabilities, auth=kex.message)
        self._send(self._hello)

    # --- output -------------------------------------------------------------
    def data_to_send(self) -> list[Buffer]:
        out, self._outbox = self._outbox, []
        return out

    def _send(self, frame: Frame) -> list[Buffer]:
        pieces = encode(frame, self._sealer, self._buffers.get)
        self._outbox.extend(pieces)
        self._liveness.sent(self._now)
        return pieces

    def _send_as_told(self, frame: Frame) -> list[Buffer]:
        """Send a frame the driver asked for, if the phase allows it (and move on as the table says)."""
        self.phase = after_sent(self.track, self.phase, frame_type(frame))
        return self._send(frame)

    def held_buffers(self) -> list[Buffer]:
        """Buffers the driver may recycle once the connection is gone (see the subclasses)."""
        return list(self._decoder.held_buffers())

    @property
    def reached(self) -> Phase:
        """The phase this connection got to: the one it failed in, once it has."""
        if self.phase is Phase.ERROR and self.failure is not None and self.failure.phase is not None:
            return self.failure.phase
        return self.phase

    @property
    def keys_proved(self) -> bool:
        """The peer's CONFIRM opened: it holds the same secret."""
        return self.reached not in AUTHENTICATING and self.reached is not Phase.ERROR

    @property
    def guess_spent(self) -> bool:
        """The peer's HELLO ran the key exchange and its CONFIRM never opened: whoever sent that HELLO
        may now test whether it guessed the code (by opening our CONFIRM), so this connection was
        one guess, whatever ended it."""
        return self.reached is Phase.CONFIRMING

    @property
    def by_transport(self) -> bool:
        """No code: the transport authenticated the stream (crypto.TransportExchange)."""
        return self._kex.by_transport

    @property
    def session_key(self) -> bytes | None:
        """Known once the HELLOs are exchanged; the relay tokens of further connections derive from it."""
        return self._kex.session_key

    @guarded
    def send_hints(self, hints: Hints) -> None:
        """Say where this side can be reached directly (protocol/tries.py): only inside the session,
        once both sides have proved their keys, so nobody else learns or forges them."""
        if self.phase in AUTHENTICATING or not self.encrypted:
            raise LocalProtocolError(f"HINTS need an encrypted session; this connection is {self.phase.value}")
        self._tries.hints(hints, local=True)
        self._send(hints)

    @guarded
    def ping(self) -> int:
        """A PING of our own, whose answer comes as Ponged with the token returned: a round trip
        measured now, over this connection (the receiver's, before it says when to punch)."""
        if self.phase in AUTHENTICATING:
            raise LocalProtocolError("no PING before the keys are proved")
        self._ping_token += 1
        self._send(Ping(self._ping_token))
        return self._ping_token

    @property
    def punchable(self) -> bool:
        """Receiver: the open try can still be punched (the sender has not ended it meanwhile)."""
        return self._tries.punchable

    @guarded
    def punch(self) -> None:
        """Receiver: tell the sender to dial the punched addresses now."""
        if self.role is not Role.RECEIVER:
            raise LocalProtocolError("only the receiver says when to punch")
        self._tries.punch(local=True)
        self._send(Punch())

    @guarded
    def go_direct(self, ident: bytes) -> None:
        """Sender: name the direct connection the transfer moves to (the last frame on this one)."""
        if self.role is not Role.SENDER or self.phase in AUTHENTICATING:
            raise LocalProtocolError(f"{self.role.name.lower()} cannot move the transfer while {self.phase.value}")
        self._tries.go_direct(local=True)
        self._send(GoDirect(ident))

    def fail(self, cause: Cause, message: str) -> None:
        """Tell the peer why we are giving up (best effort; the driver closes after)."""
        if self.phase is not Phase.CLOSED:
            self._send(ErrorFrame(cause, message))
            self.phase = Phase.ERROR

    # --- input --------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Where the next received bytes should be written (see FrameDecoder)."""
        return self._decoder.get_buffer()

    @guarded
    def buffer_updated(self, nbytes: int, now: float) -> list[Event]:
        """``nbytes`` were written into the last ``get_buffer``; returns what they caused."""
        self._now = now
        self._liveness.received(now)
        events: list[Event] = []
        self._decoder.buffer_updated(nbytes)
        self._process(events)
        self._after_batch(events)
        return events

    @guarded
    def receive_data(self, data: Buffer, now: float) -> list[Event]:
        """Copy bytes in (tests, fuzzers); each frame is handled as soon as it completes,
        because a HELLO changes how the frames after it are decoded."""
        self._now = now
        self._liveness.received(now)
        events: list[Event] = []
        view = memoryview(data).cast("B")
        while view:
            target = self._decoder.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            self._decoder.buffer_updated(n)
            self._process(events)
        self._after_batch(events)
        return events

    def _process(self, events: list[Event]) -> None:
        for frame in self._decoder.frames():
            arrived_in = self.phase
            self.phase = after_received(self.track, arrived_in, frame_type(frame))
            try:
                self._dispatch(frame, events)
            except ProtocolError as exc:
                exc.phase = exc.phase or arrived_in
                raise

    def _dispatch(self, frame: Frame | CorruptChunk, events: list[Event]) -> None:
        """To the handler for the frame's type (``HANDLERS``): the phase table has already allowed it."""
        self.HANDLERS[type(frame)](self, frame, events)

    def _on_confirm(self, frame: Confirm, events: list[Event]) -> None:
        if not self.encrypted:
            self._decoder.opener = None

    def _on_ping(self, frame: Ping, events: list[Event]) -> None:
        self._send(Pong(frame.token))

    def _on_pong(self, frame: Pong, events: list[Event]) -> None:
        events.append(Ponged(frame.token))

    def _on_error(self, frame: ErrorFrame, events: list[Event]) -> None:
        raise PeerFailed(frame.cause, f"peer: {frame.message}")

    def _on_hints(self, frame: Hints, events: list[Event]) -> None:
        self._tries.hints(frame, local=False)
        events.append(HintsReceived(frame.addresses, frame.punch, frame.late))

    def _on_punch(self, frame: Punch, events: list[Event]) -> None:
        if self._tries.punch(local=False):
            events.append(PunchNow())

    def _on_go_direct(self, frame: GoDirect, events: list[Event]) -> None:
        self._tries.go_direct(local=False)
        events.append(DirectChosen(frame.ident))

    def _on_hello(self, hello: Hello, events: list[Event]) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeRefused(
                f"peer speaks protocol version {hello.version}; this rtransfer speaks {PROTOCOL_VERSION}"
                f" ({'the peer is older' if hello.version < PROTOCOL_VERSION else 'this one is older'}:"
                " run the same rtransfer version on both sides)"
            )
        if hello.role == self.role:
            raise HandshakeRefused(f"both ends are {self.role.name.lower()}s")
        if (hello.capabilities ^ self._hello.capabilities) & CAP_SESSION:
            raise HandshakeRefused(
                "a new run of the peer came with the code; this one resumes only with the run it began with"
                if self._kex.session
                else "the peer is resuming with the run it began with, not this one: stop it and run both"
                " again (what arrived is kept, and resumes)"
            )
        if (hello.capabilities ^ self._hello.capabilities) & CAP_BY_TRANSPORT:
            raise HandshakeRefused(
                "one side runs over ssh and the other does not"
                if self._kex.by_transport
                else "the peer says ssh authenticated this stream, and it did not: refused"
            )
        first, second = (self._hello, hello) if self.role is Role.SENDER else (hello, self._hello)
        sealer, opener = self._kex.finish(hello.auth, encode_bytes(first) + encode_bytes(second))
        self.encrypted = bool(self._hello.capabilities & hello.capabilities & CAP_ENCRYPT)
        self.peer_capabilities = hello.capabilities
        self._sealer = sealer
        self._decoder.opener = opener
        self._send(Confirm())
        if not self.encrypted:
            self._sealer = None
        self._on_keys()

    def _on_keys(self) -> None:
        """Hook: keys are agreed and our CONFIRM is queued (the sender sends its manifest)."""

    def _after_batch(self, events: list[Event]) -> None:
        """Hook run once per read (the receiver coalesces ACKs here)."""

    # --- time ---------------------------------------------------------------
    @guarded
    def on_timer(self, now: float) -> list[Event]:
        """Call when ``next_deadline()`` has passed: heartbeats, dead peer, resends."""
        self._now = now
        if self.phase not in STARTED and now >= self._handshake_deadline:
            raise PeerSilent(f"handshake did not complete within {HANDSHAKE_TIMEOUT_S:.0f} s")
        if self._liveness.peer_dead(now):
            raise PeerSilent(f"peer silent for {self._liveness.peer_silent_s(now):.0f} s")
        events: list[Event] = []
        self._on_timer(now, events)
        if self._liveness.ping_due(now) and self.phase not in AUTHENTICATING:
            self._ping_token += 1
            self._send(Ping(self._ping_token))
        return events

    def backlogged(self, now: float) -> None:
        """The driver's transport still holds bytes it could not write (see the sender)."""

    def _on_timer(self, now: float, events: list[Event]) -> None:
        """Hook for the sender's retransmission timer."""

    def next_deadline(self) -> float:
        deadline = self._liveness.deadline()
        return deadline if self.phase in STARTED else min(deadline, self._handshake_deadline)


Peer.HANDLERS = {
    Hello: Peer._on_hello,
    Confirm: Peer._on_confirm,
    Ping: Peer._on_ping,
    Pong: Peer._on_pong,
    ErrorFrame: Peer._on_error,
    Hints: Peer._on_hints,
    Punch: Peer._on_punch,
    GoDirect: Peer._on_go_direct,
}
