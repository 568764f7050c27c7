"""A real lossy link: two network namespaces joined by veth, 2% packet loss (nftables)
and a bandwidth cap (tc tbf). Addresses are link-local, inside namespaces this test makes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.conftest import Proc, rtransfer_cmd

SIZE = 32 * 1024 * 1024
RATE = "200mbit"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def lossy_link() -> Iterator[tuple[str, str, str]]:
    """(sender namespace, receiver namespace, receiver address)"""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft") or not shutil.which("tc"):
        pytest.skip("needs root with ip, nft and tc (CI has them) to build network namespaces")
    tag = f"rt{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        sh("ip", "link", "add", f"{tag}va", "netns", a, "type", "veth", "peer", "name", f"{tag}vb", "netns", b)
        for ns, dev, addr in ((a, f"{tag}va", "169.254.77.1/30"), (b, f"{tag}vb", "169.254.77.2/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "nft", "add table inet chaos")
            sh("ip", "netns", "exec", ns, "nft", "add chain inet chaos input { type filter hook input priority 0 ; }")
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add rule inet chaos input meta l4proto tcp numgen random mod 100 < 2 counter drop",
            )
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                RATE,
                "burst",
                "256kb",
                "latency",
                "100ms",
            )
        yield a, b, "169.254.77.2"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def dropped_packets(ns: str) -> int:
    """What the loss rule dropped on the way into ``ns``: the test checks the link really was lossy."""
    listing = subprocess.run(
        in_ns(ns, "nft", "list", "chain", "inet", "chaos", "input"), capture_output=True, text=True
    )
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing.stdout))


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
