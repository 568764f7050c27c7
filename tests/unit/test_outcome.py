"""What a failure means to the user, and whether it is worth another connection: one table."""

from __future__ import annotations

import pytest

from rtransfer.errors import (
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
from rtransfer.protocol.constants import Cause, Phase
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
    RemoteProtocolError,
    Unrepairable,
)
from rtransfer.session.outcome import cause_of, to_error, worth_reconnecting


def failed_in(phase: Phase, exc: ProtocolError) -> ProtocolError:
    exc.phase = phase
    return exc


G, C, T = Phase.GREETING, Phase.CONFIRMING, Phase.TRANSFERRING

# (what the protocol raised, in which phase) -> (what the user sees, exit code, the sender reconnects:
# before the transfer started, after it started; the receiver waits: before, after)
CASES = [
    (FrameAuthenticationError("tag"), C, WrongCode, 5, (False, False), (False, False)),
    (FrameAuthenticationError("tag"), T, CorruptLink, 3, (True, True), (True, True)),
    (HandshakeRefused("version 9"), G, HandshakeError, 5, (False, True), (False, True)),
    (RemoteProtocolError("DATA while greeting"), G, HandshakeError, 5, (False, True), (False, True)),
    (RemoteProtocolError("offset 7; expected 0"), T, ProtocolViolation, 3, (False, False), (False, False)),
    (CorruptFrame("checksum"), G, CorruptLink, 3, (True, True), (True, True)),
    (PeerSilent("silent for 31 s"), T, NetworkError, 3, (True, True), (False, True)),
    (Unrepairable("16 times"), T, IntegrityError, 4, (False, False), (False, False)),
    (LimitExceeded("too many entries"), Phase.PLANNING, LocalIOError, 6, (False, False), (False, False)),
    (PeerFailed(Cause.LINK, "peer: reset"), T, NetworkError, 3, (True, True), (False, True)),
    (PeerFailed(Cause.LOCAL, "peer: disk full"), T, RemoteError, 6, (False, False), (False, False)),
    (PeerFailed(Cause.INTEGRITY, "peer: digest"), T, RemoteError, 4, (False, False), (False, False)),
    (PeerFailed(Cause.OTHER, "peer: interrupted"), T, RemoteError, 1, (False, False), (False, False)),
    (LocalProtocolError("window closed"), T, RtransferError, 1, (False, False), (False, False)),
]


@pytest.mark.parametrize(("exc", "phase", "kind", "exit_code", "sender", "receiver"), CASES)
def test_each_protocol_error_means_one_thing_to_the_user_and_to_the_retry_decision(
    exc: ProtocolError,
    phase: Phase,
    kind: type[RtransferError],
    exit_code: int,
    sender: tuple[bool, bool],
    receiver: tuple[bool, bool],
) -> None:
    error = to_error(failed_in(phase, exc))
    assert type(error) is kind and error.exit_code == exit_code
    for waits_for_peer, expected in ((False, sender), (True, receiver)):
        decided = tuple(
            worth_reconnecting(error, started=started, resumable=True, waits_for_peer=waits_for_peer)
            for started in (False, True)
        )
        assert decided == expected, (waits_for_peer, decided)


def test_a_call_on_a_failed_machine_means_what_failed_it() -> None:
    original = failed_in(T, PeerSilent("silent"))
    assert type(to_error(ConnectionFailed("send_chunk on a failed connection", original))) is NetworkError


def test_nothing_is_retried_when_the_data_cannot_be_read_again_or_the_name_does_not_resolve() -> None:
    reset = NetworkError("reset")
    assert not worth_reconnecting(reset, started=True, resumable=False, waits_for_peer=False)
    assert not worth_reconnecting(UnknownHost("no such name"), started=True, resumable=True, waits_for_peer=False)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (NetworkError("reset"), Cause.LINK),
        (IntegrityError("digest"), Cause.INTEGRITY),
        (WrongCode("codes"), Cause.AUTH),
        (LocalIOError("disk full"), Cause.LOCAL),
        (RemoteError("peer: disk full", 6), Cause.LOCAL),
        (ProtocolViolation("ACCEPT names a file twice"), Cause.PROTOCOL),
        (RtransferError("bug"), Cause.OTHER),
    ],
)
def test_our_error_frame_tells_the_peer_the_cause_it_maps_back_to_the_same_exit_code(
    error: RtransferError, cause: Cause
) -> None:
    assert cause_of(error) is cause
    back = to_error(failed_in(T, PeerFailed(cause, "peer: x")))
    assert back.exit_code == (error.exit_code if cause is not Cause.OTHER else 1)
