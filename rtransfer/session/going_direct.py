"""A relayed connection's tries at a direct path (transport/direct.py; the frames' order is
protocol/tries.py's), for either side.

The receiver opens each try once it has the manifest: it listens, learns where its NAT maps the
ports it will punch from (--stun), and says both (HINTS). The sender answers with its own and
dials where the receiver listens; the receiver dials where the sender listens and, where both
gave punching ports, says when to punch (PUNCH), having measured the round trip (a PING):
the sender punches as PUNCH arrives, the receiver half a round trip after sending it, so the two
SYNs cross between the NATs (libp2p's DCUtR). The sender moves the transfer to the first
connection that proves the session's key (GO_DIRECT, by its id); both sides end the relayed
connection quietly (Moved) and resume over the direct one, as after a reconnect.

The first try holds the sender's first byte, at most DIRECT_WAIT_S. A try that fails is made
again under TRY_POLICY while the transfer runs on the relay, so a path that appears later (a
slow punch, a router that lets it through now) is still taken, within about the policy's
longest delay and a try's window. Standard input and output stay on the path they started on:
they can't be rewound to resume elsewhere, so only what the first try finds before the first
byte may move them (``late`` in the receiver's HINTS says whether its side can move later).
"""

from __future__ import annotations

import asyncio

from msgspec import Struct
from msgspec.structs import replace

from rtransfer.errors import NetworkError
from rtransfer.protocol.constants import MAX_PUNCH, Phase, Role
from rtransfer.protocol.events import DirectChosen, HintsReceived, Ponged, PunchNow
from rtransfer.protocol.messages import Hints
from rtransfer.report import Reporter
from rtransfer.session.connection import Connection
from rtransfer.transport.direct import PROVE_TIMEOUT_S, DirectTry
from rtransfer.transport.punch import PUNCH_WINDOW_S, PunchPort, RandomMapping
from rtransfer.transport.reconnect import Moved
from rtransfer.transport.retry import Backoff, RetryPolicy
from rtransfer.transport.source import Way

DIRECT_WAIT_S = 2.0  # the most the sender's first byte waits for the first try
TRY_WINDOW_S = PUNCH_WINDOW_S + 1.0  # a try's dials and punches, and the proofs after them
# Later tries, while the transfer runs on the relay: a path that appears is found within about
# the longest delay and a try's window; a bounded number of them on one relayed connection.
TRY_POLICY = RetryPolicy(max_attempts=20, max_total_s=600.0, base_delay_s=1.0, max_delay_s=3.0, jitter=0.3)
_MOVABLE = (Phase.OFFERING, Phase.TRANSFERRING)  # once the sender's DONE is out, moving is pointless
_NOTHING = Hints((), ())


class DirectOptions(Struct, frozen=True):
    """``enabled``: this side may go direct (not --no-direct); a side that may not still answers,
    with nothing, so the other stops trying. ``stun``: the STUN servers to learn the NAT's mapping
    from (--stun), none: no punching. ``movable``: this side's data can resume on another path once
    it flows (not standard input or output). ``streams``: the transfer's connections, to punch.
    ``hold``: the sender's first byte waits for the first try (DIRECT_WAIT_S); not on a reconnect
    of data that can move later, which goes on at once."""

    enabled: bool = True
    stun: tuple[tuple[str, int], ...] = ()
    movable: bool = True
    streams: int = 1
    hold: bool = True


class GoingDirect:
    """One relayed connection's tries; ``run`` beside the attempt's other tasks, the handlers for
    the frames of the tries."""

    def __init__(self, way: Way, conn: Connection, options: DirectOptions, reporter: Reporter) -> None:
        self.relay = way if way.relayed and conn.relayed else None
        self.conn = conn
        self.machine = conn.machine
        self.options = options
        self.reporter = reporter
        self.trying: DirectTry | None = None
        self.heard: asyncio.Queue[HintsReceived] = asyncio.Queue()  # the peer's HINTS that open or answer a try
        self.punch_now = asyncio.Event()
        self.ponged: dict[int, asyncio.Future[None]] = {}  # our PINGs of this try, by token
        self.manifest_in = asyncio.Event()  # receiver: the tries may start
        self.settled = asyncio.Event()  # sender: the first byte may go (the first try is over, or it waited enough)
        self.said = ""  # the last reason given for a failed try (-v): said again only when it changes
        if self.relay is None or not options.hold:
            self.settled.set()

    # --- the frames of the tries ------------------------------------------------
    async def on_hints(self, event: HintsReceived) -> None:
        empty = not event.addresses and not event.punch
        if self.machine.role is Role.SENDER and empty:
            if self.trying is not None:
                self.trying.gave_up()  # the receiver's dials all failed: only ours can still succeed
            else:
                self.settled.set()  # it will not try
            return
        self.heard.put_nowait(event)

    async def on_punch(self, event: PunchNow) -> None:
        self.punch_now.set()

    async def on_pong(self, event: Ponged) -> None:
        waiting = self.ponged.pop(event.token, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    async def _round_trip(self) -> float:
        """The relayed connection's round trip, measured now by a PING of our own (the receiver's
        can't come from the answer to its HINTS: the sender answers only once STUN has answered
        it): it sets the receiver's half-round-trip delay, and both sides' SYN wait."""
        loop = asyncio.get_running_loop()
        token = self.machine.ping()
        self.conn.flush()
        self.ponged[token] = answered = loop.create_future()
        sent_at = loop.time()
        try:
            await answered
        finally:
            self.ponged.pop(token, None)
        return loop.time() - sent_at

    async def on_chosen(self, event: DirectChosen) -> None:
        """Receiver: the sender moved the transfer to a direct connection, named by its id."""
        assert self.trying is not None and self.relay is not None  # offered: the machine saw to it
        try:
            async with asyncio.timeout(PROVE_TIMEOUT_S):
                await self.trying.named(event.ident)
        except TimeoutError:
            raise NetworkError("the direct connection the sender chose never reached this side") from None
        self.relay.go_direct(self.trying.take(event.ident))
        raise Moved()

    def offer(self, streams: int) -> None:
        """Receiver, once the manifest is in: the tries may start, for this many connections."""
        self.options = replace(self.options, streams=streams)
        self.manifest_in.set()

    async def first_byte(self) -> None:
        """Sender: hold the first batch until the first try has settled (DIRECT_WAIT_S at most)."""
        await self.settled.wait()

    # --- both -------------------------------------------------------------------
    async def run(self) -> None:
        if self.relay is None:
            return
        try:
            if self.machine.role is Role.SENDER:
                await self._send_side()
            else:
                await self._receive_side()
        finally:
            self.settled.set()
            self.close()

    def _send(self, hints: Hints) -> None:
        self.machine.send_hints(hints)
        self.conn.flush()

    async def _ports(self) -> list[PunchPort]:
        """This try's punching ports, one per connection of the transfer, each with its mapping: none
        without a STUN server, or where the NAT can't be punched."""
        if not self.options.stun:
            self._fail_reason("no STUN server (--stun): only listening addresses were tried")
            return []
        ports = [PunchPort() for _ in range(min(self.options.streams, MAX_PUNCH))]
        first, *others = ports  # only the first asks the second server: whether the NAT maps randomly
        try:
            learning = [first.learn(self.options.stun), *(p.learn(self.options.stun[:1]) for p in others)]
            asked = await asyncio.gather(*learning, return_exceptions=True)
        except BaseException:  # cancelled (the try ended first): their listeners go with it
            for port in ports:
                port.close()
            raise
        failed = [(n, e) for n, e in enumerate(asked) if isinstance(e, BaseException)]
        kept = failed[0][0] if failed else len(ports)  # numbered as the transfer's connections: a prefix
        for port in ports[kept:]:
            port.close()
        if failed and not isinstance(failed[0][1], OSError):
            raise failed[0][1]
        if kept == 0:
            error = failed[0][1]
            self._fail_reason("the NAT maps randomly" if isinstance(error, RandomMapping) else f"STUN: {error}")
        return ports[:kept]

    def _new_try(self, ports: list[PunchPort]) -> DirectTry:
        key = self.machine.session_key
        assert key is not None and self.conn.transport is not None
        host = self.conn.transport.get_extra_info("sockname")[0]
        self.trying = DirectTry(key, self.machine.role is Role.SENDER, host, ports)
        return self.trying

    def _fail_reason(self, reason: str) -> None:
        if reason != self.said:
            self.said = reason
            self.reporter.direct_failed(reason)

    def _end_try(self) -> None:
        if self.trying is not None:
            self.trying.close()
            self.trying = None
        self.punch_now.clear()

    # --- the sender -------------------------------------------------------------
    async def _send_side(self) -> None:
        """Answer each of the receiver's tries; move the transfer to the first direct connection
        found, while it can move. The first try's ports are made at once, the key proved."""
        settle = asyncio.get_running_loop().call_later(DIRECT_WAIT_S, self.settled.set)
        ready = asyncio.ensure_future(self._ports()) if self.options.enabled else None
        try:
            while True:
                offer = await self.heard.get()
                if not (self.options.enabled and (not self.settled.is_set() or self._moves_late(offer))):
                    self._send(_NOTHING)  # declined: the receiver stops trying
                    self.settled.set()
                    continue
                ports = await ready if ready is not None else await self._ports()
                ready = None
                ident = await self._send_try(offer, ports)
                if ident is not None and self.machine.phase in _MOVABLE and self._may_move(offer):
                    assert self.trying is not None and self.relay is not None
                    self.machine.go_direct(ident)
                    self.conn.flush()
                    self.relay.go_direct(self.trying.take(ident))
                    raise Moved()
                if ident is None:
                    self._fail_reason(_why(ports, offer.punch, self.said))
                self._send(_NOTHING)  # the try is over
                self._end_try()
                self.settled.set()
        finally:
            settle.cancel()
            if ready is not None:
                ready.cancel()

    def _moves_late(self, offer: HintsReceived) -> bool:
        return self.options.movable and offer.late

    def _may_move(self, offer: HintsReceived) -> bool:
        return not self.settled.is_set() or self._moves_late(offer)

    async def _send_try(self, offer: HintsReceived, ports: list[PunchPort]) -> bytes | None:
        """One try: say where this side can be reached, dial and punch; the first proved
        connection's id, or None when the window ends without one."""
        trying = self._new_try(ports)
        self._send(trying.hints())
        trying.dial(offer.addresses)
        measured = asyncio.ensure_future(self._round_trip()) if offer.punch and ports else None
        try:
            async with asyncio.timeout(TRY_WINDOW_S):
                if measured is not None:
                    trying.hold(asyncio.ensure_future(self._punch_when_told(trying, offer.punch, measured)))
                return await trying.first()
        except TimeoutError:
            return None
        finally:
            if measured is not None:
                measured.cancel()

    async def _punch_when_told(
        self, trying: DirectTry, remotes: tuple[tuple[str, int], ...], measured: asyncio.Future[float]
    ) -> None:
        """At PUNCH, at once: the round trip measured meanwhile (its PING went with our answer)
        only says how long a SYN is worth waiting for."""
        await self.punch_now.wait()
        known = measured.done() and not measured.cancelled() and measured.exception() is None
        trying.punch(remotes, 0.0, measured.result() if known else None)

    # --- the receiver -----------------------------------------------------------
    async def _receive_side(self) -> None:
        """Open a try, and another after each that fails, under TRY_POLICY, while this side's data
        can move; stop when the sender declines."""
        await self.manifest_in.wait()
        backoff = Backoff(TRY_POLICY)
        while await self._receive_try() and self.options.movable:
            delay = backoff.next_delay()
            if delay is None:
                return
            await asyncio.sleep(delay)

    async def _receive_try(self) -> bool:
        """One try; whether the sender took part (False: it declined, or this side does not try)."""
        if not self.options.enabled:
            self._send(_NOTHING)  # it will not try
            return False
        trying = self._new_try(await self._ports())
        hints = trying.hints()
        self._send(Hints(hints.addresses, hints.punch, self.options.movable))
        try:
            async with asyncio.timeout(3 * TRY_WINDOW_S):  # a sender that never answers is not waited for
                answer = await self.heard.get()
                if not answer.addresses and not answer.punch:
                    return False
                trying.dial(answer.addresses)
                if answer.punch and hints.punch:
                    rtt = await self._round_trip()
                    if self.machine.punchable:  # the sender may have ended the try meanwhile
                        self.machine.punch()
                        self.conn.flush()
                        trying.punch(answer.punch, rtt / 2, rtt)
                watch = asyncio.ensure_future(self._say_when_dials_fail(trying))
                try:
                    await self.heard.get()  # the sender ends the try (a move comes as GO_DIRECT instead)
                finally:
                    watch.cancel()
                self._fail_reason(_why(trying.ports, answer.punch, self.said))
                return True
        except TimeoutError:
            return False
        finally:
            self._end_try()

    async def _say_when_dials_fail(self, trying: DirectTry) -> None:
        """Say so when none of our dials worked, so that the sender, whose dials may have failed
        as fast, goes on on the relay at once instead of at the end of the window."""
        if await trying.dials_failed() and self.machine.phase not in (Phase.CLOSED, Phase.ERROR):
            self._send(_NOTHING)

    def close(self) -> None:
        self._end_try()


def _why(ours: list[PunchPort], theirs: tuple[tuple[str, int], ...], said: str) -> str:
    """Why a try found no path, for -v: what kept the punch from being tried, else time."""
    if ours and not theirs:
        return "the peer gave no punching port (no STUN server, or its NAT maps randomly)"
    return said if not ours else "time ran out"
