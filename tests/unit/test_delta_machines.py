"""Delta and compressed chunks at the protocol machines: what the receiver lets a COPY take, and
the signatures that travel ahead of an ACCEPT."""

from __future__ import annotations

import pytest

from rtransfer.protocol.constants import MAX_SIGNATURE_CHUNKS, FrameType, Phase
from rtransfer.protocol.errors import ProtocolError, RemoteProtocolError
from rtransfer.protocol.events import ChunkReady, EntriesReceived, FileComplete, SignatureReceived
from rtransfer.protocol.messages import Data, copy_payload
from rtransfer.protocol.model import Signature
from tests.unit.harness import CHUNK, Pair, manifest

OLD_BYTES = 3 * CHUNK
BASIS = tuple((CHUNK, bytes([i]) * 16) for i in range(3))


def described(sizes: tuple[int, ...] = (4 * CHUNK,), basis: tuple[tuple[int, bytes], ...] = BASIS) -> Pair:
    """File 0 accepted with an old copy here, described to the sender."""
    pair = Pair.handshaken(manifest(*sizes))
    (batch,) = [e.batch for e in pair.receiver_events if isinstance(e, EntriesReceived)]
    pair.receiver.accept(batch.first, {}, pair.now, bases={0: basis})
    pair.to_sender()
    assert pair.sender.phase is Phase.TRANSFERRING
    return pair


def test_the_signature_reaches_the_sender_before_the_accept_in_frames_of_bounded_size() -> None:
    basis = tuple((1, i.to_bytes(16, "big")) for i in range(MAX_SIGNATURE_CHUNKS + 5))
    pair = described(basis=basis)
    signatures = [e.signature for e in pair.sender_events if isinstance(e, SignatureReceived)]
    assert [(s.file_index, s.offset, len(s.chunks)) for s in signatures] == [
        (0, 0, MAX_SIGNATURE_CHUNKS),
        (0, MAX_SIGNATURE_CHUNKS, 5),
    ]
    assert sum((s.chunks for s in signatures), ()) == basis


def test_a_delta_of_copies_and_short_literals_completes_its_file() -> None:
    pair = described()
    sender = pair.sender
    order = sender.claim_chunk(0)
    sender.send_data(Data(0, 0, 0, copy_payload([(CHUNK, CHUNK), (0, CHUNK)]), FrameType.COPY, order), pair.now)
    sender.send_data(Data(0, 0, 2 * CHUNK, b"new", order=sender.claim_chunk(0)), pair.now)  # short, not last
    order = sender.claim_chunk(0)
    sender.send_data(Data(0, 0, 2 * CHUNK + 3, copy_payload([(3, 2 * CHUNK - 3)]), FrameType.COPY, order), pair.now)
    sender.end_file(0, 4 * CHUNK, b"d" * 32, pair.now)
    events = pair.to_receiver()
    ready = [(e.offset, e.kind) for e in events if isinstance(e, ChunkReady)]
    assert ready == [(0, FrameType.COPY), (2 * CHUNK, FrameType.DATA), (2 * CHUNK + 3, FrameType.COPY)]
    assert any(isinstance(e, FileComplete) for e in events)


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([(OLD_BYTES - 1, 2)], "outside its old copy"),  # runs past the old copy's end
        ([(0, 0)], "outside its old copy"),  # an empty range
        ([(0, 5 * CHUNK)], "outside its old copy"),
    ],
)
def test_a_copy_outside_the_old_copy_is_a_protocol_error(ranges: list[tuple[int, int]], message: str) -> None:
    pair = described()
    with pytest.raises(RemoteProtocolError, match=message):
        pair.to_receiver([Data(0, 0, 0, copy_payload(ranges), FrameType.COPY)])


def test_a_copy_for_a_file_with_no_old_copy_is_a_protocol_error() -> None:
    pair = Pair.accepted(manifest(2 * CHUNK))
    with pytest.raises(RemoteProtocolError, match="outside its old copy"):
        pair.to_receiver([Data(0, 0, 0, copy_payload([(0, 1)]), FrameType.COPY)])


def test_a_short_chunk_not_at_the_end_of_a_whole_file_still_breaks_chunking() -> None:
    pair = Pair.accepted(manifest(3 * CHUNK))
    pair.to_receiver([Data(0, 0, 0, b"x" * 10)])
    with pytest.raises(ProtocolError, match="breaks chunking"):
        pair.to_receiver([Data(1, 0, 10, b"x" * CHUNK, order=1)])


@pytest.mark.parametrize(
    ("file_size", "declared", "message"),
    [(4 * CHUNK, CHUNK + 1, "breaks chunking"), (CHUNK // 2, CHUNK, "past the declared")],
)
def test_a_compressed_chunk_is_checked_at_the_size_it_declares(file_size: int, declared: int, message: str) -> None:
    pair = Pair.accepted(manifest(file_size))
    payload = declared.to_bytes(4, "big") + b"zstd"
    with pytest.raises(ProtocolError, match=message):
        pair.to_receiver([Data(0, 0, 0, payload, FrameType.ZDATA)])


def test_a_signature_for_a_file_not_awaiting_its_accept_is_a_protocol_error() -> None:
    pair = Pair.accepted(manifest(CHUNK))
    with pytest.raises(RemoteProtocolError, match="not a file awaiting its ACCEPT"):
        pair.to_sender([Signature(0, 0, ((1, b"d" * 16),))])
