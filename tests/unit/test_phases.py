"""The phase table, walked: every (role, phase, frame type), fed to a real machine in that phase."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import blake3
import pytest

from rtransfer.crypto import KeyExchange
from rtransfer.protocol.constants import Cause, FrameType, Phase, Role, Track
from rtransfer.protocol.errors import ConnectionFailed, LocalProtocolError, ProtocolError, RemoteProtocolError
from rtransfer.protocol.messages import (
    Accept,
    Ack,
    Confirm,
    Data,
    Done,
    ErrorFrame,
    FileEnd,
    FileResult,
    Frame,
    GoDirect,
    Hello,
    Hints,
    Join,
    Joined,
    Nack,
    PackResult,
    Ping,
    Pong,
    Punch,
    copy_payload,
    hole_payload,
)
from rtransfer.protocol.model import Entry, EntryBatch, Manifest, Signature
from rtransfer.protocol.peer import Peer
from rtransfer.protocol.phases import RECEIVED, SENT, after_received, after_sent
from rtransfer.protocol.receiver import ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from rtransfer.protocol.writing import encode, encode_bytes
from tests.unit.harness import CODE, frames_of

M = TypeVar("M", bound=Peer)
DIGEST = blake3.blake3(b"x").digest()
SAMPLES: dict[FrameType, Frame] = {
    FrameType.HELLO: Hello(Role.SENDER, auth=b"x" * 33),
    FrameType.CONFIRM: Confirm(),
    FrameType.MANIFEST: Manifest("t" * 32, 4096, 4),
    FrameType.ENTRIES: EntryBatch(1, (Entry("g", "file", 1),), True),
    FrameType.ACCEPT: Accept(0, {}, ()),
    FrameType.DATA: Data(0, 0, 0, b"x"),
    FrameType.PACK: Data(0, 0, 0, b"not a pack table", FrameType.PACK),
    FrameType.ZDATA: Data(0, 0, 0, b"\x00\x00\x00\x01not zstd", FrameType.ZDATA),
    FrameType.COPY: Data(0, 0, 0, copy_payload([(0, 1)]), FrameType.COPY),
    FrameType.HOLE: Data(0, 0, 0, hole_payload(1), FrameType.HOLE),
    FrameType.SIGNATURE: Signature(1, 0, ((1, b"d" * 16),)),
    FrameType.ACK: Ack(0, ()),
    FrameType.NACK: Nack(0),
    FrameType.FILE_END: FileEnd(0, 1, DIGEST),
    FrameType.FILE_RESULT: FileResult(0, True),
    FrameType.PACK_RESULT: PackResult(0, True),
    FrameType.DONE: Done(),
    FrameType.PING: Ping(1),
    FrameType.PONG: Pong(1),
    FrameType.ERROR: ErrorFrame(Cause.OTHER, "gave up"),
    FrameType.JOIN: Join(Manifest("t" * 32, 4096, 4, 2), 1),
    FrameType.JOINED: Joined(),
    FrameType.HINTS: Hints((("10.0.0.1", 4000),)),
    FrameType.GO_DIRECT: GoDirect(b"i" * 32),
    FrameType.PUNCH: Punch(),
}


class Scripted:
    """The other end, by hand: its own HELLO and keys, so the test can send the machine any frame,
    sealed as long as the machine expects sealed frames (until the peer's CONFIRM)."""

    def __init__(self, machine: Peer) -> None:
        self.machine = machine
        role = Role.RECEIVER if machine.role is Role.SENDER else Role.SENDER
        kex = KeyExchange(CODE, is_sender=role is Role.SENDER)
        hello = Hello(role, capabilities=0, auth=kex.message)
        (mine,) = [f for f in frames_of(machine.data_to_send()) if isinstance(f, Hello)]
        first, second = (mine, hello) if machine.role is Role.SENDER else (hello, mine)
        self.sealer, _ = kex.finish(mine.auth, encode_bytes(first) + encode_bytes(second))
        self.hello = hello
        self.sealed = False

    def send(self, *frames: Frame) -> None:
        for frame in frames:
            raw = b"".join(bytes(p) for p in encode(frame, self.sealer if self.sealed else None))
            self.machine.receive_data(raw, 0.0)
            if isinstance(frame, Hello):
                self.sealed = True  # everything up to and including CONFIRM is sealed
            if isinstance(frame, Confirm):
                self.sealed = False  # neither side asked for encryption


def sender_in(phase: Phase) -> tuple[SenderMachine, Scripted]:
    sender = SenderMachine(Manifest("t" * 32, 4096, 4), 0.0, 30.0, KeyExchange(CODE, True), encrypt=False)
    sender.send_entries((Entry("f", "file", 1),), True, 0.0)
    peer = Scripted(sender)
    steps: list[Callable[[], object]] = [
        lambda: peer.send(peer.hello),  # -> CONFIRMING
        lambda: peer.send(Confirm()),  # -> OFFERING
        lambda: peer.send(Accept(0, {}, ())),  # -> TRANSFERRING
        lambda: (  # -> FINISHING
            sender.send_chunk(0, 0, b"x", 0.0),
            sender.end_file(0, 1, DIGEST, 0.0),
            sender.finish(0.0),
        ),
        lambda: peer.send(Ack(1, ()), FileResult(0, True), Done()),  # -> CLOSED
    ]
    return _walk(sender, peer, phase, steps)


def receiver_in(phase: Phase) -> tuple[ReceiverMachine, Scripted]:
    running = Manifest("t" * 32, 4096, 4, 2)
    receiver = ReceiverMachine(0.0, 30.0, KeyExchange(CODE, False), encrypt=False, running=running)
    peer = Scripted(receiver)
    steps: list[Callable[[], object]] = [
        lambda: peer.send(peer.hello),  # -> CONFIRMING
        lambda: peer.send(Confirm()),  # -> AWAITING_MANIFEST
    ]
    if phase is Phase.CARRYING:  # a further connection of the running transfer
        steps.append(lambda: peer.send(Join(running, 1)))
        return _walk(receiver, peer, phase, steps)
    receiver.running = None  # the transfer's first connection
    steps += [
        lambda: peer.send(Manifest("t" * 32, 4096, 4), EntryBatch(0, (Entry("f", "file", 1),), True)),  # -> PLANNING
        lambda: receiver.accept(0, {}, 0.0),  # -> TRANSFERRING
        lambda: peer.send(Data(0, 0, 0, b"x"), FileEnd(0, 1, DIGEST), Done()),  # -> FINISHING
        lambda: receiver.file_verified(0, True, 0.0),  # every file in: the driver's last steps
        lambda: receiver.finish(0.0),  # -> CLOSED
    ]
    return _walk(receiver, peer, phase, steps)


def further_sender_in(phase: Phase) -> tuple[SenderMachine, Scripted]:
    manifest = Manifest("t" * 32, 4096, 4, 2)
    sender = SenderMachine(manifest, 0.0, 30.0, KeyExchange(CODE, True), encrypt=False, stream=1)
    peer = Scripted(sender)
    steps: list[Callable[[], object]] = [
        lambda: peer.send(peer.hello),  # -> CONFIRMING
        lambda: peer.send(Confirm()),  # -> JOINING
        lambda: peer.send(Joined()),  # -> CARRYING
    ]
    return _walk(sender, peer, phase, steps)


def _walk(machine: M, peer: Scripted, phase: Phase, steps: list[Callable[[], object]]) -> tuple[M, Scripted]:
    if phase is Phase.ERROR:
        machine.fail(Cause.OTHER, "test")
    for step in steps:
        if machine.phase is phase:
            break
        step()
    assert machine.phase is phase
    return machine, peer


MACHINES: dict[Track, Callable[[Phase], tuple[Peer, Scripted]]] = {
    Track.SENDER: sender_in,
    Track.FURTHER_SENDER: further_sender_in,
    Track.RECEIVER: receiver_in,
}
WALK = [(track, phase, ftype) for track in Track for phase in RECEIVED[track] for ftype in FrameType]


def test_the_table_names_every_phase_of_each_track() -> None:
    first = {Phase.GREETING, Phase.CONFIRMING, Phase.TRANSFERRING, Phase.FINISHING, Phase.CLOSED, Phase.ERROR}
    assert set(RECEIVED[Track.SENDER]) == first | {Phase.OFFERING}
    assert set(RECEIVED[Track.RECEIVER]) == first | {Phase.AWAITING_MANIFEST, Phase.PLANNING, Phase.CARRYING}
    further = {Phase.GREETING, Phase.CONFIRMING, Phase.JOINING, Phase.CARRYING, Phase.ERROR}
    assert set(RECEIVED[Track.FURTHER_SENDER]) == further
    assert set(Phase) == set(RECEIVED[Track.SENDER]) | set(RECEIVED[Track.RECEIVER]) | further


@pytest.mark.parametrize(("track", "phase", "ftype"), WALK, ids=lambda v: getattr(v, "name", v))
def test_every_frame_in_every_phase_is_taken_or_refused_as_the_table_says(
    track: Track, phase: Phase, ftype: FrameType
) -> None:
    machine, peer = MACHINES[track](phase)
    allowed = RECEIVED[track][phase]
    if phase is Phase.ERROR:
        with pytest.raises(ConnectionFailed):
            peer.send(SAMPLES[ftype])
        return
    if ftype not in allowed:
        with pytest.raises(RemoteProtocolError, match=f"unexpected {ftype.name} frame from the peer while") as caught:
            peer.send(SAMPLES[ftype])
        assert caught.value.phase is phase and machine.phase is Phase.ERROR
        with pytest.raises(ConnectionFailed):  # and it stays failed
            machine.on_timer(1.0)
        return
    try:
        peer.send(SAMPLES[ftype])
    except ProtocolError as exc:  # the type was allowed; the sample's contents may not fit this transfer
        assert "unexpected" not in exc.message or ftype.name not in exc.message
        assert machine.phase is Phase.ERROR
        return
    assert machine.phase is (allowed[ftype] or phase)


def test_each_legal_move_of_a_transfer_lands_where_the_table_says() -> None:
    for track, phases in RECEIVED.items():
        for phase in phases:
            if phase is not Phase.ERROR:
                assert MACHINES[track](phase)[0].phase is phase  # reached by legal frames and calls alone


@pytest.mark.parametrize(("track", "phase", "ftype"), WALK, ids=lambda v: getattr(v, "name", v))
def test_a_driver_may_send_only_what_the_sent_table_lists(track: Track, phase: Phase, ftype: FrameType) -> None:
    allowed = SENT[track].get(phase, {})
    if ftype in allowed:
        assert after_sent(track, phase, ftype) is (allowed[ftype] or phase)
    else:
        with pytest.raises(LocalProtocolError, match=f"cannot send {ftype.name}"):
            after_sent(track, phase, ftype)
    if ftype in RECEIVED[track][phase]:
        assert after_received(track, phase, ftype) is (RECEIVED[track][phase][ftype] or phase)
