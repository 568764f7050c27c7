"""Sender and receiver state machines, driven by plain function calls."""

from __future__ import annotations

import os
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtransfer.protocol.constants import Cause, FrameType, Phase, Role
from rtransfer.protocol.errors import (
    ConnectionFailed,
    HandshakeRefused,
    LimitExceeded,
    LocalProtocolError,
    PeerFailed,
    PeerSilent,
    ProtocolError,
    RemoteProtocolError,
    Unrepairable,
)
from rtransfer.protocol.events import (
    ChunkReady,
    ChunkRejected,
    ChunksAcked,
    DuplicateChunk,
    EntriesReceived,
    FileComplete,
    FilesVerified,
    PackReady,
    Retransmitted,
    TransferComplete,
)
from rtransfer.protocol.messages import (
    PROTOCOL_VERSION,
    Accept,
    Ack,
    Confirm,
    Data,
    Done,
    ErrorFrame,
    FileEnd,
    FileResult,
    Hello,
    Hints,
    Nack,
    Ping,
    Pong,
)
from rtransfer.protocol.model import Entry, EntryBatch
from rtransfer.protocol.pack import PackedFile, table_bytes, write_table
from rtransfer.protocol.receiver import ReceiveLimits
from rtransfer.protocol.sender import MAX_CHUNK_FAILURES
from rtransfer.protocol.tries import Step
from rtransfer.protocol.writing import encode_bytes
from tests.unit.harness import CHUNK, CODE, Pair, frames_of, manifest, new_receiver, new_sender, send_file


def finish(pair: Pair) -> None:
    pair.sender.finish(pair.now)
    for _ in range(10):
        pair.to_receiver()
        pair.verify_completed_files()
        pair.to_sender()
    assert any(isinstance(e, TransferComplete) for e in pair.receiver_events)
    assert any(isinstance(e, TransferComplete) for e in pair.sender_events)


def test_the_receivers_done_waits_for_its_last_steps() -> None:
    """The sender exited 0 before the receiver's links, --delete, directory times and final
    renames: a failure there was the receiver's alone."""
    with pytest.raises(LocalProtocolError, match="finish called before every file"):
        Pair.accepted(manifest(5)).receiver.finish(0.0)
    pair = Pair.accepted(manifest(5))
    pair.ended = True  # this test plays the driver's last steps itself
    send_file(pair, 0, b"hello")
    pair.sender.finish(pair.now)
    for _ in range(3):
        pair.to_receiver()
        pair.verify_completed_files()
        assert not any(isinstance(e, TransferComplete) for e in pair.to_sender())  # no DONE yet
    assert any(isinstance(e, TransferComplete) for e in pair.receiver_events)
    assert pair.sender.phase is pair.receiver.phase is Phase.FINISHING
    pair.receiver.finish(pair.now)
    assert any(isinstance(e, TransferComplete) for e in pair.to_sender())
    assert pair.sender.phase is pair.receiver.phase is Phase.CLOSED


def test_clean_transfer_delivers_every_byte_in_order_and_both_sides_complete() -> None:
    payloads = [os.urandom(CHUNK * 3 + 17), b"", os.urandom(CHUNK)]
    pair = Pair.accepted(manifest(*(len(p) for p in payloads)))
    for i, p in enumerate(payloads):
        send_file(pair, i, p)
    finish(pair)
    written = pair.written()
    assert [written.get(i, b"") for i in range(3)] == payloads
    assert sum(len(e.file_indices) for e in pair.sender_events if isinstance(e, FilesVerified)) == 3


def test_reordered_chunks_are_handed_out_in_order() -> None:
    data = os.urandom(CHUNK * 4)
    pair = Pair.accepted(manifest(len(data)))
    for off in range(0, len(data), CHUNK):
        pair.sender.send_chunk(0, off, data[off : off + CHUNK], 0.0)
    frames = frames_of(pair.sender.data_to_send())
    pair.to_receiver(list(reversed(frames)))
    assert pair.written()[0] == data


def test_duplicate_chunk_is_acked_but_not_handed_out_twice() -> None:
    data = os.urandom(CHUNK * 2)
    pair = Pair.accepted(manifest(len(data)))
    pair.sender.send_chunk(0, 0, data[:CHUNK], 0.0)
    (frame,) = frames_of(pair.sender.data_to_send())
    pair.to_receiver([frame])
    pair.receiver.data_to_send()
    events = pair.to_receiver([frame])
    assert events == [DuplicateChunk(0)]
    assert [f for f in frames_of(pair.receiver.data_to_send()) if isinstance(f, Ack)] == [Ack(1, ())]
    assert sum(isinstance(e, ChunkReady) for e in pair.receiver_events) == 1


def test_lost_ack_makes_the_sender_resend_the_oldest_chunk_after_the_timeout() -> None:
    pair = Pair.accepted(manifest(CHUNK * 2))
    pair.sender.send_chunk(0, 0, b"a" * CHUNK, 0.0)
    pair.sender.send_chunk(0, CHUNK, b"b" * CHUNK, 0.0)
    pair.to_receiver()
    pair.receiver.data_to_send()  # the ACK is lost
    deadline, rto_s = pair.sender.next_deadline(), pair.sender.rto_s
    assert pair.sender.on_timer(deadline - 0.01) == []
    events = pair.sender.on_timer(deadline)
    assert events == [Retransmitted(0, "timeout")]
    resent = [f for f in frames_of(pair.sender.data_to_send()) if isinstance(f, Data)]
    assert [f.seq for f in resent] == [0]
    assert pair.sender.rto_s == 2 * rto_s  # backed off


def test_a_backlogged_transport_restarts_the_retransmission_timer_instead_of_resending() -> None:
    pair = Pair.accepted(manifest(CHUNK))
    pair.sender.send_chunk(0, 0, b"a" * CHUNK, 0.0)
    pair.sender.data_to_send()
    deadline = pair.sender.next_deadline()
    pair.sender.backlogged(deadline)  # the chunk has not left the driver's transport yet
    assert pair.sender.on_timer(deadline) == []
    assert pair.sender.on_timer(deadline + pair.sender.rto_s) == [Retransmitted(0, "timeout")]


def test_retransmit_timeout_backs_off_exponentially_and_resets_on_progress() -> None:
    pair = Pair.accepted(manifest(CHUNK))
    pair.sender.send_chunk(0, 0, b"a" * CHUNK, 0.0)
    rtos = []
    for _ in range(3):
        rtos.append(pair.sender.rto_s)
        pair.now += pair.sender.rto_s
        assert pair.sender.on_timer(pair.now) == [Retransmitted(0, "timeout")]
    assert rtos[1] == 2 * rtos[0] and rtos[2] == 2 * rtos[1]
    pair.to_receiver()
    pair.to_sender()
    assert pair.sender.rto_s == rtos[0]


def test_nack_for_corrupt_chunk_triggers_immediate_resend() -> None:
    data = os.urandom(CHUNK)
    pair = Pair.accepted(manifest(CHUNK))
    pair.sender.send_chunk(0, 0, data, 0.0)
    raw = bytearray(b"".join(bytes(p) for p in pair.sender.data_to_send()))
    raw[-5] ^= 0x10
    events = pair.receiver.receive_data(bytes(raw), 0.0)
    assert events == [ChunkRejected(0)]
    events = pair.to_sender()
    assert Retransmitted(0, "nack") in events and ChunkRejected(0) in events
    pair.to_receiver()
    assert pair.written()[0] == data


@pytest.mark.parametrize("failures", [MAX_CHUNK_FAILURES - 1, MAX_CHUNK_FAILURES])
def test_a_chunk_damaged_every_time_ends_in_an_integrity_error_not_an_endless_resend(failures: int) -> None:
    data = os.urandom(CHUNK)
    pair = Pair.accepted(manifest(CHUNK))
    pair.sender.send_chunk(0, 0, data, 0.0)
    for attempt in range(1, failures + 1):
        raw = bytearray(b"".join(bytes(p) for p in pair.sender.data_to_send()))
        raw[-5] ^= 0x10
        assert pair.receiver.receive_data(bytes(raw), 0.0) == [ChunkRejected(0)]
        if attempt == MAX_CHUNK_FAILURES:
            with pytest.raises(Unrepairable, match=f"offset 0 failed its check {MAX_CHUNK_FAILURES} times"):
                pair.to_sender()
            return
        assert Retransmitted(0, "nack") in pair.to_sender()
    pair.to_receiver()  # one attempt short of the limit, a clean copy still gets through
    assert pair.written()[0] == data


def test_window_limits_chunks_in_flight_until_acked() -> None:
    pair = Pair.accepted(manifest(CHUNK * 10, window=3))
    for i in range(3):
        pair.sender.send_chunk(0, i * CHUNK, b"x" * CHUNK, 0.0)
    assert not pair.sender.can_send()
    pair.to_receiver()
    pair.to_sender()
    assert pair.sender.can_send() and pair.sender.in_flight == 0
    for i in range(3, 6):
        pair.sender.send_chunk(0, i * CHUNK, b"x" * CHUNK, 0.0)
    with pytest.raises(LocalProtocolError, match="window"):
        pair.sender.send_chunk(0, 6 * CHUNK, b"x" * CHUNK, 0.0)


def test_window_is_anchored_at_the_oldest_unacked_chunk() -> None:
    pair = Pair.accepted(manifest(CHUNK * 10, window=3))
    for i in range(3):
        pair.sender.send_chunk(0, i * CHUNK, b"x" * CHUNK, 0.0)
    frames = frames_of(pair.sender.data_to_send())
    pair.to_receiver(frames[1:])  # seq 0 lost: 1 and 2 are acked selectively
    pair.to_sender()
    assert pair.sender.in_flight == 1
    assert not pair.sender.can_send()  # seq 3 would be outside [0, 3)


def test_sequence_number_outside_the_window_is_a_protocol_error() -> None:
    pair = Pair.accepted(manifest(CHUNK * 10, window=3))
    with pytest.raises(RemoteProtocolError, match="outside the window"):
        pair.to_receiver([Data(3, 0, 3 * CHUNK, b"x" * CHUNK)])


def test_data_before_accept_is_a_protocol_error() -> None:
    pair = Pair.handshaken(manifest(CHUNK))
    with pytest.raises(RemoteProtocolError, match="unexpected DATA frame from the peer while planning"):
        pair.to_receiver([Data(0, 0, 0, b"x")])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Data(0, 0, CHUNK, b"x" * CHUNK), "expected 0"),
        (Data(0, 5, 0, b"x"), "not a file this transfer is receiving"),
        (Data(0, 0, 0, b"x" * (CHUNK + 1)), "breaks chunking"),
    ],
)
def test_chunks_that_do_not_fit_the_file_are_protocol_errors(frame: Data, message: str) -> None:
    pair = Pair.accepted(manifest(CHUNK * 2))
    with pytest.raises(ProtocolError, match=message):
        pair.to_receiver([frame])


def test_data_past_the_declared_size_is_a_protocol_error() -> None:
    pair = Pair.accepted(manifest(10))
    with pytest.raises(ProtocolError, match="past the declared size"):
        pair.to_receiver([Data(0, 0, 0, b"x" * 11)])


def test_declared_totals_above_the_limits_are_refused() -> None:
    with pytest.raises(LimitExceeded, match="declares 200 bytes"):
        Pair.handshaken(manifest(100, 100), limits=ReceiveLimits(max_entries=10, max_total_bytes=150))


def test_digest_mismatch_at_the_receiver_fails_the_sender_with_an_integrity_error() -> None:
    pair = Pair.accepted(manifest(5))
    pair.sender.send_chunk(0, 0, b"hello", 0.0)
    pair.sender.end_file(0, 5, blake3.blake3(b"HELLO").digest(), 0.0)
    pair.to_receiver()
    pair.verify_completed_files()
    assert pair.receiver_events[-1] == FileComplete(0, 5, blake3.blake3(b"HELLO").digest())
    with pytest.raises(Unrepairable, match="f0: whole-file BLAKE3 digest mismatch"):
        pair.to_sender()


def test_stream_of_unknown_size_completes_at_its_file_end() -> None:
    data = os.urandom(CHUNK + 100)
    pair = Pair.accepted(manifest(None))
    send_file(pair, 0, data)
    finish(pair)
    assert pair.written()[0] == data


def test_idle_peer_gets_pinged_and_silent_peer_is_declared_dead() -> None:
    pair = Pair.accepted(manifest(CHUNK), timeout_s=8.0)
    pair.now = pair.sender.next_deadline()
    pair.sender.on_timer(pair.now)
    assert any(isinstance(f, Ping) for f in frames_of(pair.sender.data_to_send()))
    pair.receiver.receive_data(encode_bytes(Ping(1)), pair.now)
    assert Pong(1) in frames_of(pair.receiver.data_to_send())
    with pytest.raises(PeerSilent, match="peer silent for 9 s"):
        pair.sender.on_timer(9.0)


@pytest.mark.parametrize(
    ("hello", "message"),
    [
        (Hello(Role.SENDER, PROTOCOL_VERSION + 1), "protocol version"),
        (Hello(Role.RECEIVER), "both ends are receivers"),
    ],
)
def test_incompatible_hello_is_refused(hello: Hello, message: str) -> None:
    receiver = new_receiver()
    with pytest.raises(HandshakeRefused, match=message):
        receiver.receive_data(encode_bytes(hello), 0.0)


def test_garbage_instead_of_a_hello_fails_the_machine_while_it_greets() -> None:
    receiver = new_receiver()
    with pytest.raises(RemoteProtocolError, match="unknown frame type") as caught:
        receiver.receive_data(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    assert caught.value.phase is Phase.GREETING  # what makes it a refused handshake (exit 5), see outcome.py
    assert receiver.phase is Phase.ERROR


def test_error_frame_from_peer_surfaces_with_its_cause() -> None:
    from rtransfer.protocol.constants import Cause
    from rtransfer.protocol.messages import ErrorFrame

    pair = Pair.accepted(manifest(5))
    with pytest.raises(PeerFailed, match="peer: disk full") as info:
        pair.to_sender([ErrorFrame(Cause.LOCAL, "disk full")])
    assert info.value.cause is Cause.LOCAL and info.value.phase is Phase.TRANSFERRING


def test_file_result_for_a_file_never_ended_is_a_protocol_error() -> None:
    pair = Pair.accepted(manifest(5))
    with pytest.raises(RemoteProtocolError):
        pair.to_sender([FileResult(0, True)])


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, CHUNK * 3), min_size=1, max_size=3),
    st.integers(0, 2**32),
    st.floats(0, 0.3),
    st.floats(0, 0.3),
)
def test_any_mix_of_loss_reordering_and_duplication_delivers_exact_bytes(
    sizes: list[int], seed: int, loss: float, dup: float
) -> None:
    """A seeded generator, not ``st.randoms()``: hypothesis picks those values itself and
    shrinks to a network that drops every copy of a chunk forever, which no protocol survives."""
    import random

    rnd = random.Random(seed)
    payloads = [rnd.randbytes(n) for n in sizes]
    pair = Pair.accepted(manifest(*sizes, window=4))
    chunks = [(i, off, p[off : off + CHUNK]) for i, p in enumerate(payloads) for off in range(0, len(p), CHUNK)]
    ended = 0

    def network_step() -> None:
        frames = frames_of(pair.sender.data_to_send())
        data = [f for f in frames if isinstance(f, Data) and rnd.random() >= loss]
        data += [f for f in data if rnd.random() < dup]
        rnd.shuffle(data)
        control = [f for f in frames if not isinstance(f, Data)]  # in order, after the data
        pair.to_receiver(data + control)
        pair.verify_completed_files()
        pair.to_sender()

    for _ in range(400):
        if pair.sender.phase is Phase.CLOSED:
            break
        while chunks and pair.sender.can_send():
            i, off, data = chunks.pop(0)
            pair.sender.send_chunk(i, off, data, pair.now)
            if not chunks or chunks[0][0] != i:
                pair.sender.end_file(i, len(payloads[i]), blake3.blake3(payloads[i]).digest(), pair.now)
                ended += 1
        if not chunks and ended == len(payloads) and pair.sender.phase is Phase.TRANSFERRING:
            pair.sender.finish(pair.now)
        network_step()
        pair.now += 5.0  # a heartbeat's worth: the sender pings, the receiver's PONG comes back next step
        pair.sender.on_timer(pair.now)
    assert pair.sender.phase is Phase.CLOSED
    assert [pair.written().get(i, b"") for i in range(len(payloads))] == payloads


FRAME_SAMPLES = [
    Data(0, 0, 0, b"x" * CHUNK),
    Data(1, 0, CHUNK, b"y" * 10),
    Data(0, 1, 0, b"z"),
    Data(5, 0, 0, b"w"),
    Ack(1, ()),
    Ack(3, (5,)),
    Nack(0),
    FileEnd(0, CHUNK, b"\0" * 32),
    FileEnd(1, 1, b"\1" * 32),
    FileResult(0, True),
    FileResult(0, False),
    Done(),
    Ping(1),
    Pong(2),
    Hello(Role.SENDER),
    Confirm(),
    Accept({0: 5}),
    ErrorFrame(Cause.INTEGRITY, "bad"),
]


@settings(max_examples=300)
@given(st.binary(max_size=600), st.sampled_from(["sender", "receiver"]), st.booleans())
def test_any_bytes_give_events_or_a_protocol_error_never_another_exception(
    raw: bytes, side: str, after_handshake: bool
) -> None:
    if after_handshake:
        pair = Pair.accepted(manifest(CHUNK * 3, None))
        machine = pair.sender if side == "sender" else pair.receiver
    else:
        machine = new_receiver() if side == "receiver" else None  # type: ignore[assignment]
        if machine is None:
            machine = new_sender(manifest(CHUNK), CODE)
    try:
        machine.receive_data(raw, 1.0)
    except RemoteProtocolError:
        assert machine.phase is Phase.ERROR
        return
    assert machine.get_buffer().nbytes <= 16 * 1024 * 1024 + 64


@settings(max_examples=200)
@given(st.lists(st.sampled_from(range(len(FRAME_SAMPLES))), max_size=12))
def test_any_sequence_of_well_formed_frames_gives_events_or_a_protocol_error(order: list[int]) -> None:
    pair = Pair.accepted(manifest(CHUNK * 3, None))
    frames = [FRAME_SAMPLES[i] for i in order]
    for machine, deliver in ((pair.receiver, pair.to_receiver), (pair.sender, pair.to_sender)):
        try:
            deliver(frames)
        except RemoteProtocolError as exc:
            assert machine.phase is Phase.ERROR and exc.phase is not None  # failed, where it was
            with pytest.raises(ConnectionFailed):  # and stays failed
                machine.on_timer(pair.now)
        else:
            assert machine.phase is not Phase.ERROR


@pytest.mark.parametrize("encrypt", [False, True])
def test_only_buffers_of_chunks_sent_once_are_released_for_reuse(encrypt: bool) -> None:
    from rtransfer.protocol.events import ChunksAcked

    pair = Pair.accepted(manifest(CHUNK * 2), encrypt=encrypt)
    first, second = bytearray(b"a" * CHUNK), bytearray(b"b" * CHUNK)
    pair.sender.send_chunk(0, 0, memoryview(first), 0.0)
    pair.sender.send_chunk(0, CHUNK, memoryview(second), 0.0)
    pair.now = pair.sender.next_deadline()
    assert Retransmitted(0, "timeout") in pair.sender.on_timer(pair.now)  # seq 0 now has two copies in flight
    pair.to_receiver()
    (acked,) = [e for e in pair.to_sender() if isinstance(e, ChunksAcked)]
    owners = [b.obj if isinstance(b, memoryview) else b for b in acked.released]
    assert not any(o is first for o in owners)  # a resent copy may still sit in the transport
    assert sum(o is second for o in owners) == 1  # released once, never twice
    assert len(owners) == (2 if encrypt else 1)  # its ciphertext buffer too, when sealed


@pytest.mark.parametrize("encrypt", [False, True])
def test_written_ciphertext_is_taken_back_once_and_never_released_again_by_the_ack(encrypt: bool) -> None:
    from rtransfer.protocol.events import ChunksAcked

    pair = Pair.accepted(manifest(CHUNK * 2), encrypt=encrypt)
    first, second = bytearray(b"a" * CHUNK), bytearray(b"b" * CHUNK)
    pair.sender.send_chunk(0, 0, memoryview(first), 0.0)
    taken = pair.sender.take_written()
    assert len(taken) == (1 if encrypt else 0)  # unsealed, the payload itself is the wire buffer
    assert all(isinstance(t, memoryview) and t.obj is not first for t in taken)
    assert pair.sender.take_written() == []
    pair.sender.send_chunk(0, CHUNK, memoryview(second), 0.0)
    pair.to_receiver()
    (acked,) = [e for e in pair.to_sender() if isinstance(e, ChunksAcked)]
    owners = [b.obj if isinstance(b, memoryview) else b for b in acked.released]
    assert not any(o is t.obj for o in owners for t in taken)  # taken back once, not again
    assert sum(o is first for o in owners) == 1 and sum(o is second for o in owners) == 1  # payloads wait for the ACK
    assert len(owners) == (3 if encrypt else 2)  # second's ciphertext was never taken


def test_a_peer_reporting_a_broken_link_says_so_in_its_cause() -> None:
    from rtransfer.protocol.constants import Cause
    from rtransfer.protocol.messages import ErrorFrame

    pair = Pair.accepted(manifest(5))
    with pytest.raises(PeerFailed, match="peer: corrupt ACK frame") as caught:
        pair.to_receiver([ErrorFrame(Cause.LINK, "corrupt ACK frame")])
    assert caught.value.cause is Cause.LINK


def _pack(*files: tuple[int, bytes]) -> bytes:
    """A pack's payload, as the sender lays it out (protocol/pack.py)."""
    rows = [PackedFile(i, len(data), blake3.blake3(data).digest()) for i, data in files]
    buf = bytearray(table_bytes(len(rows)) + sum(len(d) for _, d in files))
    write_table(memoryview(buf), rows)
    buf[table_bytes(len(rows)) :] = b"".join(d for _, d in files)
    return bytes(buf)


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_pack_is_authenticated_only_when_it_was_sealed(encrypt: bool) -> None:
    """The writer skips its own BLAKE3 pass over a sealed pack: the AES-GCM tag proved its bytes."""
    pair = Pair.accepted(manifest(3), encrypt=encrypt)
    pair.sender.send_pack((0,), _pack((0, b"abc")), pair.now)
    (ready,) = [e for e in pair.to_receiver() if isinstance(e, PackReady)]
    assert ready.authenticated is encrypt


def test_a_pack_carries_whole_files_each_confirmed_with_one_result() -> None:
    contents = [b"", b"a", os.urandom(100)]
    pair = Pair.accepted(manifest(*(len(c) for c in contents)))
    pair.sender.send_pack((0, 1, 2), _pack(*enumerate(contents)), pair.now)
    (ready,) = [e for e in pair.to_receiver() if isinstance(e, PackReady)]
    assert [(f.file_index, f.size) for f in ready.files] == [(0, 0), (1, 1), (2, 100)]
    assert [bytes(ready.payload[f.start : f.start + f.size]) for f in ready.files] == contents
    pair.receiver_events.extend(pair.receiver.pack_written(ready.order, True, pair.now))
    pair.to_receiver()
    events = pair.to_sender()
    assert [e.file_indices for e in events if isinstance(e, FilesVerified)] == [(0, 1, 2)]
    assert next(e for e in events if isinstance(e, ChunksAcked)).bytes == 101  # the table is not file data
    pair.sender.finish(pair.now)
    assert any(isinstance(e, TransferComplete) for e in pair.to_receiver())
    pair.receiver.finish(pair.now)  # the last steps taken
    assert any(isinstance(e, TransferComplete) for e in pair.to_sender())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (((0, b"abc"),), "started or of another size"),  # declared as 5 bytes
        (((1, b"xy"), (1, b"xy")), "not a file this transfer is receiving"),  # the same file twice
        (((7, b"xy"),), "not a file this transfer is receiving"),
    ],
)
def test_a_pack_that_does_not_match_the_file_list_is_a_protocol_error(
    files: tuple[tuple[int, bytes], ...], message: str
) -> None:
    pair = Pair.accepted(manifest(5, 2))
    with pytest.raises(RemoteProtocolError, match=message):
        pair.to_receiver([Data(0, files[0][0], 0, _pack(*files), FrameType.PACK)])


def test_the_file_list_streams_in_batches_each_accepted_before_its_data() -> None:
    listing = manifest()
    pair = Pair.handshaken(listing)
    first = pair.sender.send_entries((Entry("a", "file", 1, 0o644, 0),), False, pair.now)
    second = pair.sender.send_entries((Entry("b", "file", 1, 0o644, 0),), True, pair.now)
    batches = [e.batch for e in pair.to_receiver() if isinstance(e, EntriesReceived)]
    assert [(b.first, b.last) for b in batches] == [(first, False), (second, True)]
    pair.receiver.accept(first, {}, pair.now)
    pair.to_sender()
    assert pair.sender.batches_unaccepted == 1
    pair.receiver.accept(second, {}, pair.now, done=(second,))
    pair.to_sender()
    send_file(pair, first, b"a")
    pair.to_receiver()
    pair.verify_completed_files()
    pair.sender.finish(pair.now)
    pair.to_receiver()
    pair.verify_completed_files()
    pair.to_sender()
    assert pair.sender.phase is pair.receiver.phase is Phase.CLOSED


def _two_batches_one_accepted() -> tuple[Pair, int, int]:
    pair = Pair.handshaken(manifest())
    first = pair.sender.send_entries((Entry("a", "file", 1, 0o644, 0),), False, pair.now)
    second = pair.sender.send_entries((Entry("b", "file", 1, 0o644, 0),), True, pair.now)
    pair.to_receiver()
    pair.receiver.accept(first, {}, pair.now)
    pair.to_sender()
    return pair, first, second


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, first, second: p.sender.send_chunk(second, 0, b"b", p.now), "before their batch was accepted"),
        (lambda p, first, second: p.sender.finish(p.now), "every file was listed, accepted and sent"),
        (lambda p, first, second: p.receiver.accept(first, {}, p.now), "out of order"),
        (lambda p, first, second: p.receiver.file_verified(second, True, p.now), "not being received"),
    ],
)
def test_a_driver_calling_out_of_turn_is_refused_and_the_machine_stays_failed(call: Any, message: str) -> None:
    pair, first, second = _two_batches_one_accepted()
    with pytest.raises(LocalProtocolError, match=message):
        call(pair, first, second)
    machine = pair.sender if pair.sender.phase is Phase.ERROR else pair.receiver
    assert machine.phase is Phase.ERROR
    with pytest.raises(ConnectionFailed, match="has failed"):
        machine.on_timer(pair.now)


def test_an_entries_batch_out_of_sequence_is_a_protocol_error() -> None:
    pair = Pair.handshaken(manifest())
    with pytest.raises(RemoteProtocolError, match="ENTRIES starting at 5; expected 0"):
        pair.to_receiver([EntryBatch(5, (Entry("x", "file", 1),), True)])


def test_a_file_may_not_begin_before_the_one_before_has_all_its_bytes() -> None:
    """A sender that opened file after file and finished none held a descriptor and a buffer at the
    receiver for each (2,949 descriptors, 1.8 GB, for little on the wire)."""
    pair = Pair.accepted(manifest(3 * CHUNK, 3 * CHUNK, 3 * CHUNK))
    pair.to_receiver([Data(0, 0, 0, bytes(CHUNK))])
    with pytest.raises(RemoteProtocolError, match="began before file 0 had all its bytes"):
        pair.to_receiver([Data(1, 1, 0, bytes(CHUNK), order=1)])


def test_only_a_few_files_may_wait_for_their_file_end() -> None:
    sizes = [CHUNK] * 12
    pair = Pair.accepted(manifest(*sizes, window=2))
    with pytest.raises(RemoteProtocolError, match="no FILE_END"):
        for index in range(12):  # every file's bytes, never its FILE_END
            pair.to_receiver([Data(index, index, 0, bytes(CHUNK), order=index)])


def test_file_ends_a_little_behind_the_next_files_bytes_are_fine() -> None:
    """FILE_END travels on the first connection and may come after the next file's chunks on others."""
    pair = Pair.accepted(manifest(CHUNK, CHUNK, CHUNK, window=2))
    for index in range(3):
        pair.to_receiver([Data(index, index, 0, bytes(CHUNK), order=index)])
    digest = blake3.blake3(bytes(CHUNK)).digest()
    pair.to_receiver([FileEnd(i, CHUNK, digest) for i in range(3)])
    assert sum(isinstance(e, FileComplete) for e in pair.receiver_events) == 3


def test_go_direct_is_taken_only_where_this_side_offered_a_direct_path() -> None:
    from rtransfer.protocol.events import DirectChosen

    pair = Pair.handshaken(manifest(CHUNK), encrypt=True)
    pair.sender._tries.step = Step.ANSWERED  # forged, as a hostile sender would send it
    pair.sender.go_direct(b"i" * 32)
    with pytest.raises(RemoteProtocolError, match="never offered"):
        pair.to_receiver()
    pair = Pair.handshaken(manifest(CHUNK), encrypt=True)
    pair.receiver.send_hints(Hints((("10.0.0.1", 4000),), ()))  # the receiver opens a try
    pair.receiver.send_hints(Hints((), ()))  # its dials failed; it still listens
    pair.to_sender()
    pair.sender.send_hints(Hints((("10.0.0.2", 4001),), ()))
    pair.sender.go_direct(b"i" * 32)
    assert DirectChosen(b"i" * 32) in pair.to_receiver()
    pair.receiver.send_hints(Hints((("10.0.0.1", 4000),), ()))  # a second try
    pair.to_sender()
    pair.sender.send_hints(Hints((("10.0.0.2", 4001),), ()))
    pair.sender.send_hints(Hints((), ()))  # the sender ends it: nothing is offered any more
    pair.to_receiver()
    pair.sender._tries.step = Step.ANSWERED  # a forged GO_DIRECT, as a hostile sender would send it
    pair.sender.go_direct(b"j" * 32)
    with pytest.raises(RemoteProtocolError, match="never offered"):
        pair.to_receiver()
    pair = Pair.handshaken(manifest(CHUNK), encrypt=True)
    pair.receiver.send_hints(Hints((("10.0.0.1", 4000),), ()))
    pair.to_sender()
    with pytest.raises(LocalProtocolError, match="never offered"):
        pair.sender.go_direct(b"i" * 32)  # this side checks itself: not before it answered the try
