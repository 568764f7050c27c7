"""A real lossy link between two network namespaces, for the loss test and the bench.

veth between namespaces A and B; in each, nftables drops LOSS% of incoming TCP packets
(counting them) and tc's token bucket caps the rate. Addresses are link-local.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

ADDRESSES = ("169.254.77.1", "169.254.77.2")


class Unavailable(Exception):
    """This machine cannot build namespaces (not root, or no ip/nft/tc)."""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextlib.contextmanager
def lossy_link(rate: str = "200mbit", loss_percent: int = 2) -> Iterator[tuple[str, str, str]]:
    """(sender namespace, receiver namespace, receiver address); removed again on exit."""
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft", "tc")):
        raise Unavailable("needs root with ip, nft and tc to build network namespaces")
    tag = f"rt{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"cannot create network namespaces here: {exc.stderr.decode().strip()}") from None
    try:
        sh("ip", "link", "add", f"{tag}va", "netns", a, "type", "veth", "peer", "name", f"{tag}vb", "netns", b)
        for ns, dev, addr in ((a, f"{tag}va", ADDRESSES[0]), (b, f"{tag}vb", ADDRESSES[1])):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh(*in_ns(ns, "nft", "add table inet chaos"))
            sh(*in_ns(ns, "nft", "add chain inet chaos input { type filter hook input priority 0 ; }"))
            rule = f"add rule inet chaos input meta l4proto tcp numgen random mod 100 < {loss_percent} counter drop"
            sh(*in_ns(ns, "nft", rule))
            sh(
                *in_ns(
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "256kb",
                    "latency",
                    "100ms",
                )
            )
        yield a, b, ADDRESSES[1]
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def dropped_packets(ns: str) -> int:
    """What the loss rule dropped on the way into ``ns``."""
    listing = subprocess.run(
        in_ns(ns, "nft", "list", "chain", "inet", "chaos", "input"), capture_output=True, text=True
    )
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing.stdout))
