"""What one connection's attempt at a transfer does on either side: hand each event the
machine reports to the handler registered for its type, and report progress while
the connection lives. send.py and recv.py register the handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from rtransfer.buffers import BufferPool
from rtransfer.protocol.events import Event
from rtransfer.report import Reporter
from rtransfer.session.connection import Connection
from rtransfer.stats import TransferStats
from rtransfer.transport.source import Way


class Attempt:
    """Subclasses fill ``handlers`` (event type -> coroutine), set ``queue`` (the bounded queue
    between the connection and their pipeline task) and ``refresh`` the live counters."""

    queue: asyncio.Queue[Any]

    def __init__(self, conn: Connection, stats: TransferStats, reporter: Reporter, pool: BufferPool) -> None:
        self.conn = conn
        self.stats = stats
        self.reporter = reporter
        self.pool = pool
        self.done = asyncio.Event()
        self.handlers: dict[type, Callable[[Any], Awaitable[None]]] = {}
        stats.outage_since = None  # a connection again

    def on_route(self, way: Way) -> None:
        """The connection's route in the counters, and a move from the last one said."""
        route, before = self.conn.route.value, self.stats.path
        if self.stats.routed and before != route:
            self.reporter.moved(before, route, way.how, way.where)
        self.stats.path, self.stats.relayed, self.stats.routed = route, self.conn.relayed, True

    async def handle(self, event: Event) -> None:
        handler = self.handlers.get(type(event))
        if handler is not None:
            await handler(event)

    def refresh(self) -> None:
        """Update the counters the live display shows between events."""

    async def drive(self, *work: Coroutine[Any, Any, None]) -> None:
        """Run the connection with ``work`` until the transfer is done; whatever happens, the
        chunk buffers the connection and its queue still hold go back to the pool."""
        try:
            await self.conn.run(self.done, self.handle, self._refresh(), *work)
            self.refresh()
        finally:
            self.pool.reclaim(self.conn.leftover_buffers(), self.queue)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.reporter.progress_interval_s)
            self.refresh()


async def keep_reporting(reporter: Reporter, stats: TransferStats) -> None:
    """Progress for the whole transfer, outages included (``--json`` goes quiet otherwise, and
    the display keeps its last rate), once the first connection has started it."""
    while True:
        await asyncio.sleep(reporter.progress_interval_s)
        if stats.clock_started:
            reporter.progress(stats)
