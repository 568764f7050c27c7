"""The pipe transport the far side of ssh reads sshd's pipes with (transport/pipes.py): bytes in
order into the protocol's own buffers, pauses both ways, end of file, close and abort."""

from __future__ import annotations

import asyncio
import os

from rtransfer.transport.pipes import PipeTransport, driven_pipes


class Recorder(asyncio.BufferedProtocol):
    def __init__(self, buffer_bytes: int = 7) -> None:
        self.buf = bytearray(buffer_bytes)  # small and odd: reads land across its edge
        self.got = bytearray()
        self.events: list[str] = []
        self.eof = asyncio.Event()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: PipeTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, PipeTransport)
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.buf[:nbytes]

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set()
        return True  # keep writing after the peer's end, as the protocol may

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def pipes() -> tuple[int, int, int, int]:
    """(our read end, its write end), (its read end, our write end)."""
    inbound_r, inbound_w = os.pipe()
    outbound_r, outbound_w = os.pipe()
    return inbound_r, inbound_w, outbound_r, outbound_w


async def read_all(fd: int, want: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < want:
        chunk = await loop.run_in_executor(None, os.read, fd, 1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def test_reads_in_order_into_the_protocols_buffer_and_sees_the_end() -> None:
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    data = os.urandom(100_003)
    await asyncio.get_running_loop().run_in_executor(None, os.write, theirs_w, data)
    os.close(theirs_w)
    await asyncio.wait_for(proto.eof.wait(), 10)
    assert bytes(proto.got) == data
    assert proto.events[:2] == ["made", "eof"]
    assert proto.transport is not None
    proto.transport.close()
    assert await asyncio.wait_for(proto.lost, 10) is None
    os.close(theirs_r)


async def test_a_full_pipe_pauses_the_writer_keeps_a_copy_and_resumes() -> None:
    """What the pipe doesn't take is copied: the caller's buffer changes after writelines and
    the reader still gets what was written."""
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    assert proto.transport is not None
    reused = bytearray(os.urandom(3 << 20))
    sent = bytes(reused)
    proto.transport.writelines([memoryview(reused)[: 1 << 20], memoryview(reused)[1 << 20 :]])
    assert proto.transport.get_write_buffer_size() > 0
    assert proto.events[-1] == "pause"
    reused[:] = bytes(len(reused))
    got = await read_all(theirs_r, len(sent))
    assert got == sent  # the last write and its bookkeeping were one callback
    assert proto.transport.get_write_buffer_size() == 0
    assert "resume" in proto.events
    proto.transport.close()
    await asyncio.wait_for(proto.lost, 10)
    assert await read_all(theirs_r, 1) == b""  # closed: the reader sees the end
    for fd in (theirs_w, theirs_r):
        os.close(fd)


async def test_close_writes_what_is_queued_first_and_abort_does_not() -> None:
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    assert proto.transport is not None
    data = os.urandom(2 << 20)
    proto.transport.write(data)
    proto.transport.close()
    assert proto.transport.is_closing()
    proto.transport.write(b"after close")  # dropped, as a socket transport drops it
    assert await read_all(theirs_r, len(data) + 1) == data
    await asyncio.wait_for(proto.lost, 10)
    os.close(theirs_r)
    os.close(theirs_w)

    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    assert proto.transport is not None
    proto.transport.write(data)
    proto.transport.abort()
    await asyncio.wait_for(proto.lost, 10)
    assert len(await read_all(theirs_r, len(data))) < len(data)
    os.close(theirs_r)
    os.close(theirs_w)


async def test_paused_reading_reads_nothing_until_resumed() -> None:
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    assert proto.transport is not None
    proto.transport.pause_reading()
    assert not proto.transport.is_reading()
    os.write(theirs_w, b"held")
    os.close(theirs_w)
    await asyncio.sleep(0)  # a loop turn in which a reader would have run
    assert proto.got == b""
    proto.transport.resume_reading()
    await asyncio.wait_for(proto.eof.wait(), 10)
    assert proto.got == b"held"
    proto.transport.abort()
    await asyncio.wait_for(proto.lost, 10)
    os.close(theirs_r)


async def test_a_reader_gone_is_the_connection_lost_with_why() -> None:
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(Recorder, ours_r, ours_w)
    assert proto.transport is not None
    os.close(theirs_r)
    proto.transport.write(b"x")
    exc = await asyncio.wait_for(proto.lost, 10)
    assert isinstance(exc, BrokenPipeError)
    os.close(theirs_w)


async def test_an_empty_buffer_is_the_protocols_error_not_an_end_of_file() -> None:
    """A read into no room returns 0, which would pass for the peer's end: asyncio's transports
    refuse such a buffer, and so does this one."""
    ours_r, theirs_w, theirs_r, ours_w = pipes()
    proto = driven_pipes(lambda: Recorder(buffer_bytes=0), ours_r, ours_w)
    os.write(theirs_w, b"x")
    exc = await asyncio.wait_for(proto.lost, 10)
    assert isinstance(exc, RuntimeError) and "eof" not in proto.events
    for fd in (theirs_w, theirs_r):
        os.close(fd)
