"""The pieces of NAT-to-NAT punching that need no namespaces: the tries' frame order (pure), the
STUN client against a server that answers, lies or floods, and a simultaneous open on loopback.
The whole, through real NATs and coturn, is tests/chaos/test_punch.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
from aioice import stun as aioice_stun

from rtransfer.cli.options import stun_servers
from rtransfer.errors import UsageError
from rtransfer.protocol.errors import LocalProtocolError, RemoteProtocolError
from rtransfer.protocol.messages import Hints
from rtransfer.protocol.tries import MAX_TRIES, DirectTries
from rtransfer.transport import punch as punching
from rtransfer.transport.punch import PunchPort, RandomMapping, punch
from rtransfer.transport.stun import StunError, ask

OFFER = Hints((("10.0.0.1", 4000),), (("192.0.2.1", 5000),), True)
ANSWER = Hints((("10.0.0.2", 4001),), (("192.0.2.2", 5001),))
NOTHING = Hints((), ())


def open_try(sender: DirectTries, receiver: DirectTries, answer: Hints = ANSWER) -> None:
    receiver.hints(OFFER, local=True)
    sender.hints(OFFER, local=False)
    sender.hints(answer, local=True)
    receiver.hints(answer, local=False)


def test_a_try_is_offered_answered_punched_once_and_ended_by_the_sender() -> None:
    sender, receiver = DirectTries(is_sender=True), DirectTries(is_sender=False)
    open_try(sender, receiver)
    assert receiver.punchable
    receiver.punch(local=True)
    assert sender.punch(local=False)
    assert not receiver.punchable  # once per try
    with pytest.raises(LocalProtocolError):
        receiver.punch(local=True)
    sender.hints(NOTHING, local=True)  # the sender ends it
    receiver.hints(NOTHING, local=False)
    with pytest.raises(RemoteProtocolError, match="never offered"):
        receiver.go_direct(local=False)


def test_a_punch_that_crossed_the_senders_end_of_the_try_is_ignored_but_not_one_more() -> None:
    sender, receiver = DirectTries(is_sender=True), DirectTries(is_sender=False)
    open_try(sender, receiver)
    sender.hints(NOTHING, local=True)  # the sender ended it while the PUNCH was on its way
    assert sender.punch(local=False) is False
    with pytest.raises(RemoteProtocolError, match="PUNCH"):
        sender.punch(local=False)  # a second PUNCH for the one try: a hostile receiver


def test_no_punch_where_either_side_gave_no_punching_port() -> None:
    sender, receiver = DirectTries(is_sender=True), DirectTries(is_sender=False)
    open_try(sender, receiver, Hints((("10.0.0.2", 4001),), ()))
    assert not receiver.punchable
    with pytest.raises(LocalProtocolError):
        receiver.punch(local=True)
    assert sender.punch(local=False) is False  # as if it crossed; not dialed on
    with pytest.raises(RemoteProtocolError):
        sender.punch(local=False)


def test_a_hostile_receiver_opens_at_most_max_tries_and_one_at_a_time() -> None:
    sender = DirectTries(is_sender=True)
    sender.hints(OFFER, local=False)
    with pytest.raises(RemoteProtocolError, match="while one is open"):
        sender.hints(OFFER, local=False)
    sender = DirectTries(is_sender=True)
    for _ in range(MAX_TRIES):
        sender.hints(OFFER, local=False)
        sender.hints(NOTHING, local=True)
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_TRIES}"):
        sender.hints(OFFER, local=False)


def test_the_sender_answers_only_an_open_offer() -> None:
    with pytest.raises(LocalProtocolError, match="HINTS from the sender while the try is idle"):
        DirectTries(is_sender=True).hints(ANSWER, local=True)


# --- STUN, over TCP on loopback ---------------------------------------------------------------

Answer = Callable[[bytes], bytes]


async def stun_server(answer: Answer) -> tuple[asyncio.Server, tuple[str, int]]:
    """A STUN server on loopback whose answer to each request is ``answer(request)``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(20)
        body = await reader.readexactly(struct.unpack("!H", header[2:4])[0])
        writer.write(answer(header + body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


def mapped_to(port: int | None = None) -> Answer:
    """An honest answer: the address the request came from (or ``port``, a NAT's choice)."""

    def answer(request: bytes) -> bytes:
        asked = aioice_stun.parse_message(request)
        reply = aioice_stun.Message(
            message_method=aioice_stun.Method.BINDING,
            message_class=aioice_stun.Class.RESPONSE,
            transaction_id=asked.transaction_id,
        )
        reply.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.7", port or 40000)
        return bytes(reply)

    return answer


async def with_server(answer: Answer, then: Callable[[tuple[str, int]], Awaitable[object]]) -> object:
    server, address = await stun_server(answer)
    try:
        return await then(address)
    finally:
        server.close()


async def test_stun_says_where_the_nat_maps_the_port_asked_from() -> None:
    port = PunchPort("127.0.0.1")
    try:
        mapped = await with_server(mapped_to(), lambda a: port.learn((a,)))
        assert mapped == ("192.0.2.7", 40000) == port.mapped
    finally:
        port.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (lambda request: b"\x01\x01\x00\x00" + b"\x00" * 16, "another request"),  # a stranger's transaction
        (lambda request: b"\x01\x01\xff\xff" + request[4:20], "too long"),  # a flood announced
        (
            lambda request: request[:2] + b"\x00\x08" + request[4:20] + b"garbage!",
            "malformed|another request|no Binding response",
        ),
        (lambda request: b"", "closed"),
    ],
    ids=["other-transaction", "too-long", "garbage", "closed"],
)
async def test_a_stun_answer_that_lies_or_floods_is_one_clear_error(answer: Answer, error: str) -> None:
    with pytest.raises(StunError, match=error):
        await with_server(answer, lambda a: ask(a, ("127.0.0.1", 0)))


async def test_a_silent_stun_server_is_given_up_on() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    try:
        with pytest.raises(StunError, match="no answer"):
            await ask(listener.getsockname()[:2], ("127.0.0.1", 0), timeout_s=0.2)
    finally:
        listener.close()


async def test_two_servers_that_see_different_ports_mean_a_nat_that_maps_at_random() -> None:
    first, a = await stun_server(mapped_to(40000))
    second, b = await stun_server(mapped_to(40001))
    port = PunchPort("127.0.0.1")
    try:
        with pytest.raises(RandomMapping, match="maps randomly"):
            await port.learn((a, b))
        assert port.mapped is None
    finally:
        port.close()
        first.close()
        second.close()


# --- the punch itself -------------------------------------------------------------------------


async def test_refused_tries_are_made_again_at_once_until_the_other_side_is_there() -> None:
    """The RST a router sends back for a SYN that came too early: the punch dials again, from the
    same port, until the peer's side is there (here: its socket starts listening 50 ms later)."""
    late = socket.socket()
    late.bind(("127.0.0.1", 0))
    port = PunchPort("127.0.0.1")
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, late.listen)
    try:
        made = await punch(port.local, late.getsockname()[:2], loop.time() + 5)
        assert made.getsockname()[:2] == port.local  # from the port whose mapping the peer was told
        made.close()
    finally:
        late.close()
        port.close()


async def test_a_punch_to_nobody_ends_after_its_bounded_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(punching, "MAX_PUNCH_TRIES", 60)
    nobody = socket.socket()
    nobody.bind(("127.0.0.1", 0))  # bound, not listening: every try is refused at once
    port = PunchPort("127.0.0.1")
    try:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await punch(port.local, nobody.getsockname()[:2], loop.time() + 30)
    finally:
        nobody.close()
        port.close()


def test_stun_servers_come_from_the_flags_or_else_the_environment_and_never_with_no_direct() -> None:
    assert stun_servers(("a:1",), "b:2,c:3", direct=True) == (("a", 1),)
    assert stun_servers((), " b:2 , c:3 ", direct=True) == (("b", 2), ("c", 3))
    assert stun_servers(("a:1",), None, direct=False) == ()
    with pytest.raises(UsageError, match="at most twice"):
        stun_servers(("a:1", "b:2", "c:3"), None, direct=True)
    with pytest.raises(UsageError, match=r"^--stun: "):
        stun_servers(("nonsense",), None, direct=True)
