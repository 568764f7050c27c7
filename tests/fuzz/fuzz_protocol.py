"""Coverage-guided fuzzing of the frame decoder and both protocol machines (atheris).

    python tests/fuzz/fuzz_protocol.py -max_total_time=60

Any input must give frames/events or a ProtocolError; any other exception is a finding.
"""

from __future__ import annotations

import copy
import sys

import atheris

with atheris.instrument_imports():
    from rtransfer.crypto import KeyExchange
    from rtransfer.protocol.errors import ProtocolError
    from rtransfer.protocol.model import Entry, Manifest
    from rtransfer.protocol.reading import FrameDecoder
    from rtransfer.protocol.receiver import ReceiverMachine
    from rtransfer.protocol.sender import SenderMachine

CODE = b"fuzz"
MANIFEST = Manifest("f" * 32, 4096, 4)
ENTRIES = (Entry("a", "file", 10000, 0o644, 0), Entry("b", "file", None))


def handshaken() -> tuple[SenderMachine, ReceiverMachine]:
    """A connected pair past the (unencrypted) handshake, so later frame types are reachable."""
    sender = SenderMachine(MANIFEST, 0.0, 30.0, KeyExchange(CODE, True), encrypt=False, entries=ENTRIES)
    receiver = ReceiverMachine(0.0, 30.0, KeyExchange(CODE, False), encrypt=False)
    for _ in range(3):
        receiver.receive_data(b"".join(bytes(p) for p in sender.data_to_send()), 0.0)
        sender.receive_data(b"".join(bytes(p) for p in receiver.data_to_send()), 0.0)
    receiver.accept(0, {}, 0.0)
    sender.receive_data(b"".join(bytes(p) for p in receiver.data_to_send()), 0.0)
    return sender, receiver


# Key exchanges are slow; build the machines once and fuzz copies of them.
FRESH_RECEIVER = ReceiverMachine(0.0, 30.0, KeyExchange(CODE, False))
CONNECTED = handshaken()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 3)
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        if target == 0:
            decoder = FrameDecoder()
            decoder.feed(raw)
            list(decoder.frames())
        elif target == 1:
            copy.deepcopy(FRESH_RECEIVER).receive_data(raw, 0.0)
        else:
            sender, receiver = copy.deepcopy(CONNECTED)
            (receiver if target == 2 else sender).receive_data(raw, 1.0)
    except ProtocolError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
