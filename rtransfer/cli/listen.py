"""What a listening side does before anything else: open its socket, and remember a signal that
comes before the event loop takes them over.

Only the standard library is imported here. The receiver announces that it listens
before it imports the protocol, the crypto and asyncio, and a sender that connects
meanwhile waits in the kernel's backlog: the two start-ups overlap instead of adding
up (for a small file, start-up is most of the time a transfer takes).
"""

from __future__ import annotations

import signal
import socket

from rtransfer.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, NetworkError, reason

BACKLOG = 16


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket, non-blocking, for the event loop to take over later."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise NetworkError(f"cannot listen on {host}:{port}: {reason(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot listen on {host}:{port}: {reason(exc)}") from None
    return sock


early_signals: list[Interrupted] = []


def record_signals() -> None:
    """Until the event loop takes the signals over (runner.py), remember one instead of dying
    mid-import: a script that stops a receiver as soon as it listens still gets the error event
    and exit code."""

    def record(signum: int, _frame: object) -> None:
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        early_signals.append(Interrupted(signal.Signals(signum).name, code))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, record)
