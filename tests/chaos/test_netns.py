"""A real lossy link: two network namespaces joined by veth, 2% packet loss (nftables)
and a bandwidth cap (tc tbf). Addresses are link-local, inside namespaces this test makes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.chaos import netns
from tests.chaos.netns import dropped_packets, in_ns
from tests.conftest import Proc, rtransfer_cmd

SIZE = 32 * 1024 * 1024
RATE = "200mbit"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def lossy_link() -> Iterator[tuple[str, str, str]]:
    """(sender namespace, receiver namespace, receiver address)"""
    try:
        with netns.lossy_link(RATE, 2) as link:
            yield link
    except netns.Unavailable as exc:
        pytest.skip(str(exc))


def test_transfer_over_a_lossy_capped_link_is_byte_identical(
    tmp_path: Path, procs: list[Proc], lossy_link: tuple[str, str, str]
) -> None:
    a, b, addr = lossy_link
    data = os.urandom(SIZE)
    (tmp_path / "f.bin").write_bytes(data)

    procs.append(
        rx := Proc(
            ["recv", str(tmp_path / "out"), "--listen", f"{addr}:0", "--json"], command=in_ns(b, *rtransfer_cmd())
        )
    )
    port = int(rx.wait_event("listening")["port"])
    sent = subprocess.run(
        in_ns(a, *rtransfer_cmd(), "send", str(tmp_path / "f.bin"), f"{addr}:{port}", "--json"),
        capture_output=True,
        timeout=150,
    )
    assert sent.returncode == 0, sent.stdout[-1500:]
    assert rx.finish() == 0
    assert blake3.blake3((tmp_path / "out" / "f.bin").read_bytes()).digest() == blake3.blake3(data).digest()
    assert dropped_packets(b) > 0 and dropped_packets(a) > 0  # both directions lost packets on the way
