"""What a receiver does before anything else: check DEST, open the listening socket, make up the code.

Only the standard library is imported here. The receiver announces that it listens
before it imports the protocol, the crypto and asyncio, and a sender that connects
meanwhile waits in the kernel's backlog: the two start-ups overlap instead of adding
up (for a small file, start-up is most of the time a transfer takes).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
from pathlib import Path

from rtransfer.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, LocalIOError, NetworkError, reason

CODE_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32: no i, l, o, u
BACKLOG = 16


def new_code(groups: int = 3, group_len: int = 4) -> str:
    """A code like ``7hk2-m9xq-3wfe`` (60 bits): easy to read aloud, impossible to guess in one try."""
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(group_len)) for _ in range(groups))


def nameplate(code: str) -> str | None:
    """Through a relay, a code as ``new_code`` makes them is a nameplate (all but its last group,
    40 bits: what the relay may learn, so that two transfers there practically never meet) and a
    secret (its last group, 20 bits, never sent). A code of any other shape is all secret."""
    groups = code.strip().lower().split("-")
    shaped = len(groups) == 3 and all(len(g) == 4 and set(g) <= set(CODE_ALPHABET) for g in groups)
    return "-".join(groups[:-1]) if shaped else None


def normalise_code(code: str) -> bytes:
    """Codes are typed by people: ignore case and surrounding space."""
    return code.strip().lower().encode("utf-8")


def check_dest(root: Path) -> None:
    """Fail before listening if DEST can never work: not a directory, or neither it nor (when it
    does not exist yet) the nearest directory above it that does can be written."""
    if root.exists() and not root.is_dir():
        raise LocalIOError(f"{root}: not a directory")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise LocalIOError(f"{root}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LocalIOError(f"{root}: permission denied" + ("" if existing == root else f" (in {existing})"))


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
