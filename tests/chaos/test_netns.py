"""A real lossy link: two network namespaces joined by veth, 2% packet loss (nftables)
and a bandwidth cap (tc tbf); and the same with a delay, through tunlink's relay, under
several connections. Addresses are link-local, inside namespaces these tests make."""

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


def send_across(link: tuple[str, str, str], tmp_path: Path, procs: list[Proc], size: int, *options: str) -> bytes:
    """Send ``size`` random bytes from the link's first namespace to a receiver in its second; what was sent."""
    a, b, addr = link
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    procs.append(
        rx := Proc(
            ["recv", str(tmp_path / "out"), "--listen", f"{addr}:0", "--json"], command=in_ns(b, *rtransfer_cmd())
        )
    )
    port = int(rx.wait_event("listening")["port"])
    sent = subprocess.run(
        in_ns(a, *rtransfer_cmd(), "send", str(tmp_path / "f.bin"), f"{addr}:{port}", "--json", *options),
        capture_output=True,
        timeout=150,
    )
    assert sent.returncode == 0, sent.stdout[-1500:]
    assert rx.finish() == 0
    return data


def test_transfer_over_a_lossy_capped_link_is_byte_identical(
    tmp_path: Path, procs: list[Proc], lossy_link: tuple[str, str, str]
) -> None:
    a, b, _ = lossy_link
    data = send_across(lossy_link, tmp_path, procs, SIZE)
    assert blake3.blake3((tmp_path / "out" / "f.bin").read_bytes()).digest() == blake3.blake3(data).digest()
    assert dropped_packets(b) > 0 and dropped_packets(a) > 0  # both directions lost packets on the way


def test_several_connections_over_a_delayed_lossy_link_are_byte_identical(tmp_path: Path, procs: list[Proc]) -> None:
    """20 ms each way and 2% loss each way: every connection recovers its own losses over a real round trip."""
    relay: dict[str, int] = {}
    try:
        with netns.delayed_link(20, "100mbit", 2, report=relay) as link:
            data = send_across(link, tmp_path, procs, SIZE // 4, "--streams", "4")
    except netns.Unavailable as exc:
        pytest.skip(str(exc))
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert relay["dropped"] > 0 and relay["forwarded"] > len(data) // 1500
