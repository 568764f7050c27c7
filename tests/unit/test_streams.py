"""One transfer over two connections, at the machine level: the first owns the file list and the
transfer's numbering; the second joins and carries chunks; the receiver puts them back in order."""

from __future__ import annotations

import os

import blake3
import pytest

from rtransfer.crypto import KeyExchange
from rtransfer.protocol.constants import Phase
from rtransfer.protocol.errors import LocalProtocolError, RemoteProtocolError
from rtransfer.protocol.events import ChunkArrived, ChunkReady, JoinRequested, StreamJoined
from rtransfer.protocol.messages import Data
from rtransfer.protocol.model import Manifest
from rtransfer.protocol.receiver import ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from tests.unit.harness import CHUNK, CODE, Pair, manifest


def joined_pair(listing_manifest: Manifest) -> Pair:
    """A second connection of the transfer ``listing_manifest`` describes, joined."""
    pair = Pair(
        SenderMachine(listing_manifest, 0.0, 30.0, KeyExchange(CODE, True), encrypt=False, stream=1),
        ReceiverMachine(0.0, 30.0, KeyExchange(CODE, False), encrypt=False, running=listing_manifest),
    )
    for _ in range(3):
        pair.to_receiver()
        pair.to_sender()
    return pair


def hand_on(pair: Pair, first: Pair) -> list[object]:
    """Play the receiving driver: what ``pair``'s connection received goes to the first machine's
    ``deliver`` (whose output is the first pair's, as the writer sees it), then is acknowledged."""
    arrived = [e.chunk for e in pair.to_receiver() if isinstance(e, ChunkArrived)]
    out: list[object] = []
    for chunk in arrived:
        events = first.receiver.deliver(chunk, first.now)
        first.receiver_events.extend(events)
        out += events
        pair.receiver.handed_on(chunk.seq, first.now)
    return out


def two_streams(*sizes: int) -> tuple[Pair, Pair]:
    listing = manifest(*sizes, window=2)
    two = Manifest(listing.manifest.transfer_id, listing.manifest.chunk_bytes, 2, streams=2)
    first = Pair.accepted(type(listing)(two, listing.entries))
    return first, joined_pair(two)


def test_a_joined_connection_carries_chunks_that_the_first_puts_back_in_order() -> None:
    data = os.urandom(4 * CHUNK)
    first, second = two_streams(len(data))
    assert StreamJoined(1) in second.sender_events
    (join,) = [e for e in second.receiver_events if isinstance(e, JoinRequested)]
    assert join.manifest == first.sender.manifest and join.stream == 1
    orders = [first.sender.claim_chunk(0) for _ in range(4)]
    chunks = [Data(0, 0, i * CHUNK, data[i * CHUNK : (i + 1) * CHUNK], order=o) for i, o in enumerate(orders)]
    second.sender.send_data(chunks[1], 0.0)  # the second connection carries 1 and 3, ahead of 0 and 2
    second.sender.send_data(chunks[3], 0.0)
    received = second.to_receiver()
    assert [e.chunk.order for e in received if isinstance(e, ChunkArrived)] == [1, 3]
    assert second.to_sender() == []  # not acknowledged until handed on to the first connection's machine
    second.receiver_events.clear()
    second.receiver_events.extend(received)
    for event in received:
        assert isinstance(event, ChunkArrived)
        assert not [e for e in first.receiver.deliver(event.chunk, 0.0) if isinstance(e, ChunkReady)]  # wait for 0
        second.receiver.handed_on(event.chunk.seq, 0.0)
    first.sender.send_data(chunks[0], 0.0)
    first.sender.send_data(chunks[2], 0.0)
    hand_on(first, first)
    assert first.written()[0] == data  # every chunk once, in file order
    for pair in (first, second):  # each connection ACKs its own; the first learns of the others' through its driver
        acked = pair.to_sender()
        first.sender.delivered(tuple(o for e in acked for o in getattr(e, "orders", ())))
    assert first.sender.can_claim()
    first.sender.end_file(0, len(data), blake3.blake3(data).digest(), 0.0)
    hand_on(first, first)
    first.verify_completed_files()
    first.sender.finish(0.0)  # DONE goes on the first connection only: a joined one carries nothing but chunks
    first.to_receiver()
    first.verify_completed_files()  # the last steps, then the receiver's DONE
    first.to_sender()
    assert first.sender.phase is first.receiver.phase is Phase.CLOSED
    assert second.sender.phase is second.receiver.phase is Phase.CARRYING
    with pytest.raises(LocalProtocolError, match="further sender cannot send DONE while carrying"):
        second.sender.finish(0.0)


def test_the_transfer_holds_at_window_times_streams_chunks_beyond_the_oldest_unacknowledged() -> None:
    first, _ = two_streams(10 * CHUNK)
    claimed = [first.sender.claim_chunk(0) for _ in range(4)]  # window 2 x 2 streams
    assert claimed == [0, 1, 2, 3] and not first.sender.can_claim()
    with pytest.raises(LocalProtocolError, match="window"):
        first.sender.claim_chunk(0)


def test_a_chunk_dealt_twice_is_written_once() -> None:
    first, second = two_streams(CHUNK)
    order = first.sender.claim_chunk(0)
    chunk = Data(0, 0, 0, b"x" * CHUNK, order=order)
    first.sender.send_data(chunk, 0.0)
    second.sender.send_data(chunk, 0.0)  # dealt again: its first connection looked stalled
    hand_on(first, first)
    assert not [e for e in hand_on(second, first) if isinstance(e, ChunkReady)]
    assert first.written()[0] == b"x" * CHUNK


def test_a_joined_connection_cannot_number_chunks() -> None:
    _, second = two_streams(10 * CHUNK)
    with pytest.raises(LocalProtocolError, match="further connection"):
        second.sender.claim_chunk(0)


def test_a_chunk_past_the_receivers_reorder_window_is_a_protocol_error() -> None:
    first, second = two_streams(10 * CHUNK)
    far = Data(0, 0, 0, b"x" * CHUNK, order=99)  # a forged order far ahead
    second.sender.send_data(far, 0.0)
    (arrived,) = [e.chunk for e in second.to_receiver() if isinstance(e, ChunkArrived)]
    with pytest.raises(RemoteProtocolError, match="beyond the window"):
        first.receiver.deliver(arrived, 0.0)


def test_a_hedged_chunk_counts_as_progress_once_whichever_copy_is_acknowledged_first() -> None:
    import asyncio

    from rtransfer.buffers import BufferPool
    from rtransfer.protocol.events import ChunksAcked
    from rtransfer.session.streams import Dealer
    from rtransfer.stats import TransferStats

    first, _ = two_streams(10 * CHUNK)
    dealer = Dealer(first.sender, BufferPool(4), TransferStats("send"), asyncio.Event())
    dealer.hedged[5] = False  # order 5 went out on two connections
    assert dealer.first_acks(ChunksAcked((4, 5), (CHUNK, 10))) == CHUNK + 10
    assert dealer.first_acks(ChunksAcked((5, 6), (10, CHUNK))) == CHUNK  # the second copy of 5
