"""Whatever an authenticated peer sends, in whatever phase, a machine answers it only with an
error of the protocol family: nothing else may escape to the driver as a crash or a retry."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtransfer.protocol.constants import Cause, FrameType, Phase, Role, Track
from rtransfer.protocol.errors import ProtocolError
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
from rtransfer.protocol.phases import RECEIVED
from tests.unit.test_phases import MACHINES

small = st.integers(min_value=0, max_value=1)  # near the indices and numbers a real transfer uses
uint32 = st.one_of(small, st.integers(min_value=0, max_value=2**32 - 1))
uint64 = st.one_of(small, st.integers(min_value=0, max_value=2**64 - 1))
blob = st.binary(max_size=64)
manifests = st.builds(
    Manifest,
    st.sampled_from(["t" * 32, "u" * 32]),
    st.integers(min_value=4096, max_value=1 << 20),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
)
entries = st.builds(
    Entry,
    st.sampled_from(["f", "g", "d/f", "f"]),
    st.sampled_from(["file", "dir", "symlink"]),
    st.one_of(st.none(), small),
    st.just(0o644),
    st.just(0),
    st.one_of(st.none(), st.just("t")),
)
chunk_payloads = st.one_of(
    blob, st.lists(st.tuples(small, small), min_size=1, max_size=3).map(copy_payload), uint32.map(hole_payload)
)


def addresses(most: int) -> st.SearchStrategy[tuple[tuple[str, int], ...]]:
    """Up to ``most`` addresses (one past the limit: refused), some not addresses at all."""
    hosts = st.sampled_from(["10.0.0.1", "::1", "x" * 64])
    return st.lists(st.tuples(hosts, st.integers(1, 65535)), max_size=most).map(tuple)


FRAMES: dict[FrameType, st.SearchStrategy[Frame]] = {
    FrameType.HELLO: st.builds(Hello, st.sampled_from(Role), small, small, blob),
    FrameType.CONFIRM: st.just(Confirm()),
    FrameType.MANIFEST: manifests,
    FrameType.ENTRIES: st.builds(EntryBatch, small, st.lists(entries, max_size=3).map(tuple), st.booleans()),
    FrameType.ACCEPT: st.builds(
        Accept, small, st.dictionaries(small, uint64, max_size=3), st.lists(small, max_size=4).map(tuple)
    ),
    FrameType.SIGNATURE: st.builds(
        Signature,
        small,
        uint64,
        st.lists(st.tuples(uint32, st.binary(min_size=16, max_size=16)), max_size=3).map(tuple),
    ),
    FrameType.ACK: st.builds(Ack, uint64, st.lists(uint64, max_size=4).map(tuple)),
    FrameType.NACK: st.builds(Nack, uint64),
    FrameType.FILE_END: st.builds(FileEnd, uint32, uint64, st.binary(min_size=32, max_size=32)),
    FrameType.FILE_RESULT: st.builds(FileResult, uint32, st.booleans()),
    FrameType.PACK_RESULT: st.builds(PackResult, uint64, st.booleans()),
    FrameType.DONE: st.just(Done()),
    FrameType.PING: st.builds(Ping, uint64),
    FrameType.PONG: st.builds(Pong, uint64),
    FrameType.ERROR: st.builds(ErrorFrame, st.sampled_from(Cause), st.text(max_size=20)),
    FrameType.JOIN: st.builds(Join, manifests, small),
    FrameType.JOINED: st.just(Joined()),
    FrameType.HINTS: st.builds(Hints, addresses(9), addresses(17), st.booleans()),
    FrameType.PUNCH: st.just(Punch()),
    FrameType.GO_DIRECT: st.builds(GoDirect, st.binary(min_size=32, max_size=32)),
}
for _kind in (FrameType.DATA, FrameType.PACK, FrameType.ZDATA, FrameType.COPY, FrameType.HOLE):
    FRAMES[_kind] = st.builds(Data, uint64, uint32, uint64, chunk_payloads, st.just(_kind), uint64)

# A type the phase does not take is refused whatever it holds (test_phases.py): fields matter only here.
CASES = [(track, phase, ftype) for track in Track for phase in RECEIVED[track] for ftype in RECEIVED[track][phase]]
any_frame = st.sampled_from(list(FrameType)).flatmap(lambda t: FRAMES[t])


def test_every_frame_type_has_a_strategy() -> None:
    assert set(FRAMES) == set(FrameType)


@pytest.mark.parametrize(("track", "phase", "ftype"), CASES, ids=lambda v: v.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_malformed_frame_raises_only_a_protocol_error(
    track: Track, phase: Phase, ftype: FrameType, data: st.DataObject
) -> None:
    """The frame of ``ftype`` first, then up to two of any type (a bad frame may only show as wrong later)."""
    frames = [data.draw(FRAMES[ftype]), *data.draw(st.lists(any_frame, max_size=2))]
    machine, peer = MACHINES[track](phase)
    try:
        peer.send(*frames)
    except ProtocolError:
        assert machine.phase is Phase.ERROR
