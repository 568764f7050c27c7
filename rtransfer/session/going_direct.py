"""A relayed connection's try at a direct path (transport/direct.py), for either side.

The receiver says where it listens as soon as it has the manifest (its keys are proved by
then); the sender answers with where it listens, both dial, and the sender moves the transfer
to the first connection that proves the session's key, naming it inside the relayed session.
Both sides then end the relayed connection quietly (Moved) and resume over the direct one, as
after a reconnect. The sender's first byte waits for this, at most DIRECT_WAIT_S. A path found
later is not taken: by then standard input may be partly read, or standard output partly
written, and neither can be resumed.
"""

from __future__ import annotations

import asyncio

from rtransfer.errors import NetworkError
from rtransfer.protocol.constants import Phase, Role
from rtransfer.protocol.events import DirectChosen, HintsReceived
from rtransfer.session.connection import Connection
from rtransfer.transport.direct import PROVE_TIMEOUT_S, DirectTry
from rtransfer.transport.reconnect import Moved
from rtransfer.transport.source import Way

DIRECT_WAIT_S = 2.0  # the most the sender's first byte waits for a direct path; the try ends then
_MOVABLE = (Phase.OFFERING, Phase.TRANSFERRING)  # once the sender's DONE is out, moving is pointless


class GoingDirect:
    """One relayed connection's try. ``enabled``: this side may go direct (not --no-direct);
    a side that may not still answers, with no addresses, so the other stops trying."""

    def __init__(self, way: Way, conn: Connection, enabled: bool) -> None:
        self.relay = way if way.relayed and conn.relayed else None
        self.conn = conn
        self.machine = conn.machine
        self.enabled = enabled
        self.found: DirectTry | None = None
        self.watching: asyncio.Future[None] | None = None
        self.settled = asyncio.Event()  # the sender knows whether it moves at once
        self.peer_hints: asyncio.Future[tuple[tuple[str, int], ...]] = asyncio.get_running_loop().create_future()
        if self.relay is None:
            self.settled.set()

    def _say_hints(self, start: bool) -> None:
        addresses: tuple[tuple[str, int], ...] = ()
        if start:
            key = self.machine.session_key
            assert key is not None and self.conn.transport is not None
            host = self.conn.transport.get_extra_info("sockname")[0]
            self.found = DirectTry(key, self.machine.role is Role.SENDER, host)
            addresses = self.found.hints()
        self.machine.send_hints(addresses)
        self.conn.flush()

    # --- the receiver ---------------------------------------------------------
    def offer(self) -> None:
        """Receiver, once the manifest is in: listen, and say where (or that it won't)."""
        if self.relay is not None:
            self._say_hints(self.enabled)

    async def on_hints(self, event: HintsReceived) -> None:
        """Only the first HINTS with addresses is dialed (a peer repeating them gets no more dials);
        an empty one says the peer gave up."""
        if self.machine.role is Role.SENDER:
            if not self.peer_hints.done():
                self.peer_hints.set_result(event.addresses)
            elif self.found is not None and not event.addresses:  # the receiver's dials all failed
                self.found.gave_up()
        elif not event.addresses:
            self.close()
        elif self.found is not None and not self.found.dials:
            self.found.dial(event.addresses)
            self.watching = asyncio.ensure_future(self._give_up_when_dials_fail(self.found))

    async def _give_up_when_dials_fail(self, found: DirectTry) -> None:
        """Receiver: say so when none of our dials worked, so that the sender, whose dials may
        have failed as fast, starts on the relay at once instead of at DIRECT_WAIT_S."""
        if await found.dials_failed() and self.machine.phase not in (Phase.CLOSED, Phase.ERROR):
            self.machine.send_hints(())
            self.conn.flush()

    async def on_chosen(self, event: DirectChosen) -> None:
        """Receiver: the sender moved the transfer to a direct connection, named by its id."""
        assert self.found is not None and self.relay is not None  # offered: the machine saw to it
        try:
            async with asyncio.timeout(PROVE_TIMEOUT_S):
                await self.found.named(event.ident)
        except TimeoutError:
            raise NetworkError("the direct connection the sender chose never reached this side") from None
        self.relay.go_direct(self.found.take(event.ident))
        raise Moved()

    # --- the sender -----------------------------------------------------------
    async def run(self) -> None:
        """Sender, beside the attempt's other tasks: answer the receiver's addresses and try them;
        move the transfer to the first direct connection found, if the transfer is not ending."""
        if self.relay is None:
            return
        try:
            async with asyncio.timeout(DIRECT_WAIT_S):
                ident = await self._find()
        except TimeoutError:
            ident = None
        finally:
            self.settled.set()
        if self.found is None or self.machine.phase not in _MOVABLE:
            return
        if ident is None:
            self.machine.send_hints(())  # the receiver may stop trying
            self.conn.flush()
            return
        self.machine.go_direct(ident)
        self.conn.flush()
        self.relay.go_direct(self.found.take(ident))
        raise Moved()

    async def _find(self) -> bytes | None:
        hints = await self.peer_hints
        if not (hints and self.enabled):
            if hints:
                self._say_hints(False)
            return None
        self._say_hints(True)
        assert self.found is not None
        self.found.dial(hints)
        return await self.found.first()

    async def first_byte(self) -> None:
        """Sender: hold the first batch until the try has settled (``run`` gives it DIRECT_WAIT_S)."""
        await self.settled.wait()

    def close(self) -> None:
        if self.watching is not None:
            self.watching.cancel()
        if self.found is not None:
            self.found.close()
            self.found = None
