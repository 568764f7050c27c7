"""Authenticated key exchange and sealed frames, at the pure protocol layer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from rtransfer.codes import new_code, normalise_code
from rtransfer.crypto import KeyExchange, TransportExchange
from rtransfer.errors import WrongCode
from rtransfer.protocol.constants import Phase, Role
from rtransfer.protocol.errors import CorruptFrame, FrameAuthenticationError, HandshakeRefused, LocalProtocolError
from rtransfer.protocol.events import ChunkRejected, ManifestReceived, Retransmitted, TransferComplete
from rtransfer.protocol.messages import DATA_HEADER, HEADER, Hello
from rtransfer.protocol.peer import CAP_BY_TRANSPORT
from rtransfer.protocol.phases import AUTHENTICATING
from rtransfer.protocol.reading import FrameDecoder
from rtransfer.protocol.writing import encode_bytes
from rtransfer.session.outcome import to_error
from tests.unit.harness import CHUNK, CODE, Pair, frames_of, manifest, new_receiver, new_sender, send_file


def test_codes_are_short_readable_and_random() -> None:
    codes = {new_code() for _ in range(100)}
    assert len(codes) == 100
    assert all(re.fullmatch(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}", c) for c in codes)
    assert normalise_code("  7HK2-m9xq ") == b"7hk2-m9xq"


def test_encrypted_transfer_delivers_the_bytes_and_never_shows_them_on_the_wire() -> None:
    marker = b"SECRET-MARKER-" * 300
    data = os.urandom(100) + marker + os.urandom(100)
    pair = Pair.accepted(manifest(len(data)), encrypt=True)
    assert pair.sender.encrypted and pair.receiver.encrypted
    wire = bytearray()
    original = pair.sender.data_to_send

    def tap() -> list[bytes | bytearray | memoryview]:
        out = original()
        wire.extend(b"".join(bytes(p) for p in out))
        return out

    pair.sender.data_to_send = tap  # type: ignore[method-assign]
    send_file(pair, 0, data)
    pair.sender.finish(pair.now)
    for _ in range(5):
        pair.to_receiver()
        pair.verify_completed_files()
        pair.to_sender()
    assert pair.written()[0] == data
    assert any(isinstance(e, TransferComplete) for e in pair.sender_events)
    assert b"SECRET-MARKER" not in wire and len(wire) > len(data)


def refused_as_a_wrong_code(call: Callable[[], object]) -> None:
    """The machine fails on the peer's first sealed frame, before CONFIRM: the edge calls that a
    wrong code (exit 5, never retried)."""
    with pytest.raises(FrameAuthenticationError) as caught:
        call()
    assert caught.value.phase is Phase.CONFIRMING
    error = to_error(caught.value)
    assert isinstance(error, WrongCode) and error.exit_code == 5
    assert error.message == "authentication failed: the codes do not match"


def test_wrong_code_is_refused_by_the_receiver() -> None:
    refused_as_a_wrong_code(lambda: Pair.handshaken(manifest(CHUNK), encrypt=True, sender_code=b"wrong-code"))


def test_wrong_code_is_refused_by_the_sender_too() -> None:
    sender = new_sender(manifest(CHUNK), b"wrong-code")
    receiver = new_receiver(b"right-code")
    receiver.receive_data(b"".join(bytes(p) for p in sender.data_to_send()), 0.0)  # sender HELLO only
    refused_as_a_wrong_code(lambda: sender.receive_data(b"".join(bytes(p) for p in receiver.data_to_send()), 0.0))


def test_a_key_exchange_started_before_the_connection_serves_the_handshake() -> None:
    """A listener runs SPAKE2's first step before anyone connects; its HELLO carries that message."""
    started = KeyExchange(CODE, is_sender=False)
    (hello,) = frames_of(new_receiver(started).data_to_send())
    assert isinstance(hello, Hello) and hello.auth == started.message
    pair = Pair.handshaken(manifest(CHUNK), encrypt=True, receiver_code=KeyExchange(CODE, is_sender=False))
    assert pair.receiver.encrypted and any(isinstance(e, ManifestReceived) for e in pair.receiver_events)
    with pytest.raises(LocalProtocolError, match="other role"):
        new_receiver(KeyExchange(CODE, is_sender=True))


def test_downgrading_a_hello_in_transit_fails_key_confirmation() -> None:
    sender = new_sender(manifest(CHUNK), b"code")
    receiver = new_receiver(b"code")
    decoder = FrameDecoder()
    decoder.feed(b"".join(bytes(p) for p in sender.data_to_send()))
    (hello,) = list(decoder.frames())
    assert isinstance(hello, Hello) and hello.capabilities == 1
    forged = Hello(hello.role, hello.version, 0, hello.auth)  # "please don't encrypt"
    receiver.receive_data(encode_bytes(forged), 0.0)
    refused_as_a_wrong_code(lambda: sender.receive_data(b"".join(bytes(p) for p in receiver.data_to_send()), 0.0))


def test_no_encrypt_on_either_side_sends_frames_in_clear_after_an_authenticated_handshake() -> None:
    pair = Pair.handshaken(manifest(CHUNK), encrypt=False)
    assert pair.sender.phase not in AUTHENTICATING and pair.receiver.phase not in AUTHENTICATING
    assert not pair.sender.encrypted
    assert any(isinstance(e, ManifestReceived) for e in pair.receiver_events)


def test_each_frame_gets_a_fresh_nonce() -> None:
    a, b = KeyExchange(b"c", True), KeyExchange(b"c", False)
    sealer, _ = a.finish(b.message, b"transcript")
    _, opener = b.finish(a.message, b"transcript")
    one, two = sealer.seal(b"h", b"same"), sealer.seal(b"h", b"same")
    assert one != two
    out = bytearray(4)
    opener.open_into(b"h", memoryview(one), memoryview(out))
    assert out == b"same"
    opener.open_into(b"h", memoryview(two), memoryview(out))
    assert out == b"same"


@pytest.mark.parametrize("where", ["ciphertext", "tag", "clear seq"])
def test_a_damaged_sealed_chunk_is_nacked_and_resent_not_fatal(where: str) -> None:
    """Sealed DATA frames carry no xxh3 (check is 0): the GCM tag is the chunk checksum."""
    first, second = os.urandom(CHUNK), os.urandom(CHUNK)
    pair = Pair.accepted(manifest(2 * CHUNK), encrypt=True)
    pair.sender.send_chunk(0, 0, first, pair.now)
    raw = bytearray(b"".join(bytes(p) for p in pair.sender.data_to_send()))
    assert HEADER.unpack_from(raw)[2] == 0
    position = {"ciphertext": HEADER.size + DATA_HEADER.size + 100, "tag": -1, "clear seq": HEADER.size + 7}[where]
    raw[position] ^= 0x04
    assert pair.receiver.receive_data(bytes(raw), pair.now) == [ChunkRejected(0 if where != "clear seq" else 4)]
    events = pair.to_sender()
    if where == "clear seq":  # seq 4 is outside the window, so no NACK: the timeout resends chunk 0
        pair.now += pair.sender.rto_s
        events += pair.sender.on_timer(pair.now)
    assert any(isinstance(e, Retransmitted) and e.seq == 0 for e in events)
    pair.to_receiver()  # the nonce counters stayed in step: the resent frame opens
    pair.sender.send_chunk(0, CHUNK, second, pair.now)
    pair.to_receiver()
    assert pair.written()[0] == first + second


def test_a_damaged_sealed_control_frame_is_still_fatal() -> None:
    pair = Pair.accepted(manifest(CHUNK), encrypt=True)
    pair.sender.send_chunk(0, 0, os.urandom(CHUNK), pair.now)
    pair.to_receiver()
    raw = bytearray(b"".join(bytes(p) for p in pair.receiver.data_to_send()))  # its ACK
    raw[-1] ^= 0x01
    with pytest.raises(CorruptFrame, match="corrupt ACK"):
        pair.sender.receive_data(bytes(raw), pair.now)


def by_transport_pair(encrypt: bool, sender: KeyExchange | None = None, receiver: KeyExchange | None = None) -> Pair:
    return Pair.handshaken(
        manifest(CHUNK),
        encrypt=encrypt,
        sender_code=sender or TransportExchange(True),
        receiver_code=receiver or TransportExchange(False),
    )


@pytest.mark.parametrize("encrypt", [False, True])
def test_over_ssh_the_hellos_alone_key_the_connection(encrypt: bool) -> None:
    """ssh authenticated the stream: no SPAKE2 on a code everyone knows, and the HELLOs say so."""
    (hello,) = frames_of(new_receiver(TransportExchange(False)).data_to_send())
    assert isinstance(hello, Hello) and len(hello.auth) == 16 and hello.capabilities & CAP_BY_TRANSPORT
    pair = by_transport_pair(encrypt)
    assert pair.sender.encrypted == encrypt and pair.receiver.encrypted == encrypt
    assert any(isinstance(e, ManifestReceived) for e in pair.receiver_events)
    assert pair.sender.session_key == pair.receiver.session_key is not None
    again = by_transport_pair(encrypt)  # each HELLO's nonce: no two connections share a key
    assert again.sender.session_key != pair.sender.session_key


@pytest.mark.parametrize("side", ["sender", "receiver"])
def test_a_peer_that_claims_ssh_where_there_is_none_is_refused(side: str) -> None:
    """A peer on a stream keyed by the code can't skip the exchange by saying its transport
    authenticated it: the HELLOs disagree, and the keyed side refuses before any key is used."""
    keyed = KeyExchange(CODE, is_sender=side == "sender")
    with pytest.raises(HandshakeRefused, match=r"did not: refused|one side runs over ssh"):
        by_transport_pair(False, **{side: keyed})


def test_a_hello_claiming_ssh_with_a_key_exchange_message_is_refused() -> None:
    receiver = new_receiver(TransportExchange(False))
    forged = Hello(Role.SENDER, capabilities=CAP_BY_TRANSPORT, auth=KeyExchange(CODE, True).message)
    with pytest.raises(HandshakeRefused, match="ran a key exchange"):
        receiver.receive_data(encode_bytes(forged), 0.0)


def test_the_modules_an_ssh_transfer_runs_never_load_spake2() -> None:
    """Its import and its exchange were ~50 ms of each side's start, in the far side's first byte."""
    probe = (
        "import sys, rtransfer.cli.configure, rtransfer.session.send, rtransfer.session.recv\n"
        "from rtransfer.crypto import TransferKeys\n"
        "TransferKeys(b'x', by_transport=True).exchange(True)\n"
        "assert 'spake2' not in sys.modules, 'spake2 loaded'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
