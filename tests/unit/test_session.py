"""The asyncio layer in-process: the reader and writer tasks, and whole transfers between the
transfer classes over loopback, with a connection cut under them."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
from pathlib import Path

import blake3
import msgspec
import pytest

from rtransfer.buffers import BufferPool
from rtransfer.cli.listen import open_listener
from rtransfer.crypto import KeyExchange, TransferKeys, TransportExchange
from rtransfer.errors import HandshakeError, LocalIOError, ProtocolViolation, RemoteError, WrongCode
from rtransfer.protocol.constants import FrameType, Phase
from rtransfer.protocol.events import Accepted, ChunkReady, EntriesReceived, FileComplete, ManifestReceived
from rtransfer.protocol.messages import Ack, copy_payload
from rtransfer.protocol.model import Entry, Manifest
from rtransfer.protocol.receiver import ReceiveLimits, ReceiverMachine
from rtransfer.protocol.sender import SenderMachine
from rtransfer.protocol.writing import encode_bytes
from rtransfer.receiving.direct_io import PartialWriter
from rtransfer.receiving.plan import Plan
from rtransfer.receiving.sink import DirectorySink
from rtransfer.receiving.specials import DestPolicy
from rtransfer.receiving.writer import write_chunks
from rtransfer.report import JsonReporter
from rtransfer.sending.reader import AcceptedBatch, EndOfFile, Packed, Reading, SendItem, read_sources
from rtransfer.sending.walk import collect_sources, listing, next_batch
from rtransfer.session.config import RecvConfig, SendConfig
from rtransfer.session.connection import Connection, now
from rtransfer.session.recv import ReceiveTransfer
from rtransfer.session.send import SendTransfer
from rtransfer.stats import TransferStats
from rtransfer.transport.retry import RetryPolicy
from rtransfer.transport.source import Dial, Listen
from tests.unit.harness import plan_alone

CHUNK = 4096
CODE = "in-process-code"
STEP_TIMEOUT_S = 30.0


async def test_the_reader_packs_small_files_resumes_large_ones_and_skips_whole_ones(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    contents = {"small": b"s" * 100, "large": os.urandom(3 * CHUNK + 5), "whole": b"w" * 10}
    for name, data in contents.items():
        (tmp_path / "src" / name).write_bytes(data)
    batch = list(next_batch(listing(collect_sources([str(tmp_path / "src")], None), False, print)))
    index = {Path(s.entry.path).name: i for i, s in enumerate(batch)}
    accepted = Accepted(0, {index["large"]: CHUNK}, (index["whole"],))
    batches: asyncio.Queue[AcceptedBatch | None] = asyncio.Queue()
    batches.put_nowait(AcceptedBatch(0, batch, accepted))
    batches.put_nowait(None)
    pool, queue, read = BufferPool(8), asyncio.Queue[SendItem](maxsize=1), []
    reader = asyncio.ensure_future(
        read_sources(batches, Reading(CHUNK, queue, TransferStats("send"), pool), lambda: read.append(1))
    )
    packs, chunks, ends = [], [], []
    while (item := await asyncio.wait_for(queue.get(), STEP_TIMEOUT_S)) is not None:
        if isinstance(item, EndOfFile):
            ends.append(item)
            continue
        (packs if isinstance(item, Packed) else chunks).append(bytes(item.payload))
        pool.put(item.payload)
    await reader
    large = contents["large"]
    assert len(packs) == 1 and packs[0].endswith(contents["small"]) and contents["whole"] not in packs[0]
    assert b"".join(chunks) == large[CHUNK:]  # from the resume point on, in order
    (end,) = ends
    assert end.file_index == index["large"] and end.digest == blake3.blake3(large).digest()  # the whole file's
    assert read == [1]


@pytest.mark.parametrize("intact", [True, False])
async def test_the_writer_puts_a_file_in_place_only_when_its_digest_matches(tmp_path: Path, intact: bool) -> None:
    sink = DirectorySink(tmp_path / "out", DestPolicy(direct_io=False))
    plan_alone(sink, CHUNK, Entry("f", "file", 5, 0o644, 0))
    queue: asyncio.Queue[ChunkReady | FileComplete] = asyncio.Queue()
    queue.put_nowait(ChunkReady(0, 0, b"hello"))
    queue.put_nowait(FileComplete(0, 5, blake3.blake3(b"hello" if intact else b"HELLO").digest()))
    verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def verified(done: FileComplete, ok: bool, digest_hex: str, path: str) -> None:
        verdict.set_result(ok)

    async def pack_written(*args: object) -> None:
        raise AssertionError("no packs here")

    writer = asyncio.ensure_future(write_chunks(queue, sink, TransferStats("recv"), verified, pack_written, {}))  # type: ignore[arg-type]
    try:
        assert await asyncio.wait_for(verdict, STEP_TIMEOUT_S) is intact
    finally:
        writer.cancel()
    assert (tmp_path / "out" / "f").exists() is intact
    if intact:
        assert (tmp_path / "out" / "f").read_bytes() == b"hello"


@pytest.mark.parametrize("old_copy_changes", [False, True])
async def test_a_delta_takes_the_old_copy_and_never_names_a_wrong_file(tmp_path: Path, old_copy_changes: bool) -> None:
    """Old copy described, then (maybe) changed under the receiver before its ranges are copied: the
    whole-file digest fails the new version, which never takes the name; the old copy stays."""
    old = os.urandom(2 * 1024 * 1024)
    new = old[:1000] + b"new bytes" + old[1000:]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(old)
    sink = DirectorySink(tmp_path / "out", DestPolicy(overwrite=True))
    entry = Entry("f", "file", len(new), 0o644, 0, identity="v2")
    plan = await sink.examine(plan_alone(sink, CHUNK, entry))
    assert list(plan.bases) == [0] and sum(n for n, _ in plan.bases[0]) == len(old)
    if old_copy_changes:
        with open(tmp_path / "out" / "f", "r+b") as f:
            f.seek(len(old) // 2)
            f.write(b"rot")
    queue: asyncio.Queue[ChunkReady | FileComplete] = asyncio.Queue()
    queue.put_nowait(ChunkReady(0, 0, copy_payload([(0, 1000)]), FrameType.COPY))
    queue.put_nowait(ChunkReady(0, 1000, b"new bytes"))
    queue.put_nowait(ChunkReady(0, 1009, copy_payload([(1000, len(old) - 1000)]), FrameType.COPY))
    queue.put_nowait(FileComplete(0, len(new), blake3.blake3(new).digest()))
    verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def verified(done: FileComplete, ok: bool, digest_hex: str, path: str) -> None:
        verdict.set_result(ok)

    writer = asyncio.ensure_future(write_chunks(queue, sink, TransferStats("recv"), verified, verified, {}))  # type: ignore[arg-type]
    try:
        assert await asyncio.wait_for(verdict, STEP_TIMEOUT_S) is not old_copy_changes
    finally:
        writer.cancel()
    assert (tmp_path / "out" / "f").read_bytes() == (
        old[: len(old) // 2] + b"rot" + old[len(old) // 2 + 3 :] if old_copy_changes else new
    )
    assert not list((tmp_path / "out").glob(".*"))


def make_tree(root: Path) -> dict[str, bytes]:
    files = {f"d{i % 3}/small{i}": os.urandom(i * 37) for i in range(20)}
    files["big.bin"] = os.urandom(5 * CHUNK * 16 + 123)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


class CuttingReceiver(ReceiveTransfer):
    """Aborts its first connection as soon as a file has been written: a reset mid-transfer."""

    def __init__(self, config: RecvConfig, reporter: JsonReporter) -> None:
        super().__init__(config, reporter)
        self.connections: list[Connection] = []

    def _connection(self) -> Connection:
        conn = super()._connection()
        self.connections.append(conn)
        return conn


class CutOnFirstFile(JsonReporter):
    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.receiver: CuttingReceiver | None = None

    def file_done(self, path: str, size: int, digest_hex: str) -> None:
        super().file_done(path, size, digest_hex)
        conns = self.receiver.connections if self.receiver else []
        if len(conns) == 1 and conns[0].transport is not None:
            conns[0].transport.abort()


def configs(tmp_path: Path, **recv: object) -> tuple[RecvConfig, SendConfig]:
    listener = open_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    keys = TransferKeys(CODE.encode())
    rx = RecvConfig(str(tmp_path / "out"), Listen(listener), keys, policy=DestPolicy(direct_io=False), **recv)  # type: ignore[arg-type]
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)
    tx = SendConfig(
        [str(tmp_path / "src")],
        Dial("127.0.0.1", port),
        TransferKeys(CODE.encode()),
        chunk_bytes=16 * CHUNK,
        connect_policy=policy,
    )
    return rx, tx


@pytest.mark.parametrize("cut", [False, True])
async def test_a_tree_moves_between_the_transfer_classes_and_survives_a_cut_connection(
    tmp_path: Path, cut: bool
) -> None:
    (tmp_path / "src").mkdir()
    files = make_tree(tmp_path / "src")
    rx_config, tx_config = configs(tmp_path)
    reporter = CutOnFirstFile() if cut else JsonReporter(io.StringIO())
    receiver = CuttingReceiver(rx_config, reporter)  # type: ignore[arg-type]
    if isinstance(reporter, CutOnFirstFile):
        reporter.receiver = receiver
    sender = SendTransfer(tx_config, JsonReporter(io.StringIO()))
    received, sent = await asyncio.wait_for(asyncio.gather(receiver.run(), sender.run()), STEP_TIMEOUT_S * 2)
    for name, data in files.items():
        assert (tmp_path / "out" / "src" / name).read_bytes() == data
    assert received.reconnects == int(cut)
    # A sender that comes back while the receiver is still putting the broken connection away is turned
    # away and tries again: it may count more reconnects than the receiver.
    assert (sent.reconnects >= 1) if cut else (sent.reconnects == 0)
    assert sent.files_done == received.files_done == len(files)


async def test_a_refusal_on_one_side_reaches_the_other_with_the_same_exit_code(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    make_tree(tmp_path / "src")
    rx_config, tx_config = configs(tmp_path, limits=ReceiveLimits(max_entries=5))
    receiver = ReceiveTransfer(rx_config, JsonReporter(io.StringIO()))
    sender = SendTransfer(tx_config, JsonReporter(io.StringIO()))
    received, sent = await asyncio.wait_for(
        asyncio.gather(receiver.run(), sender.run(), return_exceptions=True), STEP_TIMEOUT_S
    )
    assert isinstance(received, LocalIOError) and "the limit is 5" in received.message
    assert isinstance(sent, RemoteError) and sent.exit_code == received.exit_code == 6


async def test_two_connections_over_a_socket_pair_handshake_and_a_violation_reaches_the_peer() -> None:
    """The connection class alone: one machine each, joined by a socket pair, no transfer around them."""
    loop = asyncio.get_running_loop()
    manifest = Manifest("t" * 32, CHUNK, 2)
    sender = SenderMachine(manifest, now(), 30.0, KeyExchange(b"pair", True), entries=(Entry("f", "file", 1),))
    receiver = ReceiverMachine(now(), 30.0, KeyExchange(b"pair", False))
    a, b = socket.socketpair()
    _, tx = await loop.connect_accepted_socket(lambda: Connection(sender), a)
    _, rx = await loop.connect_accepted_socket(lambda: Connection(receiver), b)
    seen: list[object] = []
    listed = asyncio.Event()

    async def on_receiver_event(event: object) -> None:
        seen.append(event)
        if isinstance(event, EntriesReceived):
            listed.set()
            assert tx.transport is not None
            tx.transport.write(encode_bytes(Ack(0, ())))  # in clear, where a sealed frame must come

    async def on_sender_event(event: object) -> None:
        raise AssertionError(f"the sender got {event} before any ACCEPT")

    with pytest.raises(ProtocolViolation, match="sealed frame too short"):
        await asyncio.wait_for(rx.run(asyncio.Event(), on_receiver_event), STEP_TIMEOUT_S)
    assert listed.is_set() and [type(e) for e in seen] == [ManifestReceived, EntriesReceived]
    assert receiver.phase is Phase.ERROR
    with pytest.raises(RemoteError, match="peer: sealed frame too short") as told:  # our ERROR frame: a peer's bug
        await asyncio.wait_for(tx.pump(on_sender_event), STEP_TIMEOUT_S)
    assert told.value.exit_code == 3 and sender.phase is Phase.ERROR
    await tx.close(None)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
    ],
)
async def test_a_receiver_failing_mid_stream_reaches_the_sender_with_its_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, said: str
) -> None:
    """The receiver's disk fails while the sender streams and its own reads are paused: its ERROR
    frame must reach the sender (never lost to a reset from a close with unread data)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(64 * 16 * CHUNK))
    written: list[int] = []

    async def failing_write(self: PartialWriter, data: bytes) -> None:
        if len(written) >= 6:
            raise error
        written.append(len(data))
        await real_write(self, data)

    real_write = PartialWriter.write
    monkeypatch.setattr(PartialWriter, "write", failing_write)
    rx_config, tx_config = configs(tmp_path)
    receiver = ReceiveTransfer(rx_config, JsonReporter(io.StringIO()))
    sender = SendTransfer(tx_config, JsonReporter(io.StringIO()))
    received, sent = await asyncio.wait_for(
        asyncio.gather(receiver.run(), sender.run(), return_exceptions=True), STEP_TIMEOUT_S
    )
    assert isinstance(received, LocalIOError) and said in received.message.lower()
    assert isinstance(sent, RemoteError), sent
    assert sent.exit_code == received.exit_code == 6
    assert not (tmp_path / "out" / "src" / "big.bin").exists()


async def test_a_refused_overwrite_reaches_the_sender_with_exit_6(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    make_tree(tmp_path / "src")
    (tmp_path / "out" / "src").mkdir(parents=True)
    (tmp_path / "out" / "src" / "big.bin").write_bytes(b"another version")
    rx_config, tx_config = configs(tmp_path)
    received, sent = await asyncio.wait_for(
        asyncio.gather(
            ReceiveTransfer(rx_config, JsonReporter(io.StringIO())).run(),
            SendTransfer(tx_config, JsonReporter(io.StringIO())).run(),
            return_exceptions=True,
        ),
        STEP_TIMEOUT_S,
    )
    assert isinstance(received, LocalIOError) and "already here and different" in received.message
    assert isinstance(sent, RemoteError) and sent.exit_code == received.exit_code == 6
    assert (tmp_path / "out" / "src" / "big.bin").read_bytes() == b"another version"


async def test_an_accept_naming_a_file_twice_ends_the_transfer_at_once_with_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An authenticated frame that breaks the protocol is the peer's bug: no reconnect repeats it."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a")
    real_examine = DirectorySink.examine

    async def twice(self: DirectorySink, plan: Plan) -> Plan:
        plan = await real_examine(self, plan)
        return msgspec.structs.replace(plan, done=(0, 0))

    monkeypatch.setattr(DirectorySink, "examine", twice)
    rx_config, tx_config = configs(tmp_path)
    sender = SendTransfer(tx_config, JsonReporter(io.StringIO()))
    received, sent = await asyncio.wait_for(
        asyncio.gather(
            ReceiveTransfer(rx_config, JsonReporter(io.StringIO())).run(), sender.run(), return_exceptions=True
        ),
        STEP_TIMEOUT_S,
    )
    assert isinstance(sent, ProtocolViolation) and "ACCEPT" in sent.message and sent.exit_code == 3
    assert isinstance(received, RemoteError) and received.exit_code == 3
    assert sender.stats.reconnects == 0


async def test_a_resume_keeps_the_partial_file_when_only_the_chunk_size_changed(tmp_path: Path) -> None:
    """The chunk size follows --limit-rate and --streams: a rerun with another must not start over."""
    data = os.urandom(64 * CHUNK)
    entry = Entry("f", "file", len(data), 0o644, 0, identity="v1")
    sink = DirectorySink(tmp_path / "out", DestPolicy(direct_io=False))
    plan_alone(sink, 2 * CHUNK, entry)
    for offset in range(0, 10 * CHUNK, 2 * CHUNK):
        await sink.write(0, offset, data[offset : offset + 2 * CHUNK])
    await sink.suspend()  # 10 chunks' worth kept, journalled at 2 * CHUNK per chunk
    again = DirectorySink(tmp_path / "out", DestPolicy(direct_io=False))
    plan = await again.examine(plan_alone(again, 4 * CHUNK, entry))
    assert plan.start_offsets == {0: 8 * CHUNK}  # what was written, down to the new chunk size
    assert (tmp_path / "out" / ".f.rtpart").read_bytes()[: 8 * CHUNK] == data[: 8 * CHUNK]


@pytest.mark.parametrize("sender_listens", [False, True])
@pytest.mark.parametrize("round_no", range(3))
async def test_a_tree_over_four_connections_ends_only_once_everything_arrived(
    tmp_path: Path, sender_listens: bool, round_no: int
) -> None:
    """DONE travels on the first connection: it must not overtake a pack or chunk still on another one
    (the receiver would end the transfer with a file it never had). Either side may listen."""
    (tmp_path / "src" / "d").mkdir(parents=True)
    files = {"big.bin": os.urandom(40 * 16 * CHUNK), "d/small": b"small"}
    for name, data in files.items():
        (tmp_path / "src" / name).write_bytes(data)
    rx_config, tx_config = configs(tmp_path)
    tx_config = msgspec.structs.replace(tx_config, streams=4)
    if sender_listens:  # the receiver dials the sender's socket instead
        tx_config, rx_config = (
            msgspec.structs.replace(tx_config, way=rx_config.way),
            msgspec.structs.replace(rx_config, way=tx_config.way),
        )
    received, sent = await asyncio.wait_for(
        asyncio.gather(
            ReceiveTransfer(rx_config, JsonReporter(io.StringIO())).run(),
            SendTransfer(tx_config, JsonReporter(io.StringIO())).run(),
        ),
        STEP_TIMEOUT_S,
    )
    for name, data in files.items():
        assert (tmp_path / "out" / "src" / name).read_bytes() == data
    assert received.files_done == sent.files_done == 2


async def test_a_confirm_that_does_not_open_over_ssh_is_not_called_a_wrong_code() -> None:
    """Over ssh there is no code (crypto.TransportExchange): a CONFIRM that fails to open says the
    stream was not the one ssh carried, not that the codes differ."""
    sender = SenderMachine(Manifest("t" * 32, CHUNK, 2), now(), 30.0, TransportExchange(True))
    keyed = SenderMachine(Manifest("t" * 32, CHUNK, 2), now(), 30.0, KeyExchange(b"code", True))
    wrong = WrongCode("authentication failed: the codes do not match")
    said = Connection(sender)._judged(wrong)
    assert isinstance(said, HandshakeError) and not isinstance(said, WrongCode) and "ssh" in said.message
    assert Connection(keyed)._judged(wrong) is wrong
