"""Running a command: the event loop, the signals, the reporter, and the exit code.

Imported by the commands after their options are checked; cli.py stays light so that
``rtransfer --help`` starts fast.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from rtransfer.cli.listen import early_signals
from rtransfer.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, RtransferError
from rtransfer.report import Reporter
from rtransfer.stats import TransferStats

SIGNAL_FLUSH_S = 1.0  # after SIGINT/SIGTERM, how long unread events may delay the exit
_SIGNAL_CODES = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}


class Guarded:
    """The work, with SIGINT and SIGTERM turned into a cancel and their exit code."""

    def __init__(self, work: Coroutine[Any, Any, TransferStats], reporter: Reporter) -> None:
        self.work = work
        self.reporter = reporter
        self.caught: list[Interrupted] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig, code in _SIGNAL_CODES.items():
            loop.add_signal_handler(sig, self._on_signal, task, sig.name, code)
        if early_signals:  # one came while the receiver was starting, after it said it listens
            self.work.close()
            self.reporter.error(early_signals[0])
            return early_signals[0].exit_code
        try:
            stats = await self.work
        except (asyncio.CancelledError, RtransferError) as exc:
            error = self.caught[0] if self.caught else exc
            if not isinstance(error, RtransferError):
                raise
            self.reporter.error(error)
            return error.exit_code
        self.reporter.done(stats)
        return 0

    def _on_signal(self, task: asyncio.Task[Any], name: str, code: int) -> None:
        if not self.caught:
            self.caught.append(Interrupted(name, code))
            task.cancel()


def _exit_now(signum: int, _frame: object) -> None:
    os._exit(_SIGNAL_CODES[signal.Signals(signum)])


def loop_factory(over_stdio: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for a transfer over sockets. Over standard input and output (the far side of ssh)
    asyncio's own loop: there uvloop was no faster (1 GiB over ssh, 16 paired rounds: 1.9% slower)
    and its import is ~6 ms of the far side's start, which the near side waits for."""
    if over_stdio:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(work: Coroutine[Any, Any, TransferStats], reporter: Reporter, over_stdio: bool = False) -> NoReturn:
    # Startup objects (typer, rich, the imports) live as long as the process; out of the
    # collector's sight, its sweeps during the transfer stay short. It was off until now (early.py).
    gc.freeze()
    gc.enable()
    code = asyncio.Runner(loop_factory=loop_factory(over_stdio)).run(Guarded(work, reporter).run())
    # The loop has stopped, and with it its signal handlers: a signal from here on exits at once.
    for sig in _SIGNAL_CODES:
        signal.signal(sig, _exit_now)
    # Events not yet read are waited for, however slow their reader; after a signal, briefly.
    reporter.close(timeout_s=SIGNAL_FLUSH_S if code in (EXIT_SIGINT, EXIT_SIGTERM) else None)
    # Cleanup ran inside the coroutine and every file is closed. Skip the interpreter's
    # teardown: freeing every module's objects only delays each side's exit,
    # and after a failure a worker thread may still be blocked on a pipe that never delivers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
