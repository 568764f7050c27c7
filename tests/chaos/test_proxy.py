"""The chaos proxy aims its faults at one connection when asked: what the streams tests need."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import ChaosProxy, Proc

PAYLOAD = b"x" * (256 * 1024)


@pytest.fixture
def sink() -> Iterator[str]:
    """A loopback server that reads and discards everything, a connection at a time."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)

    def serve() -> None:
        for _ in range(3):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                try:
                    while conn.recv(1 << 16):
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def send_through(proxy: ChaosProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s, contextlib.suppress(OSError):
        s.sendall(PAYLOAD)  # OSError: the reset this connection was chosen for


def test_faults_aimed_at_one_connection_hit_only_that_one(sink: str, procs: list[Proc]) -> None:
    procs.append(
        proxy := ChaosProxy(
            sink,
            "--rate", "100M", "--slow-connection", "1", "--slow-rate", "10M",
            "--blackhole-connection", "2", "--blackhole-after", "64K",
            "--reset-every", "128K", "--reset-connection", "3",
        )
    )  # fmt: skip
    for _ in range(3):
        send_through(proxy)
    proxy.wait_event("reset")
    rates = {e["number"]: e["rate"] for e in proxy.events("connection")}
    assert rates == {1: 10 * 1024 * 1024, 2: 100 * 1024 * 1024, 3: 100 * 1024 * 1024}
    assert proxy.faults("blackhole") == 1 and proxy.faults("reset") == 1
